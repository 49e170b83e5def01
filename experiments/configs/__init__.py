"""Presets as code: `--config=NAME` (or `run.make_config(experiment, preset=NAME)`) starts from
`experiments/configs/NAME.py`'s `get_config()`, a dict of flag values; flags given on the command
line (or overrides in code) win over the preset, the preset over the experiment's defaults.

A preset may name flags of several experiments; each experiment takes the ones it reads.
"""
from __future__ import annotations

import importlib
import pkgutil


def names() -> tuple[str, ...]:
  return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__)))


def get(name: str) -> dict:
  """The preset's flag values; ValueError (one line, naming the presets) for an unknown name."""
  if name not in names():
    raise ValueError(f'unknown --config={name!r}; presets in experiments/configs/: '
                     f'{", ".join(names())}')
  return dict(importlib.import_module(f'{__name__}.{name}').get_config())
