"""Scores and searches batches of candidate architectures with training-free proxies."""
# No side effects at import: the XLA:CPU settings (engine/xla_cpu.py) are applied by the entry
# point (experiments.common.parse_flags_or_fail) before JAX starts its backend; a library user
# calls `engine.xla_cpu.apply()` first to get them.
from engine.proxies import REGISTRY, ScoreSettings, get
from engine.scoring import Scorer, batch_score_fn, row_keys

__all__ = ['REGISTRY', 'ScoreSettings', 'Scorer', 'batch_score_fn', 'get', 'row_keys']
