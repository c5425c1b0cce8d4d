"""config/sweep-demo.yaml through the real snakemake CLI: four trials train by successive halving
(rungs of 1, 2 and 4 epochs, eta 2), the one with an absurd learning rate diverges and is listed as
such while the others carry on, the best two of rung 0 go on to rung 1 and its best finishes; that
trial alone is exported, built into one Podman image, evaluated as served and registered; the
report's Sweep section (with the parallel coordinates and the rung chart) and MLflow (each rung a
step, each stopped trial with its rung) show all four. A trial whose job fails outright (not a training
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
# What no test here looks at, made small: the demo's 100 latency requests, 300 robustness images and
# 100 test images a class. The training data stays the demo's (the trials' dynamics, the divergence
# at epoch 1 included, are what this module is about); the min_accuracy gate still applies.
LIGHT = {
    "dataset": {"synthetic": {"test_per_class": 50}},
    "evaluate": {"latency_requests": 10},
    "robustness": {"images": 50},
}
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
    (workdir / "local.yaml").write_text(yaml.safe_dump({"serving": {**podman, "image": REPOSITORY}, **LIGHT}))
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
        "train_rung": 6,  # four trials at rung 0, two at rung 1
        "promote_rung": 2,
        "train_model": 4,  # the winner's last rung, and the record of each stopped trial
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
    assert [row["trial"] for row in finished] == [ranking["trials"][0]["trial"]]  # halving: one finishes
    assert [row["rank"] for row in finished] == [1]
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
    assert diverged["reason"] in (workdir / f"logs/train_rung/{DIVERGED}-rung0.log").read_text()
    assert diverged["reason"] in (workdir / f"logs/train_model/{DIVERGED}.log").read_text()
    assert "training diverged" in (workdir / "logs/rank_sweep/demo.log").read_text()
    summary = read(workdir, "results/sweep/demo/metrics.json")
    assert (summary["trials"], summary["trials_finished"], summary["trials_stopped"]) == (4, 1, 3)
    assert summary["trial_epochs"] == 4 + 2 + 1 + 0  # against 16 for the four trained to the end


def test_halving_promotes_the_best_half_of_each_rung_and_the_survivor_resumes_to_the_end(swept):
    workdir, run, _ = swept
    first = read(workdir, "results/sweep/demo/rung0/decision.json")
    second = read(workdir, "results/sweep/demo/rung1/decision.json")
    assert (first["entered"], first["keep"], first["epochs"], first["next_epochs"]) == (4, 2, 1, 2)
    assert (second["entered"], second["keep"], second["epochs"], second["next_epochs"]) == (2, 1, 2, 4)
    assert DIVERGED not in first["promoted"] and sorted(r["trial"] for r in second["trials"]) == sorted(
        first["promoted"]
    )
    # promoted: the best by validation accuracy at the rung's end
    for decision in (first, second):
        ranked = [row for row in decision["trials"] if row["outcome"] == "ok"]
        assert decision["promoted"] == [row["trial"] for row in ranked[: decision["keep"]]]
        assert [row["val_accuracy"] for row in ranked] == sorted(
            (row["val_accuracy"] for row in ranked), reverse=True
        )
        for row in ranked:  # the rung's figures are its job's own
            rung = read(workdir, f"results/train/{row['trial']}/rung{decision['rung']}/metrics.json")
            assert rung["val_accuracy"] == row["val_accuracy"] and rung["epochs"] == decision["epochs"]
    ranking = read(workdir, "results/sweep/demo/ranking.json")
    (best,) = second["promoted"]
    assert ranking["promoted"] == [best] and ranking["rungs"] == [1, 2, 4]
    # the survivor resumed each rung from the one before, and its last job ran epochs 3 and 4 only
    assert "resuming after epoch 1" in (workdir / f"logs/train_rung/{best}-rung1.log").read_text()
    final_log = (workdir / f"logs/train_model/{best}.log").read_text()
    assert "resuming after epoch 2" in final_log and "epoch 3/4" in final_log and "epoch 1/4" not in final_log
    trained = read(workdir, f"results/train/{best}/metrics.json")
    assert [row["epoch"] for row in trained["history"]] == [1, 2, 3, 4]
    assert (
        trained["history"][0]["val_accuracy"]
        == read(workdir, f"results/train/{best}/rung0/metrics.json")["val_accuracy"]
    )
    assert not (workdir / f"results/train/{best}/resume.pt").exists()
    # a trial stopped after rung 0 records it, with its accuracy there, and is never trained further
    (stopped,) = [t for t in TRIALS if t not in first["promoted"] and t != DIVERGED]
    record = read(workdir, f"results/train/{stopped}/metrics.json")
    assert (record["outcome"], record["stopped_at_rung"], record["epochs"]) == ("stopped", 0, 1)
    assert record["reason"].startswith("stopped by successive halving after rung 0 (1 epoch)")
    assert not (workdir / f"results/train/{stopped}/rung1").exists()
    assert not (workdir / f"results/train/{stopped}/resume.pt").exists()


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
    assert ranked.data.metrics["trials_stopped"] == 3 and ranked.data.metrics["best_val_accuracy"] >= 0.9
    # halving: each rung is a step of the trial's val_accuracy (its rung jobs' runs), and a stopped
    # trial's run carries the rung where it stopped
    client = MlflowClient(sqlite_uri(workdir))
    second = read(workdir, "results/sweep/demo/rung1/decision.json")
    rungs = {r.info.run_name: r for r in runs.children if r.info.run_name.startswith("train_rung/")}
    assert len(rungs) == 6
    for trial in second["promoted"]:
        (run,) = [
            r
            for r in rungs.values()
            if r.data.tags["sweep.trial"] == trial and '"rung": "1"' in r.data.tags["snakemake.wildcards"]
        ]
        steps = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_accuracy")}
        assert (
            sorted(steps) == [0, 1]
            and steps[1] == read(workdir, f"results/train/{trial}/rung1/metrics.json")["val_accuracy"]
        )
    for name, run in trained.items():
        if run.data.tags["outcome"] == "stopped":
            assert run.data.metrics["stopped_at_rung"] in (0, 1)
        else:
            assert name == best or run.data.metrics["stopped_at_rung"] == 0  # the diverged one
    decided = [r for r in runs.children if r.info.run_name.startswith("promote_rung/")]
    assert sorted(r.data.metrics["promoted"] for r in decided) == [1, 2]


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
        ("every trial", "coordinates.png"): True,
        ("rungs", "rungs.png"): True,
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
