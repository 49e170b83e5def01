"""The training-free proxies, written once over a space's network (`search_spaces.interface.Net`).

Public API: the one registry (`REGISTRY`, `get`, `Proxy`, `ProxyError`), the settings they share
(`ScoreSettings`), the inputs every candidate is scored on (`make_inputs`) and a proxy's own key
stream (`proxy_key`). The definitions live in the submodules: `zero_cost` (grad_norm, snip,
synflow, jacob_cov, nwot, fisher, grasp, zico, zen), `az_nas` (AZ-NAS's expressivity,
progressivity and trainability), `ntk` (the condition numbers and their
flags), `linear_regions`, and `aggregate` (rank aggregates of several proxies).
"""
from engine.proxies.registry import (REGISTRY, Proxy, ProxyError, ScoreSettings,
                                     fused_gradient_proxies, get, make_inputs, proxy_key)

__all__ = ['REGISTRY', 'Proxy', 'ProxyError', 'ScoreSettings', 'fused_gradient_proxies', 'get',
           'make_inputs', 'proxy_key']
