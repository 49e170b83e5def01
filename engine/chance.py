"""When a measured accuracy is indistinguishable from chance: one definition for every result the
engine reports (training's fp32, fake-quant and integer-only accuracies, the ground-truth sweep).

A classifier that ignores its input can, in expectation, do no better than always answering the
most frequent test label (share `p`: 1/classes on a balanced test set, more on a small or skewed
subset). Its number of correct answers on n images is then at most Binomial(n, p) (for a random
guess; a constant guess hits exactly n*p). An accuracy is "at chance" when its count of correct
answers is at or below the (1 - ALPHA) quantile of that binomial: a label-blind guess would
reach it with probability at least ALPHA. The margin shrinks as the test set grows: on CIFAR-10's
10,000 test images a model must exceed 10.94%; on 64 images (about 7 of each class) 25%, so a
tiny test set certifies little, which is the honest answer.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy import stats

ALPHA = 1e-3  # chance of a label-blind guess reaching the ceiling


@dataclasses.dataclass(frozen=True)
class Verdict:
  accuracy: float   # measured, a fraction
  images: int       # test images it was measured on
  guess: float      # the best label-blind accuracy in expectation (majority-label share)
  ceiling: float    # highest accuracy still counted as chance
  at_chance: bool

  def describe(self) -> str:
    return (f'{self.accuracy:.3f} on {self.images} test images, not above chance (a label-blind '
            f'guess, {self.guess:.3f} in expectation, reaches {self.ceiling:.3f} with '
            f'probability {ALPHA:g})')


def ceiling_count(images: int, guess: float, alpha: float = ALPHA) -> int:
  """Largest number of correct answers a label-blind guess reaches with probability >= alpha."""
  if images <= 0:
    return 0
  return int(stats.binom.isf(alpha, images, min(max(guess, 0.0), 1.0)))


def judge(accuracy: float, labels, num_classes: int, alpha: float = ALPHA) -> Verdict:
  """Verdict on `accuracy` (a fraction) measured on `labels`; a non-finite accuracy is at chance
  (it is no measurement)."""
  labels = np.asarray(labels).reshape(-1)
  n = len(labels)
  guess = 1.0 / num_classes
  if n:
    guess = max(guess, float(np.bincount(labels.astype(np.int64)).max()) / n)
  top = ceiling_count(n, guess, alpha)
  if not np.isfinite(accuracy) or n == 0:
    return Verdict(float(accuracy), n, guess, top / max(n, 1), True)
  correct = int(round(float(accuracy) * n))
  return Verdict(float(accuracy), n, guess, top / n, correct <= top)


def judge_balanced(accuracy: float, images: int, num_classes: int,
                   alpha: float = ALPHA) -> Verdict:
  """`judge` when only the test-set size is known (a balanced test set assumed)."""
  guess = 1.0 / num_classes
  top = ceiling_count(images, guess, alpha)
  if not np.isfinite(accuracy) or images <= 0:
    return Verdict(float(accuracy), images, guess, top / max(images, 1), True)
  correct = int(round(float(accuracy) * images))
  return Verdict(float(accuracy), images, guess, top / images, correct <= top)
