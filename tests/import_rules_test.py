"""Issue 31's import rules: outside the NB201 package, NB201's network module is used only
through its public walk (`net.PUBLIC_WALK`), and no module reads NB201's private names.

The checker reads each module's source (ast), so a lazy import inside a function counts too.
A name is charged to the module it comes from, whether it was imported by name
(`from search_spaces.nb201.net import apply`) or read off an imported module
(`nb201_net.apply`, `nb201.net.apply`).
"""
from __future__ import annotations

import ast
import pathlib

import pytest

from search_spaces.nb201 import net as nb201_net

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHECKED_DIRS = ('engine', 'experiments', 'hardware', 'deploy', 'search_spaces')
NB201_DIR = ROOT / 'search_spaces' / 'nb201'  # the package itself may use all of its names
NB201 = 'search_spaces.nb201'
NET = 'search_spaces.nb201.net'
# The scoring supernet's names: NB201's own, reached from outside through the registered space.
SUPERNET = frozenset({'Supernet', 'init_params', 'apply', 'run', 'relu_blocks', 'relu_inputs',
                      'probe_ones', 'LAYER_WEIGHTS', 'is_weight'})


def _is_private(name: str) -> bool:
  return name.startswith('_') and not (name.startswith('__') and name.endswith('__'))


def _is_submodule(package: str, name: str) -> bool:
  """Whether `from package import name` names an NB201 module (rather than a package attribute)."""
  rel = pathlib.Path(*package.split('.')[1:], name)  # below search_spaces/
  return (ROOT / 'search_spaces' / f'{rel}.py').is_file() or (ROOT / 'search_spaces' / rel).is_dir()


def _absolute(node: ast.ImportFrom, module: str) -> str:
  """The module an ImportFrom reads, with relative imports resolved against `module`."""
  if not node.level:
    return node.module or ''
  base = module.split('.')[:-node.level]
  return '.'.join(base + ([node.module] if node.module else []))


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
  """'a.b.c' for an attribute chain on a name bound to a module, in the module's full name."""
  parts = []
  while isinstance(node, ast.Attribute):
    parts.append(node.attr)
    node = node.value
  if not isinstance(node, ast.Name) or node.id not in aliases:
    return None
  return '.'.join([aliases[node.id]] + parts[::-1])


def _use_problem(full: str) -> str | None:
  """What is wrong with using the name `full` ('search_spaces.nb201.<...>'), if anything."""
  parts = full.split('.')
  private = [p for p in parts[2:] if _is_private(p)]
  if private:
    return f'{full}: private NB201 name {private[0]!r}'
  if full.startswith(NET + '.'):
    name = parts[3]
    if name in nb201_net.PUBLIC_WALK:
      return None
    if name in SUPERNET:
      return f'{full}: the scoring supernet is NB201\'s own (go through the registered space)'
    return f'{full}: not in net.PUBLIC_WALK (shared kernels live in search_spaces.kernels)'
  return None


def violations(source: str, module: str = 'probe') -> list[str]:
  """Each use of an NB201 name that the rules forbid, as 'line N: what'."""
  tree = ast.parse(source)
  aliases: dict[str, str] = {}  # local name -> the NB201 module (or package) it is bound to
  found: dict[tuple[int, str], None] = {}

  def report(node, problem):
    if problem:
      found[(node.lineno, problem)] = None

  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        if a.name == NB201 or a.name.startswith(NB201 + '.'):
          report(node, _use_problem(a.name))
          if a.asname:
            aliases[a.asname] = a.name
          else:  # `import search_spaces.nb201.net` binds `search_spaces`
            aliases[a.name.split('.')[0]] = a.name.split('.')[0]
    elif isinstance(node, ast.ImportFrom):
      source_module = _absolute(node, module)
      for a in node.names:
        full = f'{source_module}.{a.name}'
        if not (full == NB201 or full.startswith(NB201 + '.')):
          continue
        if a.name == '*':
          report(node, f'{full}: a star import of an NB201 module')
          continue
        report(node, _use_problem(full))
        if _is_submodule(source_module, a.name) or full == NB201:
          aliases[a.asname or a.name] = full
  for node in ast.walk(tree):
    if isinstance(node, ast.Attribute):
      full = _dotted(node, aliases)
      if full and (full.startswith(NB201 + '.')):
        report(node, _use_problem(full))
  return [f'line {line}: {problem}' for line, problem in sorted(found)]


def _checked_files() -> list[pathlib.Path]:
  files = []
  for top in CHECKED_DIRS:
    files += [p for p in sorted((ROOT / top).rglob('*.py')) if NB201_DIR not in p.parents]
  return files


def _module_name(path: pathlib.Path) -> str:
  return '.'.join(path.relative_to(ROOT).with_suffix('').parts)


def test_modules_outside_nb201_use_only_its_public_names():
  files = _checked_files()
  assert len(files) > 50, 'the checked directories were not found'
  problems = []
  for path in files:
    rel = path.relative_to(ROOT).as_posix()
    for v in violations(path.read_text(), _module_name(path)):
      problems.append(f'{rel} {v}')
  assert not problems, '\n'.join(problems)


@pytest.mark.parametrize('source, expected', [
    ('from search_spaces.nb201.net import apply', 'scoring supernet'),
    ('from search_spaces.nb201.net import Backend, Supernet', 'scoring supernet'),
    ('from search_spaces.nb201 import net as nb201_net\nnb201_net.init_params(k, c)',
     'scoring supernet'),
    ('from search_spaces import nb201\ndef f():\n  return nb201.net.relu_inputs',
     'scoring supernet'),
    ('import search_spaces.nb201.net\nsearch_spaces.nb201.net.Supernet(p)', 'scoring supernet'),
    ('import search_spaces.nb201.net as n\nn.probe_ones(p, 8)', 'scoring supernet'),
    ('from search_spaces.nb201 import net as nb201_net\nnb201_net._conv_leaves(p, path)',
     "private NB201 name '_conv_leaves'"),
    ('from search_spaces.nb201.graph import _gates', "private NB201 name '_gates'"),
    ('from search_spaces.nb201 import graph as g\ng._template_cache', 'private NB201 name'),
    ('from search_spaces.nb201 import _secret', 'private NB201 name'),
    ('from search_spaces.nb201.net import conv', 'search_spaces.kernels'),
    ('from search_spaces.nb201.net import *', 'star import'),
    ('from .nb201.net import apply', 'scoring supernet'),  # relative, from search_spaces/x.py
])
def test_checker_flags_banned_uses(source, expected):
  found = violations(source, module='search_spaces.probe')
  assert found and expected in found[0], found


@pytest.mark.parametrize('source', [
    'from search_spaces.nb201 import net as nb201_net\n'
    'class B(nb201_net.Backend):\n  def f(self):\n    return nb201_net.network(self, a, x, c)',
    'from search_spaces.nb201.net import Backend, EdgeSwitch, edge_choices, path_key, network',
    'from search_spaces import nb201\nfrom search_spaces.nb201 import NB201Config, graph\n'
    'graph.lower(nb201.ops_to_mask(ops), NB201Config())',
    'from search_spaces.kernels import BN_EPS, batch_norm, conv',
])
def test_checker_allows_the_public_walk(source):
  assert violations(source, module='search_spaces.probe') == []


def test_public_walk_names_exist():
  missing = [name for name in nb201_net.PUBLIC_WALK if not hasattr(nb201_net, name)]
  assert not missing


# The proxies, the scorer, the searchers and the objective take a space's network through the
# registry, and the trainer and the exporters take an arch's network from `engine.train.trainable`,
# which asks the registered space: none of engine/, hardware/ or deploy/ may name a space
# (DEVELOPERS.md, "One engine, many spaces"). A space's own code lives in search_spaces/ (NB201's
# networks, trainable ones included, in search_spaces/nb201/).
SPACE_NEUTRAL_DIRS = ('engine', 'hardware', 'deploy')
SPACE_NAMES = ('nb201', 'tinycnn', 'mbv2', 'mlperf_tiny')


def space_names_used(source: str) -> list[str]:
  """'line N: ...' for each import of a space's module and each string constant that is a
  space's name (a branch on it, `space == 'nb201'`)."""
  found = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      names = [f'{node.module}.{a.name}' for a in node.names]
    elif isinstance(node, ast.Constant) and node.value in SPACE_NAMES:
      found.append(f'line {node.lineno}: the string {node.value!r}')
      continue
    else:
      continue
    for name in names:
      if any(part in SPACE_NAMES for part in name.split('.')):
        found.append(f'line {node.lineno}: imports {name}')
  return found


def test_engine_hardware_and_deploy_name_no_space():
  files = [p for top in SPACE_NEUTRAL_DIRS for p in sorted((ROOT / top).rglob('*.py'))]
  assert len(files) >= 35, 'the checked directories were not found'
  problems = [f'{p.relative_to(ROOT)} {v}' for p in files for v in space_names_used(p.read_text())]
  assert not problems, '\n'.join(problems)


@pytest.mark.parametrize('source', [
    "if net.space == 'nb201':\n  pass",
    'from search_spaces.nb201 import qat',
    'from search_spaces import tinycnn',
    'import search_spaces.mbv2',
])
def test_space_name_checker_flags(source):
  assert space_names_used(source)
