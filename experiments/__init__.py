"""User-facing experiments; run `python -m experiments.run --help`."""
# Importing the engine applies its XLA:CPU settings (engine/xla_cpu.py) before JAX starts.
import engine  # noqa: F401,E402
