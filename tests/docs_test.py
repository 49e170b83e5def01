"""Every command the docs show parses (issue 33, "docs that match the code").

The README and docs/*.md show `python -m experiments.run ...` and `python -m experiments.<tool>
...` command lines, in fenced code blocks and in inline code. Each one must still be accepted by
the code as written: every `--flag` exists, and for `experiments.run` the chosen experiment and
search space read it (`run.config_from_flags`: the same checks as the command line, READ_WHEN
included), without running anything. A companion tool's flags are checked against the flags its
module defines (read from its source, so that tools whose flags share names with run's can be
checked in one process).

Shell around the commands is handled as far as the docs use it: `\\` continuations, `;` / `&&`
separated commands, comments, `NAME=value` assignments and `for x in a b; do` loops of the same
block (every value of a loop is tried), `$(...)` substitutions. A value that is a placeholder
(`<...>`, `DIR`, an unset `$VAR`) is replaced by a valid one of the flag's type, so the flag's
name and whether it is read are still checked; `a|b|c` alternatives are each checked.
"""
from __future__ import annotations

import ast
import dataclasses
import itertools
import pathlib
import re
import shlex

import pytest
from absl import flags

from experiments import common
from experiments import run

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md')), ROOT / 'results' / 'README.md']
ALWAYS_VALID = {'help', 'helpfull', 'helpshort'}  # absl's own, defined when app.run starts

_FENCE = re.compile(r'^[ \t]*```[^\n]*\n(.*?)^[ \t]*```', re.S | re.M)
_INLINE = re.compile(r'`(python3? -m\s+experiments\.[^`]*)`')
_LOOP = re.compile(r'\bfor (\w+) in ([^;\n]+?);?\s*do\b')
_ASSIGN = re.compile(r'^\s*([A-Za-z_]\w*)=(\S.*)$')
_SUBST = re.compile(r'\$\([^()]*\)')
_PLACEHOLDER = re.compile(r'[<>$]|^[A-Z][A-Z0-9_]*$|\.\.\.')


@dataclasses.dataclass
class Command:
  source: str        # file:line
  module: str        # experiments.run, experiments.summarize_search, ...
  args: list         # variants: each a list of '--flag[=value]' tokens
  text: str          # as shown (joined)


def _blocks(text: str):
  """(line number, text) of each fenced code block and each inline `python -m experiments...`
  span (inline spans may wrap lines)."""
  for m in _FENCE.finditer(text):
    yield text.count('\n', 0, m.start(1)) + 1, m.group(1)
  outside = _FENCE.sub(lambda m: '\n' * m.group(0).count('\n'), text)
  for m in _INLINE.finditer(outside):
    yield outside.count('\n', 0, m.start()) + 1, ' '.join(m.group(1).split())


def _bindings(block: str):
  """Every combination of the block's shell variables: NAME=value assignments, and each value
  of each `for NAME in ...; do` loop."""
  fixed = {}
  for line in block.splitlines():
    m = _ASSIGN.match(line)
    if m and not m.group(2).startswith('('):
      try:
        fixed[m.group(1)] = ' '.join(shlex.split(m.group(2)))
      except ValueError:
        pass
  loops = [(name, values.split()) for name, values in _LOOP.findall(block)]
  names = [name for name, _ in loops]
  for values in itertools.product(*(v for _, v in loops)):
    yield {**fixed, **dict(zip(names, values))}


def _expand(text: str, env: dict) -> str:
  text = _SUBST.sub('$SUBSTITUTION', text)
  return re.sub(r'\$\{(\w+)\}|\$(\w+)',
                lambda m: env.get(m.group(1) or m.group(2), m.group(0)), text)


def _segments(line: str):
  """Token lists of the simple commands on one logical line (split at ; && || | &, cut at a
  redirection or a comment)."""
  lexer = shlex.shlex(line, posix=True, punctuation_chars=';&')
  lexer.whitespace_split = True  # `|` stays inside words: arch strings, a|b alternatives
  current = []
  try:
    for token in lexer:
      if set(token) <= set(';&|') or token in ('do', 'done', 'then', 'fi') or token.startswith(
          ('>', '2>')):
        yield current
        current = []
      else:
        current.append(token)
  except ValueError:  # an unbalanced quote: the line is not shell
    return
  yield current


def _logical_lines(block: str):
  """(line offset in the block, line) with `\\` continuations joined."""
  pending, start = [], 0
  for i, line in enumerate(block.splitlines()):
    if not pending:
      start = i
    if line.rstrip().endswith('\\'):
      pending.append(line.rstrip()[:-1])
      continue
    yield start, ' '.join(pending + [line])
    pending = []
  if pending:
    yield start, ' '.join(pending)


def _alternatives(token: str):
  """`--flag=a|b|c` -> each alternative; `[--flag=X]` -> `--flag=X`."""
  token = token.strip('[]')
  name, eq, value = token.partition('=')
  if eq and '|' in value and not value.startswith('|') and not _PLACEHOLDER.search(value):
    return [f'{name}={v}' for v in value.split('|')]
  return [token]


def commands(path: pathlib.Path, text: str | None = None):
  """The `python -m experiments.*` commands shown in one Markdown file."""
  text = path.read_text() if text is None else text
  found = []
  for line_no, block in _blocks(text):
    lines = list(_logical_lines(block))
    variants = {}  # (module, offset) -> argument lists
    for env in _bindings(block):
      for offset, line in lines:
        for tokens in _segments(_expand(line, env)):
          for i in range(len(tokens) - 2):
            if (tokens[i] in ('python', 'python3') and tokens[i + 1] == '-m'
                and re.fullmatch(r'experiments\.\w+', tokens[i + 2])):
              args = [t for t in tokens[i + 3:] if t.startswith(('--', '[--'))]
              seen = variants.setdefault((tokens[i + 2], offset), [])
              for variant in itertools.product(*(_alternatives(t) for t in args)):
                if list(variant) not in seen:
                  seen.append(list(variant))
              break
    for (module, offset), args in variants.items():
      shown = ' '.join(dict(lines)[offset].split())
      found.append(Command(f'{path.name}:{line_no + offset}', module, args, shown))
  return found


# ---------------------------------------------------------------- checking one command line

def _stand_in(flag) -> str:
  """A valid value of the flag's type, for a placeholder value."""
  if isinstance(flag, flags.BooleanFlag):
    return 'true'
  if isinstance(flag.parser, flags.EnumParser):
    return flag.default or flag.parser.enum_values[0]
  if flag.default is not None and not isinstance(flag.default, list):
    return str(flag.default)
  if isinstance(flag.parser, (flags.IntegerParser, flags.FloatParser)):
    return str(max(1, flag.parser.lower_bound or 1))
  return 'x'


def _argv(args, values: flags.FlagValues):
  """argv for `values`: unknown flags refused here (absl would say so too), placeholder values
  replaced by valid ones."""
  argv = ['zeronas']
  for arg in args:
    name, eq, value = arg[2:].partition('=')
    if name in ALWAYS_VALID:
      continue
    known = name in values or (name.startswith('no') and name[2:] in values
                               and isinstance(values[name[2:]], flags.BooleanFlag))
    if not known or not re.fullmatch(r'\w+', name):
      raise common.UsageError(f'--{name} is not a flag of this command')
    if eq and _PLACEHOLDER.search(value):
      value = _stand_in(values[name])
    argv.append(f'--{name}={value}' if eq else f'--{name}')
  return argv


def check_run(args) -> None:
  """Raises (UsageError or absl's flags.Error) if `python -m experiments.run ARGS` would be
  refused before any work; builds the experiment's config like the command line does."""
  argv = _argv(args, flags.FLAGS)
  flags.FLAGS.unparse_flags()
  try:
    flags.FLAGS(argv)
    run.config_from_flags()
  finally:
    flags.FLAGS.unparse_flags()


_DEFINES = {'DEFINE_string': flags.DEFINE_string, 'DEFINE_integer': flags.DEFINE_integer,
            'DEFINE_float': flags.DEFINE_float, 'DEFINE_bool': flags.DEFINE_bool,
            'DEFINE_boolean': flags.DEFINE_bool, 'DEFINE_list': flags.DEFINE_list,
            'DEFINE_enum': flags.DEFINE_enum}


def module_flags(module: str) -> flags.FlagValues:
  """The flags `experiments/<module>.py` defines (read from its source: importing several tools
  into one process would define their shared names twice), in a FlagValues of their own; a
  module that imports experiments.run also takes run's flags, and one that imports another tool
  at its top (select_rerank: search_eval) that tool's."""
  path = ROOT / (module.replace('.', '/') + '.py')
  if not path.exists():
    raise common.UsageError(f'{module} does not exist')
  tree = ast.parse(path.read_text())
  values = flags.FlagValues()
  imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
              and n.module == 'experiments' for a in n.names}
  if module == 'experiments.run' or 'run' in imported:
    for name in run_flag_names():
      values[name] = flags.FLAGS[name]
  _define_from_source(tree, values)
  top_level = {a.name for n in tree.body if isinstance(n, ast.ImportFrom)
               and n.module == 'experiments' for a in n.names}
  for name in sorted(top_level - {'run', 'common'}):  # another tool's flags it reuses
    other = ROOT / 'experiments' / (name + '.py')
    if other.exists():
      _define_from_source(ast.parse(other.read_text()), values)
  return values


def _define_from_source(tree, values: flags.FlagValues):
  """Defines in `values` the flags the module `tree` defines (names already there are kept)."""
  for node in ast.walk(tree):
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in _DEFINES and node.args
            and isinstance(node.args[0], ast.Constant)):
      continue
    name, kind = node.args[0].value, node.func.attr
    if name in values:
      continue
    keywords = {k.arg: k.value for k in node.keywords}
    bounds = {}
    for bound in ('lower_bound', 'upper_bound'):
      if bound in keywords:
        try:
          bounds[bound] = ast.literal_eval(keywords[bound])
        except ValueError:
          pass
    if kind == 'DEFINE_enum':
      try:
        choices = ast.literal_eval(node.args[2] if len(node.args) > 2 else keywords['enum_values'])
      except (ValueError, KeyError):
        choices = None  # computed at import: check the name only
      if choices is not None:
        flags.DEFINE_enum(name, None, choices, '', flag_values=values)
        continue
      kind = 'DEFINE_string'
    if kind in ('DEFINE_integer', 'DEFINE_float'):
      _DEFINES[kind](name, None, '', flag_values=values, **bounds)
    else:
      _DEFINES[kind](name, None, '', flag_values=values)


def run_flag_names():
  return sorted(f.name for f in flags.FLAGS.get_flags_for_module('experiments.run'))


def check_tool(module: str, args) -> None:
  """Raises if `python -m <module> ARGS` names a flag the tool lacks or a value its flag type
  refuses."""
  values = module_flags(module)
  argv = _argv(args, values)
  if module == 'experiments.run':
    return check_run(args)
  values(argv)


def check(command: Command) -> None:
  for args in command.args:
    try:
      (check_run if command.module == 'experiments.run' else
       lambda a: check_tool(command.module, a))(args)
    except (common.UsageError, flags.Error, ValueError) as err:
      raise AssertionError(f'{command.source}: `{command.text}` with {args}: {err}') from None


# ---------------------------------------------------------------- the tests

ALL = [c for path in DOCS for c in commands(path)]


def test_the_docs_show_commands_of_every_kind():
  """The extraction finds what the docs show (a regression here would check nothing)."""
  runs = [c for c in ALL if c.module == 'experiments.run']
  tools = {c.module for c in ALL} - {'experiments.run'}
  variants = sum(len(c.args) for c in ALL)
  print(f'{len(ALL)} commands in {len(DOCS)} files ({len(runs)} of experiments.run, '
        f'{len(ALL) - len(runs)} of {len(tools)} tools), {variants} command lines checked')
  assert len(runs) >= 40 and len(tools) >= 6 and variants >= 80, (len(runs), tools, variants)
  for path in DOCS:
    if 'python -m experiments' in path.read_text():
      assert any(c.source.startswith(path.name + ':') for c in ALL), path.name


@pytest.mark.parametrize('command', ALL, ids=[c.source for c in ALL])
def test_every_command_shown_in_the_docs_parses(command):
  check(command)


# The checker itself: commands that must be refused, each for its own reason.
REFUSED = [
    ('a flag that does not exist', 'python -m experiments.run --made_up_flag=1',
     '--made_up_flag is not a flag'),
    ('a misspelt flag', 'python -m experiments.run --experiment=search --seeeds=0-9',
     '--seeeds is not a flag'),
    ('a flag the experiment does not read', 'python -m experiments.run --experiment=score '
     '--searcher=prune', '--searcher is not used by --experiment=score'),
    ('a flag the space does not read', 'python -m experiments.run --experiment=search '
     '--search_space=mbv2 --ntk_width=4', '--ntk_width is not read'),
    ('a flag the searcher does not read', 'python -m experiments.run --searcher=prune '
     '--rerank_pool=8', '--rerank_pool is not read'),
    ('an unsupported space', 'python -m experiments.run --experiment=correlate '
     '--search_space=mbv2', 'supports --search_space=nb201 or tinycnn'),
    ('a bad enum value', 'python -m experiments.run --experiment=train --arch=1 --quant=int4',
     '--quant=int4'),
    ('a bad value in one alternative', 'python -m experiments.run --experiment=train --arch=1 \\\n'
     '  --quant=fp32|int4', '--quant=int4'),
    ('a placeholder for a flag that does not exist', 'python -m experiments.run '
     '--experiment=train --arch=<index> --epoch=E', '--epoch is not a flag'),
    ('a tool flag that does not exist', 'python -m experiments.summarize_search --workdirs=a,b',
     '--workdirs is not a flag'),
    ('a tool enum value', 'python -m experiments.validate_hardware --part=everything',
     'everything'),
    ('a tool number', 'python -m experiments.select_aggregate --max_components=four', 'four'),
    ('a tool that does not exist', 'python -m experiments.summarise --x=1', 'does not exist'),
    ('a loop value the flag refuses', 'for q in fp32 int4; do\n'
     '  python -m experiments.run --experiment=train --arch=1 --quant=$q; done', '--quant=int4'),
]


@pytest.mark.parametrize('why, text, fragment', REFUSED, ids=[r[0] for r in REFUSED])
def test_the_checker_refuses_a_bad_command(why, text, fragment):
  found = commands(pathlib.Path('example.md'), f'```bash\n{text}\n```\n')
  assert len(found) == 1, found
  with pytest.raises(AssertionError, match=r'example\.md:\d+: ') as err:
    check(found[0])
  assert fragment in str(err.value), err.value


def test_the_checker_accepts_the_shell_the_docs_use():
  text = ('```bash\nD=../data\nfor b in 83.54 0; do for s in random evolution; do\n'
          '  python -m experiments.run --noprogress --data_dir=$D --searcher=$s '
          '--${s}_samples=64 \\\n    --latency_budget_ms=$b --workdir=runs/b$b; done; done\n'
          'python -m experiments.summarize_search --search_workdirs=$(ls -d runs/*/ | paste -sd, -)'
          '\n```\n'
          'Train with `python -m experiments.run --experiment=train --arch=<string|index>\n'
          '--quant=fp32|ptq|qat [--init_from=WORKDIR] --workdir=DIR`.\n')
  found = commands(pathlib.Path('example.md'), text)
  assert [c.module for c in found] == ['experiments.run', 'experiments.summarize_search',
                                       'experiments.run'], found
  assert len(found[0].args) == 4 and ['--noprogress', '--data_dir=../data', '--searcher=evolution',
                                      '--evolution_samples=64', '--latency_budget_ms=0',
                                      '--workdir=runs/b0'] in found[0].args, found[0].args
  assert len(found[2].args) == 3, found[2].args
  for command in found:
    check(command)
