"""config/sweep-demo.yaml through profiles/slurm on the one-node Slurm cluster (tests/slurm_cluster.py):
a sweep by successive halving, each trial a Slurm job per rung (train_rung) and one for its end
(train_model: the rest of the schedule, or the record of where it stopped), the diverging one among
them, and the sweep ends as it does locally: ranked by validation accuracy, the best alone exported,
served and registered. The rungs' decisions and the ranking (checkpoints) and the report's rules
are local rules: they never become Slurm jobs. The run also finds train/val label issues from two
cross-validation folds (tests/slurm_cluster.py FOLDS): each fold a Slurm job, like a trial."""

from __future__ import annotations

import json

import pytest
from test_mlflow_hook import runs_of, sqlite_uri

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]
TRIALS = ["demo-lr0.03", "demo-lr0.3", "demo-lr1.0", "demo-lr10000.0"]


@pytest.fixture(scope="module")
def on_slurm(sweep_on_slurm, slurm_profile_cluster):
    run = sweep_on_slurm.wait(2400)
    print(f"sweep on Slurm: {run.seconds:.0f} s; Slurm jobs: {slurm_profile_cluster.jobs()}")
    return run.workdir, run, slurm_profile_cluster.jobs()


def test_each_trial_is_a_slurm_job_of_its_own(on_slurm):
    workdir, run, _ = on_slurm
    assert run.returncode == 0, run.output[-6000:]
    # job id -> (rule, wildcards), from each job's Slurm log: .../slurm_logs/rule_<rule>/<wildcards>/<id>.log
    # (the logs outlast slurmctld, which forgets a finished job after MinJobAge)
    jobs = {
        job_id: (log.parent.parent.name.removeprefix("rule_"), log.parent.name)
        for job_id, log in run.submitted().items()
    }
    trials = sorted(wildcards for rule, wildcards in jobs.values() if rule == "train_model")
    assert trials == sorted(TRIALS), jobs  # one job per trial, the diverging one included
    # one job per trial per rung: all four at rung 0, at rung 1 the two that rung 0 promoted
    promoted = json.loads((workdir / "results/sweep/demo/rung0/decision.json").read_text())["promoted"]
    rungs = sorted(wildcards for rule, wildcards in jobs.values() if rule == "train_rung")
    assert len(promoted) == 2 and rungs == sorted([f"{t}_0" for t in TRIALS] + [f"{t}_1" for t in promoted])
    for job_id, log in run.submitted().items():
        assert "1 of 1 steps (100%) done" in log.read_text(), (jobs[job_id], log.read_text()[-2000:])
    # the ranking and the report are local rules, in the main process; after the ranking the
    # promoted trial alone goes on: one export, one robustness evaluation, one evaluation as served
    ranking = json.loads((workdir / "results/sweep/demo/ranking.json").read_text())
    (best,) = ranking["promoted"]
    dataset = next((workdir / "results/data").iterdir()).name
    later = sorted(job for job in jobs.values() if job[0] not in ("train_model", "train_rung"))
    # the label-issue folds (audit.label_issues.folds 2) are Slurm jobs of their own, and their join
    folds = [("label_fold", f"{dataset}_{fold}") for fold in range(2)]
    expected = [("prepare_dataset", dataset), ("audit_dataset", dataset), *folds]
    expected.append(("find_label_issues", dataset))
    shipped = [("export_onnx", best), ("evaluate_robustness", best), ("evaluate_served_model", best)]
    assert later == sorted([*expected, *shipped])
    issues = json.loads((workdir / f"results/audit/{dataset}/label_issues/metrics.json").read_text())
    assert issues["label_issue_folds"] == 2
    assert {"train_label_issue_count", "val_label_issue_count"} <= set(issues), issues
    for fold in range(2):  # every file a fold's training writes is an output the rule declares
        folder = workdir / f"results/audit/{dataset}/label_issues/folds/{fold}"
        fold_metrics = json.loads((folder / "metrics.json").read_text())
        history = (folder / "history.csv").read_text().splitlines()
        assert len(history) == 1 + fold_metrics["epochs"], history
        assert sorted(p.name for p in folder.iterdir()) == [
            "held_out.parquet",
            "history.csv",
            "metrics.json",
            "tensorboard",
        ]
    for stage in ("export", "robustness", "evaluate", "register"):
        assert [p.name for p in (workdir / "results" / stage).glob("[!.]*")] == [best], stage


def test_the_ranking_lists_the_diverged_trial_and_mlflow_tags_every_trial(on_slurm):
    workdir, _, _ = on_slurm
    ranking = json.loads((workdir / "results/sweep/demo/ranking.json").read_text())
    outcomes = {row["trial"]: row["outcome"] for row in ranking["trials"]}
    (best,) = ranking["promoted"]
    assert outcomes == {
        **{trial: "stopped" for trial in TRIALS if trial != best},
        best: "ok",
        "demo-lr10000.0": "diverged",
    }
    assert ranking["trials"][0]["promoted"] and ranking["trials"][0]["val_accuracy"] >= 0.9
    runs = runs_of(sqlite_uri(workdir))
    trained = [r for r in runs.children if r.info.run_name.startswith("train_model/")]
    assert sorted(r.data.tags["sweep.trial"] for r in trained) == TRIALS
    assert {r.data.tags["sweep.trial"]: r.data.tags["outcome"] for r in trained} == outcomes
