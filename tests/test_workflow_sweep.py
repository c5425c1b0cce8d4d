"""config/sweep-demo.yaml through the real snakemake CLI: four trials train, the one with an absurd
learning rate diverges and is listed as such while the others carry on, the best by validation
accuracy alone is exported, built into one Podman image, evaluated as served and registered; the
report's Sweep section and MLflow show all four. A trial whose job fails outright (not a training
outcome) leaves the others finished under --keep-going, and the ranking waits for it."""

import json
import os
import re
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import copy_workflow, nothing_to_do, require_system_part, snakemake
from mlflow import MlflowClient
from report_browser import walk_report
from test_mlflow_hook import runs_of, sqlite_uri

pytestmark = pytest.mark.workflow
ARGS = ("--configfile", "config/demo.yaml", "config/sweep-demo.yaml", "local.yaml")
TRIALS = ["demo-lr0.03", "demo-lr0.3", "demo-lr1.0", "demo-lr10000.0"]
DIVERGED = "demo-lr10000.0"
# A repository of its own, so that the images this test builds are told apart and removed.
REPOSITORY = f"localhost/cifarflow-sweep-test-{os.getpid()}"


def started(run: subprocess.CompletedProcess) -> Counter:
    """Rule -> jobs started, from the job headers snakemake prints (its 'Job stats' table is drawn
    before the checkpoint, when the jobs after it are not known yet)."""
    return Counter(re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):$", run.stdout + run.stderr, re.M))


def read(workdir: Path, path: str) -> dict:
    return json.loads((workdir / path).read_text())


def podman_images(repository: str) -> list[str]:
    listed = subprocess.run(
        ["podman", "images", "--format", "{{.Repository}}:{{.Tag}}", "--filter", f"reference={repository}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return listed.stdout.split()


@pytest.fixture(scope="module")
def swept(tmp_path_factory, podman):
    workdir = copy_workflow(tmp_path_factory.mktemp("sweep") / "wf")
    (workdir / "local.yaml").write_text(yaml.safe_dump({"serving": {**podman, "image": REPOSITORY}}))
    start = time.perf_counter()
    try:
        run = snakemake(workdir, *ARGS, timeout=2400)  # no --keep-going: a diverging trial is no failure
        print(f"sweep demo: {time.perf_counter() - start:.0f} s")
        images = podman_images(REPOSITORY)
        yield workdir, run, images
    finally:
        for image in podman_images(REPOSITORY):
            subprocess.run(["podman", "rmi", "-f", image], capture_output=True)


def test_every_trial_trains_and_only_the_best_goes_on(swept):
    workdir, run, images = swept
    assert started(run) == {
        "prepare_dataset": 1,
        "audit_dataset": 1,
        "train_model": 4,
        "rank_sweep": 1,
        "export_onnx": 1,
        "evaluate_robustness": 1,
        "build_serving_image": 1,
        "evaluate_served_model": 1,
        "register_model": 1,
        "plot_dataset": 1,
        "plot_sweep": 1,
        "plot_training": 1,
        "tabulate_export": 1,
        "tabulate_manifest": 1,
        "plot_evaluation": 1,
        "plot_robustness": 1,
        "tabulate_versions": 1,
        "compare_experiments": 1,
        "all": 1,
    }
    assert sorted(p.name for p in (workdir / "results/train").iterdir()) == sorted(TRIALS)
    ranking = read(workdir, "results/sweep/demo/ranking.json")
    (best,) = ranking["promoted"]
    for stage in ("export", "robustness", "image", "evaluate", "register"):
        assert [p.name for p in (workdir / "results" / stage).glob("[!.]*")] == [best], stage
    # one image, of the promoted trial's model
    manifest = read(workdir, f"results/image/{best}/manifest.json")
    assert manifest["engine"] == "podman" and images == [manifest["image"]], images
    assert manifest["image"].startswith(f"{REPOSITORY}:{best}-")
    # nothing left to do: the DAG after the checkpoint is stable
    assert nothing_to_do(snakemake(workdir, *ARGS, "--dry-run"))


def test_trials_are_ranked_on_validation_and_the_diverged_one_is_listed_with_its_reason(swept):
    workdir, _, _ = swept
    ranking = read(workdir, "results/sweep/demo/ranking.json")
    rows = {row["trial"]: row for row in ranking["trials"]}
    assert sorted(rows) == sorted(TRIALS) and ranking["selected_on"] == "val_accuracy"
    finished = [row for row in ranking["trials"] if row["outcome"] == "ok"]
    assert [row["trial"] for row in finished] == [row["trial"] for row in ranking["trials"][:3]]
    vals = [row["val_accuracy"] for row in finished]
    assert vals == sorted(vals, reverse=True) and [row["rank"] for row in finished] == [1, 2, 3]
    for row in finished:  # the ranking's figures are the trainings' own
        trained = read(workdir, f"results/train/{row['trial']}/metrics.json")
        assert (row["val_accuracy"], row["test_accuracy"]) == (
            trained["val_accuracy"],
            trained["test_accuracy"],
        )
        assert row["train_seconds"] == trained["train_seconds"] > 0
    assert ranking["promoted"] == [finished[0]["trial"]] and finished[0]["val_accuracy"] >= 0.9
    diverged = rows[DIVERGED]
    assert diverged["outcome"] == "diverged" and diverged["rank"] is None and not diverged["promoted"]
    assert diverged["reason"].startswith("training diverged: loss is nan at epoch 1")
    assert diverged["reason"] in (workdir / f"logs/train_model/{DIVERGED}.log").read_text()
    assert "training diverged" in (workdir / "logs/rank_sweep/demo.log").read_text()
    summary = read(workdir, "results/sweep/demo/metrics.json")
    assert (summary["trials"], summary["trials_finished"], summary["trials_stopped"]) == (4, 3, 1)


def test_the_champion_is_chosen_on_validation_accuracy(swept):
    workdir, _, _ = swept
    best = read(workdir, "results/sweep/demo/ranking.json")["promoted"][0]
    registration = read(workdir, f"results/register/{best}/registration.json")
    trained = read(workdir, f"results/train/{best}/metrics.json")
    assert registration["champion"] and registration["val_accuracy"] == trained["val_accuracy"]
    assert registration["accuracy"] == read(workdir, f"results/evaluate/{best}/metrics.json")["accuracy"]
    client = MlflowClient(sqlite_uri(workdir))
    version = client.get_model_version_by_alias(registration["name"], "champion")
    assert version.tags["val_accuracy"] == f"{trained['val_accuracy']:.6f}"
    assert version.tags["experiment"] == best
    # the comparison holds what was shipped: the promoted trial alone
    assert read(workdir, "results/report/compare/metrics.json")["experiments"] == 1


def test_mlflow_tags_each_trial_run_with_its_sweep_settings_and_outcome(swept):
    workdir, _, _ = swept
    runs = runs_of(sqlite_uri(workdir))
    trained = {
        r.info.run_name.split("=", 1)[1]: r
        for r in runs.children
        if r.info.run_name.startswith("train_model/")
    }
    assert sorted(trained) == sorted(TRIALS)
    for name, run in trained.items():
        assert run.info.status == "FINISHED"
        assert run.data.tags["sweep"] == "demo" and run.data.tags["sweep.trial"] == name
        assert float(run.data.tags["sweep.lr"]) == float(name.removeprefix("demo-lr"))
        assert run.data.params["params.recipe.lr"] == run.data.tags["sweep.lr"]  # the compare view's column
        assert not any(key.startswith("params.mlflow_tags") for key in run.data.params)
    assert trained[DIVERGED].data.tags["outcome"] == "diverged"
    assert trained[DIVERGED].data.tags["reason"].startswith("training diverged: loss is nan")
    assert "val_accuracy" not in trained[DIVERGED].data.metrics
    best = read(workdir, "results/sweep/demo/ranking.json")["promoted"][0]
    assert trained[best].data.tags["outcome"] == "ok" and trained[best].data.metrics["val_accuracy"] > 0
    ranked = runs.named("rank_sweep/sweep=demo")
    assert ranked.data.metrics["trials_stopped"] == 1 and ranked.data.metrics["best_val_accuracy"] >= 0.9


def test_the_report_has_a_sweep_section_with_every_trial(swept, tmp_path_factory):
    workdir, _, _ = swept
    require_system_part("chromium")  # make test installs it as root; skips (fails in CI) without
    snakemake(workdir, *ARGS, "--report", "report.html")
    shots = tmp_path_factory.mktemp("sweep-report")
    walk = walk_report(workdir / "report.html", shots)
    print(f"report screenshots: {shots}")
    assert walk.errors == []
    assert walk.description_top >= 0, "the workflow description is clipped: keep report/workflow.rst short"
    assert "Sweep" in walk.categories and "demo" in walk.description
    sweep = {(i.labels.get("figure"), i.filename): i.loaded for i in walk.items if i.category == "Sweep"}
    assert sweep == {
        ("ranking", "ranking.html"): True,
        ("accuracy by setting", "parameters.png"): True,
        ("learning curves", "curves.png"): True,
    }
    table = (workdir / "results/report/sweep/demo/ranking.html").read_text()
    assert all(f">{trial}<" in table for trial in TRIALS) and ">training diverged: loss is nan" in table
    # the per-experiment items are the promoted trial's alone
    experiments = {i.labels.get("experiment") for i in walk.items if i.category in ("Training", "Export")}
    assert experiments == set(read(workdir, "results/sweep/demo/ranking.json")["promoted"])


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """Two one-epoch trials of another sweep, one on `cuda`, which this machine lacks: its job fails
    (a failure of the job, not an outcome of the training), under --keep-going."""
    workdir = copy_workflow(tmp_path_factory.mktemp("broken") / "wf")
    sweep = {"name": "dev", "parameters": {"device": ["cpu", "cuda"], "epochs": [1]}}
    (workdir / "dev.yaml").write_text(yaml.safe_dump({"experiments": {"default": None}, "sweep": sweep}))
    args = ("--configfile", "config/demo.yaml", "dev.yaml", "--keep-going", "--until", "rank_sweep")
    return workdir, snakemake(workdir, *args, check=False, timeout=1200)


def test_a_trial_whose_job_fails_leaves_the_others_finished_and_the_ranking_waits(broken):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the cuda trial would not fail")
    workdir, run = broken
    assert run.returncode != 0
    assert "Error in rule train_model" in run.stderr and "dev-cuda" in run.stderr
    assert read(workdir, "results/train/dev-cpu/metrics.json")["outcome"] == "ok"  # kept going
    assert not (workdir / "results/train/dev-cuda/metrics.json").exists()
    assert not (workdir / "results/sweep/dev/ranking.json").exists()
    assert (
        "train.device is 'cuda' but no CUDA device" in (workdir / "logs/train_model/dev-cuda.log").read_text()
    )
