"""The registry of search spaces: `register`, `get(name)`, `names()`.

It imports no space's internals at import time; the built-in spaces register themselves when
their module is imported, which `get` and `names` do on first use.
"""
from __future__ import annotations

import importlib

from search_spaces.interface import SearchSpace

BUILTIN = ('search_spaces.nb201.space', 'search_spaces.tinycnn', 'search_spaces.mbv2')
DEFAULT = 'nb201'  # the space a job runs when none is named (the README's main job)


class SpaceError(ValueError):
  """Unknown space; the message is one line naming the registered ones."""


_REGISTRY: dict[str, SearchSpace] = {}


def register(space: SearchSpace) -> SearchSpace:
  _REGISTRY[space.name] = space
  return space


def unregister(name: str) -> None:
  _REGISTRY.pop(name, None)


def get(name: str) -> SearchSpace:
  _load_builtin()
  if name not in _REGISTRY:
    raise SpaceError(f'unknown search space {name!r}; registered: {", ".join(sorted(_REGISTRY))}')
  return _REGISTRY[name]


def names() -> list[str]:
  _load_builtin()
  return sorted(_REGISTRY)


def _load_builtin():
  for module in BUILTIN:  # importing a built-in space module registers it
    importlib.import_module(module)
