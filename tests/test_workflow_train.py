"""Training and export through the real snakemake CLI: demo quality, what reruns and what does
not, resume after SIGKILL, the parity gate. (Experiments in parallel: test_workflow_report, whose
demo run trains two.)"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import DEMO_TO_EXPORT, copy_run, copy_workflow, jobs_run, nothing_to_do, snakemake, write_yaml
from test_mlflow_hook import metric_steps, runs_of, sqlite_uri
from test_training import without_timings

pytestmark = pytest.mark.workflow
# The training and export stages only (what follows them has tests of its own); --until first, so
# that further config files given after DEMO extend --configfile.
DEMO = DEMO_TO_EXPORT


def demo_dataset(workdir: Path) -> str:
    (meta,) = (workdir / "results" / "data").glob("*/meta.json")
    return meta.parent.name


def metrics(workdir: Path, stage: str, experiment: str = "default") -> dict:
    return json.loads((workdir / "results" / stage / experiment / "metrics.json").read_text())


@pytest.fixture(scope="module")
def demo(tmp_path_factory, demo_run) -> Path:
    """A copy of the session's demo run (conftest.demo_run: it asserts which jobs ran), shared by the
    tests below (which run in file order and change it)."""
    return copy_run(demo_run, tmp_path_factory.mktemp("demo") / "wf")


def test_demo_trains_the_synthetic_set_well_and_exports_with_parity(demo):
    train = metrics(demo, "train")
    assert train["test_accuracy"] >= 0.90, train["test_accuracy"]
    assert 0 < train["val_accuracy"] <= 1 and train["parameters"] > 0 and train["images_per_second"] > 0
    assert [row["epoch"] for row in train["history"]] == [1, 2, 3, 4]
    assert len((demo / "results/train/default/history.csv").read_text().splitlines()) == 5
    assert list((demo / "results/train/default/tensorboard").glob("events.out.tfevents.*"))
    assert not (demo / "results/train/default/resume.pt").exists()
    log = (demo / "logs/train_model/default.log").read_text()
    assert "epoch 4/4: train loss" in log and "img/s" in log
    export = metrics(demo, "export")
    assert export["argmax_agreement"] >= 0.9995 and export["onnx_test_accuracy"] == train["test_accuracy"]
    # the MLflow hook: one child per job, training's history as per-epoch step metrics
    runs = runs_of(sqlite_uri(demo))
    assert runs.names() == sorted(
        [
            "prepare_dataset/dataset=" + demo_dataset(demo),
            "train_model/experiment=default",
            "export_onnx/experiment=default",
        ]
    )
    steps = metric_steps(sqlite_uri(demo), runs.named("train_model/experiment=default"), "train_loss")
    assert [step for step, _ in steps] == [1, 2, 3, 4]
    assert nothing_to_do(snakemake(demo, *DEMO))  # a rerun has nothing to do


def test_export_settings_never_retrain(demo):
    checkpoint = demo / "results/train/default/model.pt"
    trained_at = checkpoint.stat().st_mtime_ns
    write_yaml(demo / "int8.yaml", "export:\n  quantize: int8\n  calibration_images: 64\n")
    run = snakemake(demo, *DEMO, "int8.yaml")
    assert jobs_run(run) == {"quantize_onnx": 1}
    quantized = metrics(demo, "quantize")
    assert quantized["speedup"] > 0 and abs(quantized["accuracy_drop"]) < 0.2
    write_yaml(demo / "opset.yaml", "export:\n  opset: 19\n")
    assert jobs_run(snakemake(demo, *DEMO, "opset.yaml")) == {"export_onnx": 1}
    assert checkpoint.stat().st_mtime_ns == trained_at


def test_parity_gate_failure_fails_the_rule_and_says_by_how_much(demo):
    write_yaml(
        demo / "strict.yaml",
        "export:\n  parity:\n    min_argmax_agreement: 1.0\n    max_probability_diff: 0.0\n",
    )
    run = snakemake(demo, *DEMO, "strict.yaml", check=False)
    assert run.returncode != 0
    assert "ONNX parity gate failed on 1000 test images: max |probability diff|" in run.stderr
    assert not (demo / "results/export/default/model.onnx").exists()


def test_resume_after_sigkill_matches_an_uninterrupted_run(demo, tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    log = workdir / "logs/train_model/default.log"
    resume = workdir / "results/train/default/resume.pt"  # written atomically after each epoch
    with subprocess.Popen(
        [Path(sys.executable).parent / "snakemake", "--cores", "2", *DEMO],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as proc:
        deadline = time.monotonic() + 300
        while not resume.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "training never finished epoch 1"
            time.sleep(0.05)
        (trainer,) = [
            p
            for p in psutil.Process(proc.pid).children(recursive=True)
            if any("train_model.py" in part for part in p.cmdline())
        ]
        trainer.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=120) != 0
    assert resume.exists()
    assert not (workdir / "results/train/default/model.pt").exists()

    snakemake(workdir, "--until", "train_model", "--configfile", "config/demo.yaml")  # export: not compared
    assert "resuming after epoch" in log.read_text()
    assert without_timings(metrics(workdir, "train")) == without_timings(metrics(demo, "train"))
