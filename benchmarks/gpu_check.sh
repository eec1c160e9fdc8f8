#!/usr/bin/env bash
# One prepared check for a bare machine with an NVIDIA GPU (run from the repository root).
# Installs the project without touching the machine's own torch, then:
#   1. the throughput comparison on CUDA (training images/s, fp32 and the precision policy);
#   2. a 5-epoch accuracy run (seconds per epoch on the GPU);
#   3. the main job (dilation_add, 12 runs x 30 epochs) with --workers equal to what the
#      device takes (GPU_WORKERS, default 4), its wall time, and GPU utilisation sampled
#      every 5 s by nvidia-smi while it runs; the --dry-run prediction is printed first.
# Data: CIFARNET_DATA must point at an ImageFolder tree (or the machine must reach the
# CIFAR-10 download). Missing packages (albumentations, mlflow, optuna, ...) can be carried as
# wheels in .whl/ (see the device tool's README); they are installed from there first.
# GPU_CHECK_MAIN=0 skips step 3 (it takes the longest).
set -euo pipefail
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
python3 benchmarks/throughput.py --train-subset 50000 --epochs 2 --set data.num_workers=8 \
  --set train.batch_size=512
python3 benchmarks/accuracy.py --seeds 0 --set train.epochs=5 --set train.batch_size=512 \
  --set train.lr=0.4
if [ "${GPU_CHECK_MAIN:-1}" = "1" ]; then
  workers=${GPU_WORKERS:-4}
  work=$(mktemp -d)
  python3 -m cifarnet run dilation_add --dry-run --workers "$workers" | tail -2
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader -l 5 \
    > "$work/gpu.csv" 2>/dev/null &
  smi=$!
  start=$(date +%s)
  (cd "$work" && python3 -m cifarnet run dilation_add --workers "$workers" \
     --set data.num_workers=4) | tail -3
  end=$(date +%s)
  kill "$smi" 2>/dev/null || true
  echo "main job: $((end - start)) s wall time with --workers $workers"
  awk -F, '{gsub(/[ %]/, "", $1); s += $1; n++} END {if (n) printf "GPU utilisation: mean %.0f%% over %d samples\n", s / n, n}' "$work/gpu.csv"
fi
