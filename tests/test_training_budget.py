"""Training to a time budget (train.budget_s): the plan's arithmetic, a budgeted run against the fixed
run of the epochs it chose, resume, a budget too short, and the real probe.

No test here depends on how fast this machine is: the throughput is injected (measure_costs
replaced by fixed Costs, so large that the real seconds spent loading are noise), or the budgets are
so large or so small that any machine gives the same answer."""

import json
import subprocess
import sys
import time

import pytest
import torch
from cifarflow import training
from cifarflow.dataset import load_meta
from cifarflow.errors import PipelineError, TrainingFailed
from cifarflow.training import Costs, lr_at, plan_epochs, train
from conftest import ROOT
from snakemake_logger_plugin_mlflow.content import metrics_from_json, tags_from_json
from test_training import base_recipe, interrupted_in_epoch_2, tiny_data, without_timings  # noqa: F401

BUDGET_KEYS = {"budget_s", "budget_fit_epochs", "budget_images_per_second", "budget_predicted_seconds"}


def test_the_plan_takes_the_most_epochs_that_fit_and_at_most_epochs():
    # an epoch: 1.05 * (10 steps * 1 s + 100 val images * 0.01 s + 0.5 s) = 12.075 s;
    # after the last: 1.05 * (200 test images * 0.01 s + 0.5 s) = 2.625 s
    costs = Costs(step_seconds=1.0, eval_image_seconds=0.01, save_seconds=0.5)
    sizes = {"steps_per_epoch": 10, "n_val": 100, "n_test": 200, "precision": "fp32"}

    def plan(budget, epochs=16, spent=5.0):
        return plan_epochs(base_recipe(epochs=epochs, budget_s=budget, batch_size=64), costs, spent, **sizes)

    small, large = plan(100), plan(1000)
    assert small.epochs == small.fit_epochs == 7  # (100 - 5 - 2.625) / 12.075 = 7.65
    assert large.fit_epochs == 82 and large.epochs == 16  # epochs is the upper bound
    assert small.predicted_s <= 100 and large.predicted_s <= 1000
    assert small.predicted_s == pytest.approx(5 + 7 * 12.075 + 2.625, abs=1e-3)
    assert small.images_per_second == 64.0 and small.precision == "fp32"
    assert plan(100, spent=20).epochs == 6  # what went before the first epoch counts against the budget

    with pytest.raises(TrainingFailed, match=r"train\.budget_s = 19 s is too short for one epoch") as err:
        plan(19)
    message = str(err.value)
    assert (
        "5.0 s went before the first epoch" in message
        and "predicted at 12.1 s (64 training images/s" in message
    )
    assert "Raise train.budget_s to at least 20, or set it to null and give train.epochs" in message
    assert plan(20).epochs == 1  # the advice is enough


def fixed_costs(step_seconds: float):
    """measure_costs' stand-in: `step_seconds` a step, evaluation and checkpoints free."""

    def measure(*args, **kwargs):
        return Costs(step_seconds=step_seconds, eval_image_seconds=0.0, save_seconds=0.0)

    return measure


def weights(path):
    return torch.load(path, weights_only=True)["weights"]


def test_a_budget_trains_the_fixed_run_of_the_epochs_it_chose(tiny_data, tmp_path, monkeypatch):  # noqa: F811
    steps = load_meta(tiny_data)["sizes"]["train"] // 64
    # 100 s an epoch (injected): 250 s fit 2 epochs while loading takes under 40 s; 10,000 s fit 95
    monkeypatch.setattr(training, "measure_costs", fixed_costs(100 / steps))
    recipe = base_recipe(epochs=4)
    tight = train(tiny_data, base_recipe(epochs=4, budget_s=250), tmp_path / "tight", threads=2)
    ample = train(tiny_data, base_recipe(epochs=4, budget_s=10_000), tmp_path / "ample", threads=2)
    assert tight["epochs"] == len(tight["history"]) == 2 < ample["epochs"] == 4  # at most train.epochs
    assert tight["budget_fit_epochs"] == 2 and ample["budget_fit_epochs"] > 80
    assert tight["budget_s"] == 250 and tight["budget_images_per_second"] == pytest.approx(
        0.64 * steps, abs=0.05
    )
    # precision auto: this CPU's (bf16 where it has native bf16), as the rest of the run
    precision = "bf16" if training.trains_in_bf16("auto", torch.device("cpu")) else "fp32"
    assert (
        tight["precision"] == precision
        and tight["budget_predicted_seconds"] <= 250
        and tight["wall_seconds"] > 0
    )

    # The schedule is the whole schedule of 2 epochs, compressed, not 4 epochs' cut short: the last
    # step is at the end of the decay, far below where 4 epochs' schedule stands after 2.
    total = 2 * steps
    assert tight["history"][-1]["lr"] == pytest.approx(lr_at(total - 1, total, recipe))
    assert tight["history"][-1]["lr"] < 0.5 * lr_at(total - 1, 4 * steps, recipe)

    # The probe ran on a copy: the budgeted run is, bit for bit, the fixed run of its chosen epochs.
    fixed = train(tiny_data, base_recipe(epochs=2), tmp_path / "fixed", threads=2)
    unbudgeted = {k: v for k, v in tight.items() if k not in BUDGET_KEYS}
    assert without_timings(unbudgeted) == without_timings(fixed)
    a, b = weights(tmp_path / "tight" / "model.pt"), weights(tmp_path / "fixed" / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not BUDGET_KEYS & set(fixed)  # no budget, no budget figures

    # The MLflow hook logs metrics.json's top-level numbers as the train job's metrics, text as tags.
    logged = {key for key, _, _ in metrics_from_json(tight)}
    assert logged >= BUDGET_KEYS | {"epochs", "wall_seconds"}
    assert tags_from_json(tight) == {"precision": precision}


def test_resume_keeps_the_chosen_epochs(tiny_data, tmp_path, monkeypatch):  # noqa: F811
    steps = load_meta(tiny_data)["sizes"]["train"] // 64
    recipe = base_recipe(epochs=4, budget_s=350)  # 3 epochs of 100 s fit
    monkeypatch.setattr(training, "measure_costs", fixed_costs(100 / steps))
    full = train(tiny_data, recipe, tmp_path / "full", threads=2)
    assert full["epochs"] == 3

    saved = interrupted_in_epoch_2(monkeypatch, tiny_data, recipe, tmp_path / "killed")
    assert saved["epoch"] == 1 and saved["budget"]["epochs"] == 3

    # The machine is 100x faster now, which would choose 4 epochs: the resumed run does not re-measure.
    monkeypatch.setattr(training, "measure_costs", fixed_costs(1 / steps))
    assert train(tiny_data, recipe, tmp_path / "other", threads=2)["epochs"] == 4  # a fresh run would
    resumed = train(tiny_data, recipe, tmp_path / "killed", threads=2)
    assert without_timings(resumed) == without_timings(full)
    assert resumed["budget_predicted_seconds"] == saved["budget"]["predicted_s"]  # the killed run's plan
    assert not (tmp_path / "killed" / "resume.pt").exists()


def test_the_real_probe_fits_a_huge_budget_and_refuses_a_tiny_one(tiny_data, tmp_path):  # noqa: F811
    metrics = train(tiny_data, base_recipe(epochs=2, budget_s=1e6), tmp_path / "huge", threads=2)
    assert metrics["epochs"] == 2 and metrics["budget_fit_epochs"] > 2
    assert metrics["budget_images_per_second"] > 0 and 0 < metrics["wall_seconds"] < 1e6
    assert {p.name for p in (tmp_path / "huge").iterdir()} == {"model.pt", "history.csv", "tensorboard"}
    # the probe trained a copy: what the run trained is exactly the fixed run of the same epochs
    fixed = train(tiny_data, base_recipe(epochs=2), tmp_path / "fixed", threads=2)
    assert without_timings({k: v for k, v in metrics.items() if k not in BUDGET_KEYS}) == without_timings(
        fixed
    )
    a, b = weights(tmp_path / "huge" / "model.pt"), weights(tmp_path / "fixed" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)

    with pytest.raises(PipelineError, match=r"train\.budget_s = 0\.001 s is too short for one epoch on this"):
        train(tiny_data, base_recipe(epochs=2, budget_s=0.001), tmp_path / "tiny", threads=2)
    assert not (tmp_path / "tiny" / "model.pt").exists() and not (tmp_path / "tiny" / "resume.pt").exists()
    assert not list((tmp_path / "tiny").glob(".budget-probe-*"))  # the probe's checkpoint is gone

    # the budget counts from `started` (train_model.py: the job's start, its imports included)
    with pytest.raises(
        PipelineError, match=r"too short for one epoch on this machine: 20\d\d\.\d s went before"
    ):
        train(tiny_data, base_recipe(budget_s=1000), tmp_path / "late", threads=2, started=time.time() - 2000)


def test_a_trial_with_too_short_a_budget_records_it(tiny_data, tmp_path):  # noqa: F811
    """Through train_model.py: too short a budget is a training that cannot finish (TrainingFailed), so an
    experiment's job fails with the message (as test_training_outcome shows for any such failure) and a
    sweep trial records it as its outcome."""
    recipe = base_recipe(epochs=2, budget_s=0.001)
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train_model.py"), "--data", str(tiny_data)]
        + [
            "--recipe",
            recipe.to_json(),
            "--outdir",
            str(tmp_path),
            "--threads",
            "2",
            "--on-failure",
            "record",
        ],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT / "scripts"), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["outcome"] == "failed" and metrics["epochs"] == 0
    assert metrics["reason"].startswith(
        "train.budget_s = 0.001 s is too short for one epoch on this machine: "
    )
