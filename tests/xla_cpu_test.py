"""engine/xla_cpu.py: the settings are added once, and a user's own setting wins."""
import os

from engine import xla_cpu


def test_adds_the_ynn_setting_once(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_backend_optimization_level=0')
  assert xla_cpu.apply()
  flags = os.environ['XLA_FLAGS']
  assert flags == ('--xla_backend_optimization_level=0 '
                   '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution')
  assert not xla_cpu.apply()
  assert os.environ['XLA_FLAGS'] == flags


def test_the_users_setting_wins(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_experimental_ynn_fusion_type=+individual_convolution')
  assert not xla_cpu.apply()
  assert os.environ['XLA_FLAGS'] == (
      '--xla_cpu_experimental_ynn_fusion_type=+individual_convolution')


def test_starts_from_no_flags(monkeypatch):
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  assert xla_cpu.apply()
  assert os.environ['XLA_FLAGS'] == (
      '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution')
