"""User-facing experiments; run `python -m experiments.run --help`."""
from engine import xla_cpu as _xla_cpu

_xla_cpu.apply()  # XLA:CPU settings before JAX starts its backend (engine/xla_cpu.py)
