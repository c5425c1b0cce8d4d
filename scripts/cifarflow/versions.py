"""The software that made a job's outputs: Python, the packages that matter, CUDA/cuDNN, the image.

Cheap by design (run_cli records it at the start of every job): nothing is imported to learn its
version. Versions are read from the installed packages' metadata (the same for every job whether or
not it imported the package: torch's says 2.14.1 where its module says 2.14.1+cu130, and its CUDA
build is reported on its own); a package without metadata that the job imported reports its
`__version__`; one that is not installed says so.
CUDA and cuDNN: from torch itself when the job has imported it (the libraries torch loads, and the
GPU when one is visible), else from the installed files: torch/version.py's CUDA build and the cuDNN
wheel (nvidia-cudnn-cu*) that PyPI's CUDA torch depends on.

The image: CIFARFLOW_IMAGE (set by the pipeline image: its name, version and variant); under Apptainer
the image file it runs (APPTAINER_CONTAINER, or SINGULARITY_CONTAINER of older releases). A job
cannot learn its image's registry digest from inside (an image cannot contain its own digest, and
neither Apptainer nor Podman/Docker pass it in); whoever starts the job may pass it as
CIFARFLOW_IMAGE_DIGEST (e.g. APPTAINERENV_CIFARFLOW_IMAGE_DIGEST=sha256:... in the environment), and
it is recorded then.

Standard library only: the serving image and the MLflow hook's tests read this without numpy or torch.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import sys
from pathlib import Path

# The packages whose versions decide what the rules compute, in the order the table shows them.
PACKAGES = ("torch", "torchvision", "onnx", "onnxruntime", "kserve", "mlflow", "snakemake", "numpy")
NOT_INSTALLED = "not installed"
# The line every job's log carries (run_cli), which the MLflow hook and the report's table read.
LOG_MARKER = "software versions: "


def _package(name: str) -> str:
    for distribution in (name, f"{name}-skinny") if name == "mlflow" else (name,):
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    module = sys.modules.get(name)  # imported from a path without package metadata
    version = getattr(module, "__version__", None) if module is not None else None
    return version if isinstance(version, str) else NOT_INSTALLED


def _cudnn_text(version: int) -> str:
    """cuDNN's integer version as text: 9.10.2 from 91002 (cuDNN 9+), 8.9.7 from 8907 (cuDNN 8)."""
    if version >= 10000:
        return f"{version // 10000}.{version // 100 % 100}.{version % 100}"
    return f"{version // 1000}.{version // 100 % 10}.{version % 100}"


def _cuda_from_files() -> tuple[str, str]:
    """(CUDA of the installed torch build, cuDNN wheel version), without importing torch."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return NOT_INSTALLED, NOT_INSTALLED
    cuda = "none (CPU build of torch)"
    version_file = Path(next(iter(spec.submodule_search_locations))) / "version.py"
    try:
        found = re.search(r"^cuda\b[^=]*=\s*['\"]([^'\"]+)['\"]", version_file.read_text(), re.MULTILINE)
    except OSError:
        found = None
    if found:
        cuda = found.group(1)
    cudnn = "none"
    for distribution in ("nvidia-cudnn-cu13", "nvidia-cudnn-cu12", "nvidia-cudnn-cu11"):
        try:
            cudnn = ".".join(importlib.metadata.version(distribution).split(".")[:3])  # as torch reports it
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    return cuda, cudnn


def _cuda() -> dict[str, str]:
    torch = sys.modules.get("torch")
    if torch is None or not hasattr(torch, "version"):
        cuda, cudnn = _cuda_from_files()
        return {"cuda": cuda, "cudnn": cudnn}
    figures = {"cuda": torch.version.cuda or "none (CPU build of torch)", "cudnn": "none"}
    try:
        cudnn = torch.backends.cudnn.version()
    except Exception:  # noqa: BLE001 - a cuDNN that cannot be loaded is what we report
        cudnn = None
    if cudnn:
        figures["cudnn"] = _cudnn_text(int(cudnn))
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        figures["gpu"] = ", ".join(names)
    else:
        figures["gpu"] = "none visible"
    return figures


def software_versions() -> dict[str, str]:
    """Python, PACKAGES, cuda, cudnn (and gpu when the job loaded torch), image, image_file, image_digest."""
    versions = {"python": platform.python_version()}
    versions |= {name: _package(name) for name in PACKAGES}
    versions |= _cuda()
    versions["image"] = os.environ.get("CIFARFLOW_IMAGE") or "none (the host's environment)"
    image_file = os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER")
    if image_file:
        versions["image_file"] = image_file
    if os.environ.get("CIFARFLOW_IMAGE"):
        versions["image_digest"] = os.environ.get("CIFARFLOW_IMAGE_DIGEST") or "unknown inside the job"
    return versions


# The order tables show them in (software_versions' own order); anything else after, as recorded.
ORDER = ("python", *PACKAGES, "cuda", "cudnn", "gpu", "image", "image_file", "image_digest")


def ordered(versions: dict[str, str]) -> dict[str, str]:
    rank = {key: i for i, key in enumerate(ORDER)}
    return dict(sorted(versions.items(), key=lambda item: rank.get(item[0], len(ORDER))))


def log_line(versions: dict[str, str]) -> str:
    """The one log line that carries them: LOG_MARKER + compact JSON (sorted keys)."""
    return LOG_MARKER + json.dumps(versions, sort_keys=True, separators=(",", ":"))


def from_log(text: str) -> dict[str, str] | None:
    """The versions a job's log records (the last such line: a resumed log may hold several)."""
    found = None
    for line in text.splitlines():
        at = line.find(LOG_MARKER)
        if at >= 0:
            try:
                data = json.loads(line[at + len(LOG_MARKER) :])
            except ValueError:
                continue
            if isinstance(data, dict):
                found = ordered({str(k): str(v) for k, v in data.items()})
    return found


NOT_RECORDED = "not recorded"


def from_logs(pairs: list[str]) -> dict[str, dict[str, str]]:
    """JOB=LOG arguments -> the versions each job's log records, in the order given. A log that is
    missing (deleted since) or has no record (written before jobs recorded versions) says so."""
    found: dict[str, dict[str, str]] = {}
    for pair in pairs:
        job, sep, log_file = pair.partition("=")
        if not sep:
            raise ValueError(f"--logs takes JOB=LOG pairs, got {pair!r}")
        try:
            recorded = from_log(Path(log_file).read_text(errors="replace"))
        except FileNotFoundError:
            recorded = {NOT_RECORDED: f"its log {log_file} is missing"}
        found[job] = recorded or {NOT_RECORDED: f"{log_file} predates version records: rerun the job"}
    return found
