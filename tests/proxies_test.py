"""The one proxy registry (engine/proxies/registry.py): no module keeps a second table of proxy
names with their direction (which way is better), so a proxy's orientation is said once."""
import ast
import pathlib

from engine import proxies

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _direction_tables(path: pathlib.Path):
  """Module-level dict literals keyed by 3+ registered proxy names whose values hold a bool."""
  tree = ast.parse(path.read_text())
  for node in tree.body:
    value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
    if not isinstance(value, ast.Dict):
      continue
    keys = {k.value for k in value.keys if isinstance(k, ast.Constant)}
    bools = [n for v in value.values for n in ast.walk(v)
             if isinstance(n, ast.Constant) and isinstance(n.value, bool)]
    if len(keys & set(proxies.REGISTRY)) >= 3 and bools:
      yield node.lineno


def test_no_second_proxy_registry():
  found = [f'{p.relative_to(ROOT)}:{line}'
           for d in ('engine', 'experiments', 'search_spaces', 'deploy', 'hardware')
           for p in sorted((ROOT / d).rglob('*.py'))
           if p.relative_to(ROOT).as_posix() != 'engine/proxies/registry.py'
           for line in _direction_tables(p)]
  assert not found, f'a second table of proxy directions: {found}; use engine.proxies.REGISTRY'


def test_the_check_finds_a_second_registry(tmp_path):
  bad = tmp_path / 'bad.py'
  bad.write_text("PROXIES = {'snip': ('zc', True), 'nwot': ('zc', True), 'zen': ('zc', True)}\n")
  assert list(_direction_tables(bad)) == [1]
