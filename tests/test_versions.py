"""The software versions every job records: what the job really ran with, read cheaply."""

import importlib.metadata
import json
import subprocess
import sys

import numpy as np
from cifarflow import versions
from conftest import ROOT


def test_the_packages_are_those_installed_and_imported():
    found = versions.software_versions()
    assert found["numpy"] == np.__version__  # imported here: the module is the installed one
    for name in ("onnx", "onnxruntime", "mlflow", "snakemake", "torchvision"):
        assert found[name] == importlib.metadata.version(name)
    assert found["python"] == ".".join(map(str, sys.version_info[:3]))
    assert set(versions.PACKAGES) <= set(found)


def test_a_missing_package_says_so(monkeypatch):
    monkeypatch.setattr(versions, "PACKAGES", ("numpy", "no-such-package-here"))
    assert versions.software_versions()["no-such-package-here"] == versions.NOT_INSTALLED


def test_cuda_and_cudnn_without_importing_torch_match_torchs_own():
    """A job that never imports torch reads CUDA and cuDNN from the installed files; a job that did
    import it asks torch. Both must say the same (in fresh interpreters: this one may hold torch)."""
    code = (
        "import json, sys; from cifarflow.versions import software_versions; v = software_versions(); "
        "{}; print(json.dumps([v, 'torch' in sys.modules]))"
    )
    env = {"PYTHONPATH": str(ROOT / "scripts"), "PATH": "/usr/bin:/bin"}

    def run(before: str) -> tuple[dict, bool]:
        out = subprocess.run(
            [sys.executable, "-c", (before + "; " if before else "") + code.format("pass")],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        return json.loads(out.stdout)

    cold, imported = run("")
    assert not imported  # reading the versions did not import torch
    warm, _ = run("import torch")
    assert cold["torch"] == warm["torch"] == importlib.metadata.version("torch")
    assert cold["cuda"] == warm["cuda"]
    assert cold["cudnn"] == warm["cudnn"]
    assert "gpu" in warm and "gpu" not in cold


def test_the_image_and_what_the_job_can_know_of_it(monkeypatch):
    for name in ("CIFARFLOW_IMAGE", "CIFARFLOW_IMAGE_DIGEST", "APPTAINER_CONTAINER", "SINGULARITY_CONTAINER"):
        monkeypatch.delenv(name, raising=False)
    host = versions.software_versions()
    assert host["image"].startswith("none") and "image_digest" not in host and "image_file" not in host
    monkeypatch.setenv("CIFARFLOW_IMAGE", "cifarflow-pipeline:0.1.0-cuda")
    monkeypatch.setenv("SINGULARITY_CONTAINER", "/images/pipeline.sif")
    inside = versions.software_versions()
    assert inside["image"] == "cifarflow-pipeline:0.1.0-cuda"
    assert inside["image_file"] == "/images/pipeline.sif"
    assert inside["image_digest"] == "unknown inside the job"
    monkeypatch.setenv("CIFARFLOW_IMAGE_DIGEST", "sha256:" + "ab" * 32)
    assert versions.software_versions()["image_digest"] == "sha256:" + "ab" * 32


def test_the_log_line_round_trips():
    found = versions.software_versions()
    log = f"12:00:00 INFO running in ...\n12:00:00 INFO {versions.log_line(found)}\n12:00:01 INFO done\n"
    assert versions.from_log(log) == found
    assert versions.from_log("no versions here\n") is None
    assert versions._cudnn_text(92400) == "9.24.0" and versions._cudnn_text(8907) == "8.9.7"
