"""The command line: CSV output, one-line errors with exit code 2."""
import csv

import pytest

import cli

ARCH = '|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|'


def test_score_writes_csv_for_analytic_proxies(tmp_path, data_dir):
  out = tmp_path / 'scores.csv'
  result = cli.run('--experiment=score', f'--archs={ARCH}', '--proxies=params,flops',
                    f'--output={out}', '--noprogress')
  assert result.returncode == 0, result.stderr
  rows = list(csv.DictReader(out.open()))
  assert len(rows) == 1
  assert rows[0]['arch_index'] == '1'  # arch 1 of the NB201 benchmark
  assert rows[0]['arch_str'] == ARCH
  # 3 conv3x3 per cell: 5 * 3 * sum(9C^2 + 2C for C in 16, 32, 64) + 73,306 fixed = 802,426.
  assert float(rows[0]['params']) == 802426


def test_score_network_proxies_end_to_end_with_cifar(tmp_path, data_dir):
  out = tmp_path / 'scores.csv'
  archs = tmp_path / 'archs.txt'
  archs.write_text(f'{ARCH}\n1\n|none~0|+|none~0|none~1|+|none~0|none~1|none~2|\n')
  result = cli.run('--experiment=score', f'--archs={archs}',
                    '--proxies=ntk_cond,linear_regions',
                    '--ntk_batch=8', '--repeats=1', '--ntk_width=2', '--batch_candidates=2',
                    f'--data_dir={data_dir / "cifar10"}', f'--output={out}', '--noprogress')
  assert result.returncode == 0, result.stderr
  assert 'cifar10 train' in result.stdout
  rows = list(csv.DictReader(out.open()))
  assert [r['arch_index'] for r in rows] == ['1', '1', rows[2]['arch_index']]
  assert rows[0]['ntk_cond'] == rows[1]['ntk_cond']  # same arch, same key, same score
  assert float(rows[0]['ntk_cond']) > 1 and rows[0]['ntk_cond_flag'] == ''
  assert rows[2]['ntk_cond'] == 'inf' and rows[2]['ntk_cond_flag'] == 'singular'
  assert rows[2]['connected'] == '0'
  # not the bounds of the definition (1 <= regions <= 3 x 1000 samples): the cell whose edges are
  # all `none` ignores its input, so every sample shares one activation pattern; a real arch
  # neither collapses to one region nor saturates at one per sample
  assert rows[2]['linear_regions'] == '1.0'
  assert rows[0]['linear_regions'] == rows[1]['linear_regions']
  assert 1 < float(rows[0]['linear_regions']) < 3000
  assert 'flagged ntk_cond' in result.stdout


@pytest.mark.parametrize('args, fragments', [
    (['--archs=|nor_conv_3x3~0|+|bogus~0|none~1|+|none~0|none~1|none~2|'], ["unknown op 'bogus'"]),
    (['--archs=/no/such/file.txt'], ['not all, random:N']),
    (['--archs=random:x'], ['random:N']),
    (['--archs=99999'], ['out of range']),
    (['--proxies=ntk_cond,zen_magic'], ["unknown proxy 'zen_magic'", 'ntk_cond']),
    (['--dataset=mnist'], ['--dataset=mnist', 'one of', 'cifar100']),
    (['--ntk_batch=0'], ['--ntk_batch=0', 'positive']),
    (['--zc_width=0'], ['--zc_width=0', 'positive']),
    (['--data_dir=/no/such/dir'], ['no cifar10 pickle batches']),
    (['stray'], ['unexpected argument']),
])
def test_bad_input_gives_one_line_error_and_exit_2(tmp_path, args, fragments):
  result = cli.run('--experiment=score', '--proxies=params', f'--output={tmp_path / "x.csv"}',
                    '--noprogress', *args)
  cli.assert_one_line_error(result, *fragments)


def test_stand_in_images_are_announced(data_dir):
  from experiments import common
  images = common.load_images(str(data_dir / 'cifar10'), 'ImageNet16-120')
  assert 'standing in for ImageNet16-120' in images.source
  assert 'standing in' not in common.load_images(str(data_dir / 'cifar10'), 'cifar10').source
