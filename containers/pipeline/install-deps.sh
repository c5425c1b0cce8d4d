#!/bin/sh
# Installs the pipeline image's dependencies into a venv; shared by the Dockerfile and pipeline.def.
#   install-deps.sh VENV REQUIREMENTS CONSTRAINTS TORCH_VARIANT
# CONSTRAINTS: the lock (constraints.txt): every package at its exact version; the build fails when
# pip installs a package the lock does not list (the lock is stale: make lock).
# TORCH_VARIANT: cuda = PyPI's torch wheel (the CUDA build for Linux x86_64; its CUDA libraries come
# as nvidia-* wheels, ~5.5 GB installed; it runs on CPUs too); cpu = the CPU-only build from
# PyTorch's own index (TORCH_CPU_INDEX, default https://download.pytorch.org/whl/cpu), ~1 GB.
# PIP_FIND_LINKS / PIP_EXTRA_INDEX_URL (build arguments) add local wheel directories or a mirror.
set -eu
venv="$1" requirements="$2" constraints="$3" variant="$4"
[ -n "${PIP_FIND_LINKS:-}" ] || unset PIP_FIND_LINKS
[ -n "${PIP_EXTRA_INDEX_URL:-}" ] || unset PIP_EXTRA_INDEX_URL
case "$variant" in
    cuda) ;;
    cpu)
        # torch==2.14.1 also matches 2.14.1+cpu, which pip prefers (a local version sorts higher).
        PIP_EXTRA_INDEX_URL="${PIP_EXTRA_INDEX_URL:+$PIP_EXTRA_INDEX_URL }${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
        export PIP_EXTRA_INDEX_URL ;;
    *)
        echo "TORCH_VARIANT must be cuda or cpu, not '$variant'" >&2
        exit 2 ;;
esac
python3 -m venv "$venv"
# --no-compile: no .pyc files in the image (smaller and faster to build). --report: what pip installed.
report="$(mktemp)"
"$venv/bin/pip" install --no-compile --disable-pip-version-check --progress-bar off \
    -r "$requirements" -c "$constraints" --report "$report"
# What went in, for provenance; and the variant must be the one asked for.
"$venv/bin/pip" freeze --all >"$(dirname "$requirements")/pip-freeze.txt"
PYTHONDONTWRITEBYTECODE=1 "$venv/bin/python" - "$variant" "$report" "$constraints" <<'PY'
import json, re, sys  # noqa: E401

import jsonschema, matplotlib, mlflow, numpy, onnx, onnxruntime, onnxscript, pandas, PIL, pyarrow, tensorboard, torch, torchvision, tqdm, yaml  # noqa: E401,F401

variant, report, constraints = sys.argv[1:]
def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()
locked = {canonical(line.split("==")[0]) for line in open(constraints) if "==" in line.split("#")[0]}
installed = [item["metadata"]["name"] for item in json.load(open(report))["install"]]
unlocked = sorted(name for name in installed if canonical(name) not in locked)
if unlocked:
    sys.exit(f"installed but not in the lock (constraints.txt), so at no tested version: {unlocked}; run make lock")
cuda = torch.version.cuda
if (variant == "cuda") != (cuda is not None):
    sys.exit(f"TORCH_VARIANT={variant} but torch {torch.__version__} was built with CUDA {cuda}")
print(f"torch {torch.__version__} (CUDA {cuda}), torchvision {torchvision.__version__}, onnxruntime {onnxruntime.__version__}")
print(f"{len(installed)} packages installed, each at the lock's version")
PY
rm -f "$report"
