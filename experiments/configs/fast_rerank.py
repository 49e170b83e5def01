"""The main job's rerank in about half the time: the previous default tie-breaker,
`synflow,az_trainability` over the largest size tier at C=16 N=5, without jacob_cov's extra
forward and backward pass per candidate.

Measured held out (docs/search.md, "The default search"): at or above both size baselines in 9
of 12 evaluation cells, +1.55 points over max_macs on average, against 11 of 12 and +1.91 for
today's default; the main job's seeds 0-9 mean 93.65 against 93.81. Cold on the 2-core machine,
2026-12-07, same sitting: 179 s against 314 s (BENCHMARKS.md, "Main job"). For the rerank
searcher; other searchers would read its proxies as their objective."""


def get_config() -> dict:
  return dict(proxies='synflow,az_trainability', rerank_band=0.02, zc_width=16, zc_cells=5)
