"""Every flag is checked against the experiment: a table of bad command lines, each one line on
stderr and exit code 2 (run in this process with `experiments.run.cli`, so no JAX work starts)."""
import pytest

from experiments import run

ARCH = '|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|'

BAD = [
    # unknown names and enum values
    (['--experiment=nope'], ['--experiment=nope', 'one of', 'search']),
    (['--search_space=nope'], ['--search_space=nope', 'one of', 'tinycnn']),
    (['--dataset=mnist'], ['--dataset=mnist', 'one of', 'ImageNet16-120']),
    (['--init=xavier'], ['--init=xavier', 'kaiming_normal']),
    (['--experiment=train', f'--arch={ARCH}', '--quant=int4'], ['--quant=int4', 'qat']),
    (['--experiment=train', f'--arch={ARCH}', '--optimizer=rmsprop'], ['--optimizer', 'adamw']),
    (['--experiment=export', '--workdir=w', '--c_target=m0'], ['--c_target=m0', 'm4']),
    (['--nope=1'], ["'nope'", '--help']),
    (['--seeed=1'], ["'seeed'", 'seed']),
    (['stray'], ['unexpected argument', 'stray']),
    # malformed numbers and out-of-range sizes
    (['--lr=abc'], ['--lr=abc']),
    (['--seed=-1'], ['--seed=-1', 'non-negative']),
    (['--batch_candidates=-1'], ['--batch_candidates=-1', 'non-negative']),
    # 0 (K from free device memory) is for score and correlate; the searchers need a K
    (['--batch_candidates=0'], ['--batch_candidates must be at least 1, got 0']),
    (['--ntk_batch=0'], ['--ntk_batch=0', 'positive']),
    (['--repeats=0'], ['--repeats=0']),
    (['--zico_splits=1'], ['--zico_splits=1']),
    (['--candidate_chunk=-1'], ['--candidate_chunk=-1']),
    (['--population=0'], ['--population=0']),
    (['--sram_reserve_kb=-5'], ['--sram_reserve_kb=-5']),
    # NTK / zero-cost settings without such a proxy scored (the default rerank has no NTK)
    (['--repeats=2'], ['--repeats is not read', 'an NTK proxy']),
    (['--experiment=score', f'--archs={ARCH}', '--proxies=params,flops', '--zc_batch=16'],
     ['--zc_batch is not read', 'a zero-cost proxy']),
    (['--proxies=synflow', '--zico_splits=4'], ['--zico_splits is not read', 'zico']),
    (['--experiment=score', f'--archs={ARCH}', '--chunk_size=4'],
     ['--chunk_size is not read', '--workdir']),
    (['--experiment=cost', '--archs=5374', '--seed=7'], ['--seed is not read', 'random:N']),
    (['--experiment=score', f'--archs={ARCH}', '--proxies=params', '--init=kaiming_normal'],
     ['--init is not read', 'not params, flops']),
    (['--proxies=az_trainability', '--init=kaiming_normal'], ['--init is not read', 'vkdnw']),
    (['--data_dir=.', '--stand_in_inputs=noise'], ['--stand_in_inputs is not read',
                                                   'without --data_dir']),
    (['--sram_reserve_kb=320'], ['--sram_reserve_kb=320 leaves no SRAM on stm32f746 (320 KB)']),
    (['--seeds=5-2'], ['--seeds', 'a range runs from low to high']),
    (['--searcher=evolution', '--evolution_samples=4', '--population=8'],
     ['--population=8 is more than --evolution_samples=4']),
    (['--searcher=evolution', '--tournament=20'], ['--tournament=20 is more than --population=16']),
    (['--experiment=correlate', '--chunk_size=0'], ['--chunk_size=0']),
    (['--experiment=train', f'--arch={ARCH}', '--train_batch=0'], ['--train_batch=0']),
    (['--experiment=train', f'--arch={ARCH}', '--epochs=-1'], ['--epochs=-1']),
    (['--experiment=train', '--arch=f16k3-relu-max'],
     ['neither an NB201 arch', 'it is a tinycnn arch: pass --search_space=tinycnn']),
    (['--experiment=train', f'--arch={ARCH}', '--int_eval_images=-2'], ['--int_eval_images=-2']),
    (['--experiment=train', f'--arch={ARCH}', '--lr=-0.1'], ['--lr=-0.1']),
    (['--experiment=train', f'--arch={ARCH}', '--label_smoothing=1.5'], ['--label_smoothing']),
    (['--experiment=export', '--workdir=w', '--c_images=0'], ['--c_images=0']),
    # flags the experiment does not read
    (['--experiment=score', '--searcher=prune'],
     ['--searcher is not used by --experiment=score', 'search']),
    (['--experiment=cost', '--proxies=synflow'], ['--proxies is not used by --experiment=cost']),
    (['--experiment=export', '--workdir=w', '--seed=1'], ['--seed is not used by --experiment=export']),
    (['--experiment=search', '--archs=random:8'], ['--archs is not used by --experiment=search',
                                                  'score']),
    (['--experiment=train', f'--arch={ARCH}', '--proxies=nwot'], ['--proxies is not used']),
    (['--experiment=correlate', '--epochs=3'], ['--epochs is not used', 'train']),
    # unsupported spaces, missing required flags
    (['--experiment=correlate', '--search_space=mbv2'],
     ['--experiment=correlate supports --search_space=nb201 or tinycnn']),
    (['--experiment=train', '--search_space=tinycnn', f'--arch={ARCH}'],
     ['bad tinycnn arch', 'f16k3-f32k5-relu-max']),
    (['--experiment=train', '--search_space=tinycnn', '--arch=f16k3-swish-max'],
     ['layer0/swish (activation swish) has no int8', 'pick an arch without it, e.g. f']),
    (['--experiment=train', '--search_space=tinycnn', '--arch=f16k3-relu-max', '--train_width=8'],
     ['--train_width is not read', 'only nb201']),
    (['--experiment=score', '--search_space=tinycnn', '--archs=random:8',
      '--proxies=ntk_cond_indep'], ["unknown proxy 'ntk_cond_indep'", 'ntk_cond_independent']),
    (['--experiment=search', '--finalist_epochs=3'],
     ['--finalist_epochs is not read', 'only --finalists >= 1']),
    (['--experiment=search', '--finalist_lr=0.01'],
     ['--finalist_lr is not read', 'only --finalists >= 1']),
    (['--finalists=-1'], ['--finalists=-1', 'non-negative']),
    (['--experiment=search', '--searcher=prune', '--rerank_pool=3'],
     ['--rerank_pool is not read', '--searcher=prune', 'only --searcher=rerank']),
    (['--experiment=search', '--search_space=mbv2', '--ntk_width=4'],
     ['--ntk_width is not read', 'mbv2', 'own sizes']),
    (['--experiment=search', '--search_space=tinycnn', '--space_samples=64'],
     ['--space_samples is not read', 'too large to enumerate']),
    (['--experiment=score', '--search_space=tinycnn', '--archs=random:8', '--dataset=cifar100'],
     ['--dataset is not read', 'per dataset']),
    (['--experiment=score', '--search_space=mbv2', '--archs=w2-r96'], ['bad mbv2 arch']),
    (['--experiment=search', '--search_space=mlperf_tiny'], ['supports --search_space=nb201']),
    (['--experiment=train'], ['--experiment=train needs --arch=']),
    (['--experiment=export'], ['--experiment=export needs --workdir=']),
    (['--config=nope'], ["unknown --config='nope'", 'papers', 'smoke']),
    # values checked by the experiment before any work
    (['--experiment=search', '--searcher=annealing'], ["unknown --searcher='annealing'"]),
    (['--experiment=search', '--seeds=3-1'], ['--seeds']),
    (['--experiment=search', '--finalists=2'], ['--finalists trains', 'pass --data_dir']),
    (['--experiment=search', '--rerank_band=1.5'], ['--rerank_band must be in [0, 1)', '1.5']),
    (['--experiment=search', '--device=esp8266'], ["unknown device 'esp8266'"]),
    (['--experiment=cost', '--runtime=onnx'], ["unknown runtime 'onnx'", 'zeronas-c']),
    (['--experiment=cost', '--archs=random:x'], ['random:N']),
    (['--experiment=score', '--archs=|bogus~0|', '--proxies=params'], ['bogus']),
    (['--experiment=score', '--proxies=params,zen_magic'], ["unknown proxy 'zen_magic'"]),
    (['--experiment=export', '--workdir=/no/such/run'], ['not a trained run']),
    (['--experiment=export', '--workdir=/no/such/run', '--export_images=0'], ['--export_images']),
]


@pytest.mark.parametrize('args, fragments', BAD, ids=[' '.join(a)[:60] for a, _ in BAD])
def test_bad_command_line_is_one_line_and_exit_2(args, fragments, capsys, tmp_path):
  args = [a.replace('--workdir=w', f'--workdir={tmp_path / "w"}') for a in args]
  code = run.cli(['zeronas', '--noprogress', f'--output={tmp_path / "o.csv"}', *args]
                 if '--experiment=score' in args or '--experiment=cost' in args else
                 ['zeronas', '--noprogress', *args])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2, err
  assert len(err) == 1 and err[0].startswith('error: '), err
  for fragment in fragments:
    assert fragment in err[0], err[0]


def test_table_has_at_least_30_bad_inputs():
  assert len(BAD) >= 30


def test_list_devices_works_from_any_experiment(capsys):
  for experiment in run.EXPERIMENTS:
    extra = {'train': [f'--arch={ARCH}'], 'export': ['--workdir=w']}.get(experiment, [])
    assert run.cli(['zeronas', f'--experiment={experiment}', '--list_devices', *extra]) == 0
    out = capsys.readouterr().out
    assert 'stm32f746' in out and 'zeronas-c' in out, experiment


def test_config_precedence_flag_over_preset_over_experiment_default():
  from absl import flags
  flags.FLAGS.unparse_flags()
  flags.FLAGS(['zeronas', '--experiment=search', '--zc_batch=16'])
  _, config = run.config_from_flags()
  assert config.zc_batch == 16 and config.repeats == 1  # set by hand; the search's default
  # the default rerank takes its bundle (proxies, band, network size) ...
  assert {k: getattr(config, k) for k in run.RERANK_DEFAULTS} == dict(run.RERANK_DEFAULTS)
  # ... where the user names no proxies and keeps rerank; a flag given still wins over it
  for given, want in (
      (['--searcher=prune'], dict(proxies=run.DEFAULT_SEARCH_OBJECTIVE, rerank_band=-1.0,
                                  zc_width=8, zc_cells=1)),
      (['--proxies=synflow'], dict(proxies='synflow', rerank_band=-1.0, zc_width=8,
                                   zc_cells=1)),
      (['--zc_cells=2'], dict(proxies='synflow,az_trainability,jacob_cov', rerank_band=0.02,
                              zc_width=16, zc_cells=2))):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(['zeronas', '--experiment=search', *given])
    _, config = run.config_from_flags()
    assert {k: getattr(config, k) for k in want} == want, given
  flags.FLAGS.unparse_flags()
  flags.FLAGS(['zeronas', '--experiment=search', '--config=papers', '--repeats=2',
               '--proxies=ntk_cond_independent'])
  exp, config = run.config_from_flags()
  assert (config.ntk_width, config.ntk_cells, config.ntk_batch, config.repeats) == (16, 5, 64, 2)
  assert run.workdir_from_flags(exp) == 'search_out'
  flags.FLAGS.unparse_flags()
  flags.FLAGS(['zeronas', '--experiment=correlate'])
  exp, config = run.config_from_flags()
  assert run.workdir_from_flags(exp) == 'correlate_out' and config.repeats == 3
  flags.FLAGS.unparse_flags()


def test_make_config_is_typed_checked_and_frozen():
  import dataclasses
  c = run.make_config('score', 'smoke', proxies='params')
  assert type(c).__name__ == 'ScoreConfig' and c.proxies == 'params' and c.ntk_width == 2
  with pytest.raises(dataclasses.FrozenInstanceError):
    c.seed = 3
  with pytest.raises(ValueError, match='--batch_candidates=-1'):
    run.make_config('score', batch_candidates=-1)
  with pytest.raises(ValueError, match="'epochs' is not a setting of --experiment=score"):
    run.make_config('score', epochs=3)
  with pytest.raises(ValueError, match='unknown --config'):
    run.make_config('score', 'nope')
  assert run.make_config('search').ntk_batch == 32  # the experiment's own default


def test_every_preset_loads_for_every_experiment():
  from experiments import configs
  for preset in configs.names():
    for experiment in run.EXPERIMENTS:
      run.make_config(experiment, preset)


def test_every_defined_flag_belongs_to_an_experiment():
  from absl import flags
  ours = {f.name for f in flags.FLAGS.get_flags_for_module('experiments.run')}
  used = set(run.ALWAYS).union(*(e.flags for e in run.EXPERIMENTS.values()))
  assert ours == used, (ours - used, used - ours)


# A value other than the default for every flag type (the config is built, nothing runs).
def _other_value(flag):
  from absl import flags
  if isinstance(flag, flags.BooleanFlag):
    return str(not flag.default).lower()
  if isinstance(flag.parser, flags.EnumParser):
    return next(v for v in flag.parser.enum_values if v != flag.default)
  if isinstance(flag.parser, flags.IntegerParser):
    return str((flag.default or 0) + 3)
  if isinstance(flag.parser, flags.FloatParser):
    value = (flag.default or 0) + 0.5
    upper = flag.parser.upper_bound
    return str(value if upper is None or value <= upper else (flag.default + upper) / 2
               if flag.default < upper else flag.default / 2)
  return 'x' if flag.default != 'x' else 'y'


def _sources_reading(name: str) -> bool:
  """Whether some module other than the flag registry reads the setting as an attribute."""
  import pathlib
  import re
  root = pathlib.Path(run.__file__).resolve().parents[1]
  pattern = re.compile(rf'\.{name}\b')
  files = [p for d in ('engine', 'experiments', 'search_spaces', 'deploy')
           for p in (root / d).rglob('*.py') if p.name != 'run.py']
  return any(pattern.search(p.read_text()) for p in files)


def test_every_flag_is_read_or_refused_for_every_experiment_and_space():
  """Each (experiment, space, flag): the command line either builds a config holding the flag's
  value, which the code reads, or is refused in one line (exit 2 through `cli`)."""
  from absl import flags
  from search_spaces import registry
  ours = sorted(f.name for f in flags.FLAGS.get_flags_for_module('experiments.run'))
  skip = {'experiment', 'list_devices', 'config', 'search_space', 'progress'}
  spaces = registry.names() + ['mlperf_tiny']
  checked = refused = 0
  for experiment, exp in run.EXPERIMENTS.items():
    required = [f'--{k}=x' for k in exp.required]
    for space in spaces:
      for name in ours:
        if name in skip or name in exp.required:
          continue
        flag = flags.FLAGS[name]
        argv = ['zeronas', f'--experiment={experiment}', f'--search_space={space}',
                f'--{name}={_other_value(flag)}', *required]
        flags.FLAGS.unparse_flags()
        flags.FLAGS(argv)
        try:
          _, config = run.config_from_flags()
        except run.common.UsageError as err:
          assert '\n' not in str(err) and str(err), (argv, err)
          refused += 1
          continue
        finally:
          flags.FLAGS.unparse_flags()
        value = getattr(config, name, None) if name != 'workdir' else 'read by the job'
        assert value is not None and value != flag.default, (argv, 'accepted but not read')
        assert name == 'workdir' or _sources_reading(name), (name, 'no code reads it')
        checked += 1
  assert checked > 200 and refused > 1000, (checked, refused)
