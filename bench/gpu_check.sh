#!/usr/bin/env bash
# GPU check: trains the `gpu` preset (config/gpu.yaml) on the real CIFAR-10 images and prints wall time,
# training seconds and test accuracy (bench/train_cifar10.py), after a one-epoch warm-up run (CUDA
# initialisation, cuDNN autotuning). Needs no internet: the project installed (make install) and
#   bash bench/gpu_check.sh ARCHIVE     (or CIFARFLOW_JPEG_ARCHIVE=ARCHIVE bash bench/gpu_check.sh)
# where ARCHIVE is a tarball of the CIFAR-10 training images as JPEGs, train/<class>/<nnnn>.jpg.
set -euo pipefail
archive="${1:-${CIFARFLOW_JPEG_ARCHIVE:-}}"
if [ -z "$archive" ]; then
    echo "gpu_check.sh: no JPEG archive given. Pass a tarball of the CIFAR-10 training images as JPEGs," \
        "train/<class>/<nnnn>.jpg: bash bench/gpu_check.sh ARCHIVE (or set CIFARFLOW_JPEG_ARCHIVE)." >&2
    exit 2
fi
if [ ! -f "$archive" ]; then
    echo "gpu_check.sh: $archive: no such file. Pass a tarball of the CIFAR-10 training images as JPEGs," \
        "train/<class>/<nnnn>.jpg." >&2
    exit 2
fi
archive="$(realpath "$archive")"
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
export PYTHONUNBUFFERED=1
python3 bench/train_cifar10.py --archive "$archive" --cache /tmp/cifarflow-bench \
  --configfile config/gpu.yaml --threads 8 --name gpu-warmup --set epochs=1 > /dev/null  # CUDA init, cuDNN autotune
python3 bench/train_cifar10.py --archive "$archive" --cache /tmp/cifarflow-bench \
  --configfile config/gpu.yaml --threads 8 --name gpu
