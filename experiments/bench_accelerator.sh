#!/usr/bin/env bash
# The accelerator benchmark (issue "Sweeps beyond one machine"): all 15,625 NB201 archs at
# TE-NAS's size (C=16, N=5, B=64) on one GPU, then a CPU reference on 100 of them.
#
#   pip install -e '.[cuda]'        # on the GPU machine
#   experiments/bench_accelerator.sh OUT [ARCHS] [CPU_ARCHS]
#
# 1. NTK (independent) + linear regions on ARCHS (default all), K from free GPU memory
#    (--batch_candidates=0); prints compile time apart, run time, archs/s and peak GPU memory.
# 2. The full zero-cost table (nine proxies) on ARCHS, the same way.
# 3. The same two sweeps on CPU_ARCHS (default random:100) with JAX_PLATFORMS=cpu, then the
#    Spearman rho per proxy between the GPU and the CPU values on the archs both scored
#    (experiments.compare_scores). Every sweep is a resumable correlate run: rerunning the script
#    after a stop continues where it was.
set -euo pipefail
OUT=${1:?usage: $0 OUT [ARCHS] [CPU_ARCHS]}
ARCHS=${2:-all}
CPU_ARCHS=${3:-random:100}
cd "$(dirname "$0")/.."
NTK="--proxies=ntk_cond_independent,linear_regions --ntk_width=16 --ntk_cells=5 --ntk_batch=64"
ZC="--proxies=grad_norm,snip,synflow,jacob_cov,nwot,fisher,grasp,zico,zen --zc_width=16
    --zc_cells=5 --zc_batch=64"
# CIFAR-10 inputs where the shared data is found (Gaussian noise otherwise; the run says which)
DATA="${ZERONAS_DATA_DIR:-../shared/data}/cifar10"
COMMON="--experiment=correlate --dataset=cifar10 --noprogress --chunk_size=1024"
[ -d "$DATA" ] && COMMON="$COMMON --data_dir=$DATA"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
python -c 'import jax; print("jax", jax.__version__, jax.devices())'
for what in NTK ZC; do
  echo "== GPU: $what on $ARCHS"
  /usr/bin/time -f "wall %e s" python -m experiments.run $COMMON ${!what} --archs="$ARCHS" \
    --batch_candidates=0 --workdir="$OUT/gpu_$what"
  echo "== CPU: $what on $CPU_ARCHS"
  JAX_PLATFORMS=cpu /usr/bin/time -f "wall %e s" python -m experiments.run $COMMON ${!what} \
    --archs="$CPU_ARCHS" --batch_candidates=8 --workdir="$OUT/cpu_$what"
  python -m experiments.compare_scores --scores_a="$OUT/gpu_$what" --scores_b="$OUT/cpu_$what"
done
