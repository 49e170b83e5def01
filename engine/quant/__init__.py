"""int8 quantization, as TFLite Micro runs it: the scheme's pure functions, the quantization-aware
Flax layers, and any space's lowered graph in Flax and in integers.

Modules (imported by name; this package imports nothing at import time):
  * `quant`: fake-quant, BN folding, fixed-point requantization, integer helpers;
  * `qat_layers`: the layers (fp32 / folded / quant modes, range tracking) networks are made of;
  * `graph_qat`: the Flax network of a lowered hardware graph (what trains);
  * `graph_int`: its integer reference, numpy and compiled by XLA, equal bit for bit.
"""
