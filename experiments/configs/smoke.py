"""A seconds-long run of any experiment: tiny proxy networks and batches, few candidates, one
short epoch of a small training run. For checking a setup or a change, never for results."""


def get_config() -> dict:
  return dict(ntk_width=2, ntk_cells=1, ntk_batch=8, repeats=1, zc_width=4, zc_cells=1,
              zc_batch=8, batch_candidates=2, archs='random:4', random_samples=4,
              evolution_samples=4, population=2, tournament=2, recheck=2, rerank_pool=8,
              train_width=4, train_cells=1, train_images=512, test_images=256,
              int_eval_images=64, epochs=1, chunk_size=2)
