"""A training that cannot finish: an experiment's job fails; a sweep trial's job records the outcome
(metrics.json, a model.pt without weights that nothing can export, the epochs completed) and succeeds."""

import csv
import json
import shutil
import subprocess
import sys

import pytest
import torch
from cifarflow import training
from cifarflow.checkpoint import load_checkpoint
from cifarflow.config import Recipe
from cifarflow.errors import PipelineError, TrainingDiverged
from cifarflow.training import record_failure, train
from conftest import ROOT
from test_training import base_recipe, tiny_data  # noqa: F401  (fixture)

DIVERGING = {"lr": 1e30, "warmup": 0.0, "ema": 0.0, "label_smoothing": 0.0}


def train_model(data, recipe: Recipe, outdir, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train_model.py"), "--data", str(data)]
        + ["--recipe", recipe.to_json(), "--outdir", str(outdir), "--threads", "2", *extra],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT / "scripts"), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )


def test_an_experiment_that_diverges_fails_its_job(tiny_data, tmp_path):  # noqa: F811
    run = train_model(tiny_data, base_recipe(**DIVERGING), tmp_path / "x")
    assert run.returncode == 1, run.stderr[-3000:]
    assert "training diverged: loss is nan at epoch 1" in run.stderr
    assert not (tmp_path / "x" / "metrics.json").exists() and not (tmp_path / "x" / "model.pt").exists()


def test_a_trial_that_diverges_records_it_and_succeeds(tiny_data, tmp_path):  # noqa: F811
    outdir = tmp_path / "trial"
    run = train_model(tiny_data, base_recipe(**DIVERGING), outdir, "--on-failure", "record")
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((outdir / "metrics.json").read_text())
    assert metrics["outcome"] == "diverged" and metrics["epochs"] == 0 and metrics["history"] == []
    assert metrics["reason"].startswith("training diverged: loss is nan at epoch 1, step ")
    assert "val_accuracy" not in metrics
    with open(outdir / "history.csv") as fh:
        assert next(csv.reader(fh))[:2] == ["epoch", "train_loss"]
    assert (outdir / "tensorboard").is_dir() and not (outdir / "resume.pt").exists()
    with pytest.raises(
        PipelineError, match=r"model\.pt holds no model: its training diverged \(training diverged"
    ):
        load_checkpoint(outdir / "model.pt")


def test_a_trial_that_finishes_says_ok(tiny_data, tmp_path):  # noqa: F811
    run = train_model(tiny_data, base_recipe(epochs=1), tmp_path / "ok", "--on-failure", "record")
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((tmp_path / "ok" / "metrics.json").read_text())
    assert metrics["outcome"] == "ok" and 0 <= metrics["val_accuracy"] <= 1
    model, _ = load_checkpoint(tmp_path / "ok" / "model.pt")
    assert sum(p.numel() for p in model.parameters()) > 0


def test_a_trial_whose_batch_exceeds_the_data_records_a_failure(tiny_data, tmp_path):  # noqa: F811
    run = train_model(tiny_data, base_recipe(batch_size=4096), tmp_path / "big", "--on-failure", "record")
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((tmp_path / "big" / "metrics.json").read_text())
    assert (
        metrics["outcome"] == "failed"
        and "batch_size 4096 is larger than the training split" in metrics["reason"]
    )


def test_the_record_keeps_the_epochs_completed_before_divergence(tiny_data, tmp_path, monkeypatch):  # noqa: F811
    """Divergence in epoch 2 (forced): the record holds epoch 1, as training left it in resume.pt."""
    real = training._check_finite

    def diverge_in_epoch_two(losses, step, epoch, *args):
        if epoch == 1:
            losses[step] = float("nan")
        return real(losses, step, epoch, *args)

    monkeypatch.setattr(training, "_check_finite", diverge_in_epoch_two)
    recipe = base_recipe(epochs=3)
    with pytest.raises(TrainingDiverged, match="at epoch 2") as raised:
        train(tiny_data, recipe, tmp_path, threads=2)
    dataset_id = json.loads((tiny_data / "meta.json").read_text())["dataset_id"]
    # a resume.pt made with another recipe is not this trial's history
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(tmp_path / "resume.pt", other / "resume.pt")
    assert record_failure(other, base_recipe(epochs=3, seed=5), dataset_id, raised.value)["history"] == []

    metrics = record_failure(tmp_path, recipe, dataset_id, raised.value)
    assert metrics["epochs"] == 1 and [row["epoch"] for row in metrics["history"]] == [1]
    assert metrics["train_seconds"] > 0 and metrics["outcome"] == "diverged"
    with open(tmp_path / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(row["epoch"]) for row in rows] == [1]
    assert torch.load(tmp_path / "model.pt", weights_only=True)["outcome"] == "diverged"
    assert not (tmp_path / "resume.pt").exists()  # the same recipe would diverge again: nothing to resume
