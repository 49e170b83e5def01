"""User-facing experiments; run `python -m experiments.run --help`."""
