"""A seconds-long run of any experiment: tiny proxy networks and batches, few candidates, one
short epoch of a small training run. For checking a setup or a change, never for results.

Its training is the least that still learns on CIFAR-10 (NB201 at C=4 N=1 and tinycnn reach
25-33% integer-only accuracy in about 25 s of `--experiment=pipeline`, 2026-12-05; at each
space's own `--lr` since 2026-12-07, 26.2% and 34.6%; at the 0.05 this preset set before,
tinycnn diverged): shorter, and
the run stops at the at-chance guard, which a setup check must not do; 128 steps also leave
QAT from scratch its float steps (`tests/configs_test.py`). mbv2's 96 px networks take minutes
and do not learn in one such epoch."""


def get_config() -> dict:
  return dict(ntk_width=2, ntk_cells=1, ntk_batch=8, repeats=1, zc_width=4, zc_cells=1,
              zc_batch=8, batch_candidates=2, archs='random:4', random_samples=4,
              evolution_samples=4, population=2, tournament=2, recheck=2, rerank_pool=8,
              train_width=4, train_cells=1, train_images=4096, train_batch=32,
              test_images=1000, int_eval_images=500, epochs=1, chunk_size=2)
