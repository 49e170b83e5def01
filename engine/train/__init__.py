"""Training, a job of its own: one arch of any space trained on the user's data (fp32, PTQ or
int8 QAT) and checked in integers, and the trained ground truth of spaces without a benchmark.

Modules (imported by name; this package imports nothing at import time):
  * `train`: the training loop, checkpoints, metrics and curves (`train.train`, `TrainConfig`);
  * `trainable`: one arch as the trainer and the exporters see it (`trainable.trainable`), built
    from the space's lowered graph through `engine.quant`;
  * `data`: the datasets (CIFAR-10/100, ImageNet16-120, image folders, .npz) and the stand-in
    photographs the proxies see without `--data_dir`;
  * `ground_truth`: resumable sweeps that train many archs briefly (spaces without a table).
"""
