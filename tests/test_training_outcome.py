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


def test_halving_trial_jobs_end_as_one_training_or_record_where_they_stopped(tiny_data, tmp_path):  # noqa: F811
    """The scripts of a halving trial, each a process of its own as on Slurm: rung 0 (1 epoch of 3),
    the decision, then train_model with the decision. Promoted, it resumes to the end and writes the
    uninterrupted training's model.pt, byte for byte; stopped, it trains nothing and records why."""
    from cifarflow.sweep import Sweep, promote_rung

    recipe = base_recipe(epochs=3)
    sweep = Sweep("h", "halving", ("lr",), {"h-a": {}, "h-b": {}}, promote=1, rungs=(1, 3), eta=2)
    rungs = {}
    for trial in ("h-a", "h-b"):
        rung = tmp_path / trial / "rung0"
        run = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "train_rung.py"), "--data", str(tiny_data)]
            + [
                "--recipe",
                recipe.to_json(),
                "--outdir",
                str(tmp_path / trial),
                "--rung",
                "0",
                "--epochs",
                "1",
            ]
            + ["--metrics", str(rung / "metrics.json"), "--epochs-out", str(rung / "epochs.json")]
            + ["--threads", "2"],
            capture_output=True,
            text=True,
            env={"PYTHONPATH": str(ROOT / "scripts"), "PATH": "/usr/bin:/bin"},
            timeout=300,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        rungs[trial] = json.loads((rung / "metrics.json").read_text())
        assert rungs[trial]["history"] == [
            {
                "step": 0,
                "epochs": 1,
                "val_accuracy": rungs[trial]["val_accuracy"],
                "val_loss": rungs[trial]["val_loss"],
            }
        ]
    # the same recipe twice: a tie, which the name breaks (h-a goes on, h-b stops)
    decision = promote_rung(sweep, 0, rungs)
    assert decision["promoted"] == ["h-a"]
    (tmp_path / "decision.json").write_text(json.dumps(decision))
    for trial in ("h-a", "h-b"):
        rung = tmp_path / trial / "rung0"
        halving = ["--trial", trial, "--rungs", str(tmp_path / "decision.json")]
        halving += ["--rung-metrics", str(rung / "metrics.json"), "--rung-epochs", str(rung / "epochs.json")]
        run = train_model(tiny_data, recipe, tmp_path / trial, "--on-failure", "record", *halving)
        assert run.returncode == 0, run.stderr[-3000:]
    uninterrupted = train_model(tiny_data, recipe, tmp_path / "full")
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    assert (tmp_path / "h-a" / "model.pt").read_bytes() == (tmp_path / "full" / "model.pt").read_bytes()
    finished, full = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("h-a", "full"))
    timing = ("seconds", "images_per_second", "train_seconds")
    assert [{k: v for k, v in row.items() if k not in timing} for row in finished.pop("history")] == [
        {k: v for k, v in row.items() if k not in timing} for row in full.pop("history")
    ]
    assert {k: v for k, v in finished.items() if k not in timing} == {
        k: v for k, v in full.items() if k not in timing
    }
    stopped = json.loads((tmp_path / "h-b" / "metrics.json").read_text())
    assert (stopped["outcome"], stopped["stopped_at_rung"], stopped["epochs"]) == ("stopped", 0, 1)
    assert stopped["val_accuracy"] == rungs["h-b"]["val_accuracy"] and len(stopped["history"]) == 1
    assert stopped["reason"].startswith("stopped by successive halving after rung 0 (1 epoch)")
    assert not (tmp_path / "h-b" / "resume.pt").exists()
    with pytest.raises(PipelineError, match=r"model\.pt holds no model: its training stopped"):
        load_checkpoint(tmp_path / "h-b" / "model.pt")
