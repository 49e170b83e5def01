"""The main job's rerank in about half the time: the previous default tie-breaker,
`synflow,az_trainability` over the largest size tier at C=16 N=5, without jacob_cov's extra
forward and backward pass per candidate.

Its held-out figures (fewer evaluation cells at or above the size baselines than today's
default) are in docs/search.md, "The default search" and "Adding jacob_cov to the default";
its time against the default's in BENCHMARKS.md, "Main job". For the rerank searcher; other
searchers would read its proxies as their objective."""


def get_config() -> dict:
  return dict(proxies='synflow,az_trainability', rerank_band=0.02, zc_width=16, zc_cells=5)
