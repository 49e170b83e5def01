"""Every `python -m experiments.X` entry point can start: the names its `__main__` block uses
are bound at module level (a name imported only inside `main` fails there with a NameError, as
bench_train's `common` once did)."""
import ast
import builtins
import pathlib

import pytest

_EXPERIMENTS = sorted((pathlib.Path(__file__).parent.parent / 'experiments').glob('*.py'))


def _bound_at_module_level(tree):
  names = set(dir(builtins)) | {'__name__', '__file__', '__doc__'}
  for node in tree.body:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      names |= {(a.asname or a.name).split('.')[0] for a in node.names}
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      for target in targets:
        names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
  return names


def _main_blocks(tree):
  for node in tree.body:
    if (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name) and node.test.left.id == '__name__'):
      yield node


@pytest.mark.parametrize('path', _EXPERIMENTS, ids=lambda p: p.stem)
def test_main_block_names_are_bound(path):
  tree = ast.parse(path.read_text())
  bound = _bound_at_module_level(tree)
  for block in _main_blocks(tree):
    used = {n.id for n in ast.walk(block) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    assert used <= bound, f'{path.name}: {sorted(used - bound)} not bound at module level'


def test_the_check_catches_a_name_bound_only_inside_main():
  tree = ast.parse('def main():\n  import common\n\nif __name__ == "__main__":\n'
                   '  run(main, parser=common.parse)\n')
  block = next(_main_blocks(tree))
  used = {n.id for n in ast.walk(block) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
  assert used - _bound_at_module_level(tree) == {'run', 'common'}
