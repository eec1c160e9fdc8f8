#!/usr/bin/env bash
# One prepared check for a bare machine with an NVIDIA GPU (run from the repository root).
# Installs the project without touching the machine's own torch, then runs the throughput
# comparison and a short accuracy run on CUDA, printing seconds per epoch.
#   Data: CIFARNET_DATA must point at an ImageFolder tree (or the machine must reach the
#   CIFAR-10 download). Missing packages (albumentations, mlflow, optuna, ...) can be carried
#   as wheels in .whl/ (see the device tool's README); they are installed from there first.
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
