#!/usr/bin/env bash
# GPU check for a lent device machine (no internet there): trains the `gpu` preset on the real
# CIFAR-10 JPEGs and prints wall time, training seconds and test accuracy. Carry the archive:
#   cp ../shared/data/cifar10-train-jpeg.tar.gz resources/   (resources/ is git-ignored)
#   device run, carry ["resources"], command: bash bench/gpu_check.sh   (about 3 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
export PYTHONUNBUFFERED=1
python3 bench/train_cifar10.py --archive resources/cifar10-train-jpeg.tar.gz --cache /tmp/cifarflow-bench \
  --configfile config/gpu.yaml --threads 8 --name gpu-warmup --set epochs=1 > /dev/null  # CUDA init, cuDNN autotune
python3 bench/train_cifar10.py --archive resources/cifar10-train-jpeg.tar.gz --cache /tmp/cifarflow-bench \
  --configfile config/gpu.yaml --threads 8 --name gpu
