"""Scores and searches batches of candidate architectures with training-free proxies."""
from engine import xla_cpu

xla_cpu.apply()  # before JAX's CPU backend starts: see engine/xla_cpu.py

from engine.proxies import REGISTRY, ScoreSettings, get
from engine.scoring import Scorer, batch_score_fn, row_keys

__all__ = ['REGISTRY', 'ScoreSettings', 'Scorer', 'batch_score_fn', 'get', 'row_keys']
