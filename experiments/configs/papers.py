"""The literature's proxy setting: NB201's own network (C=16, N=5) at batch 64 for the NTK and
the zero-cost proxies, three NTK repeats (TE-NAS), CIFAR-10 images from ../shared/data."""


def get_config() -> dict:
  return dict(ntk_width=16, ntk_cells=5, ntk_batch=64, repeats=3, zc_width=16, zc_cells=5,
              zc_batch=64)
