"""Scheduler overhead of a sweep on Slurm: 8 tiny trials (4 learning rates x 2 widths, one epoch on
small synthetic data) trained to their ranking, once with Snakemake's local executor and once through
profiles/slurm on the one-node Slurm cluster of the tests (tests/slurm_cluster.py), with the same
concurrency (the node's CPUs; a trial takes 2).

    python bench/slurm_sweep.py            # as root: the test cluster runs slurmctld/slurmd as root

Prints, as JSON: each run's wall time (the data prepared beforehand, untimed), the trials' own
runtimes (their benchmark files: the training command alone), and per Slurm job its queue wait
(submit -> start) and elapsed time (start -> end, whole seconds, from slurmctld), so that the
overhead splits into each job's own start-up and end around the training (a Snakemake process
that parses the workflow inside the job) and the time between jobs (submission, the executor's
status polling). Timings on a shared machine vary from run to run: compare the parts, not only
the two wall times.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "tests")]

from conftest import copy_workflow  # noqa: E402
from slurm_cluster import config_overrides, profile_shape, slurm_args, slurm_cluster  # noqa: E402

BIN = Path(sys.executable).parent
SWEEP = {
    "experiments": {"default": None},
    "dataset": {"source": "synthetic", "synthetic": {"train_per_class": 100, "test_per_class": 20}},
    "train": {"epochs": 1, "batch_size": 128},
    "sweep": {
        "name": "bench",
        "parameters": {"lr": [0.05, 0.1, 0.2, 0.4], "widths": [[8, 16, 32], [16, 32, 64]]},
    },
}
TRIALS = 8


def snakemake(workdir: Path, *args: str, env: dict[str, str]) -> float:
    """Run snakemake to completion; its wall time in seconds."""
    start = time.monotonic()
    proc = subprocess.run(
        [str(BIN / "snakemake"), "--cores", "2", "--configfile", "sweep.yaml", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if proc.returncode != 0:
        raise SystemExit(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return time.monotonic() - start


def prepared(base: Path, name: str, env: dict[str, str]) -> Path:
    workdir = copy_workflow(base / name)
    (workdir / "sweep.yaml").write_text(yaml.safe_dump(SWEEP))
    snakemake(workdir, "--until", "prepare_dataset", env=env)  # not timed: the same for both
    return workdir


def trial_runtimes(workdir: Path) -> dict[str, float]:
    """Trial -> its training command's seconds, as its benchmark file measured them."""
    seconds = {}
    for path in (workdir / "benchmarks/train_model").glob("bench-*.tsv"):
        header, row = path.read_text().splitlines()[:2]
        seconds[path.stem] = float(dict(zip(header.split("\t"), row.split("\t"), strict=False))["s"])
    assert len(seconds) == TRIALS, seconds
    return seconds


def slurm_times(cluster, job_ids: dict[str, str]) -> dict[str, dict[str, float]]:
    """Trial -> its Slurm job's queue wait and elapsed time (whole seconds, from slurmctld)."""

    def at(text: str) -> float:
        return datetime.fromisoformat(text).timestamp()

    times = {}
    for trial, job_id in job_ids.items():
        job = cluster.job_details(job_id)
        times[trial] = {
            "queued_s": at(job["StartTime"]) - at(job["SubmitTime"]),
            "elapsed_s": at(job["EndTime"]) - at(job["StartTime"]),
        }
    return times


def summary(values: list[float]) -> dict[str, float]:
    return {
        "mean": round(statistics.fmean(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="cifarflow-slurm-sweep-"))
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    env.pop("MLFLOW_TRACKING_URI", None)

    local = prepared(base, "local", env)
    local_wall = snakemake(local, "--until", "rank_sweep", env=env)

    shape = profile_shape(ROOT / "profiles" / "slurm")
    (base / "slurm-cluster").mkdir()
    with slurm_cluster(base / "slurm-cluster", **shape) as cluster:
        cluster_env = dict(cluster.env, PATH=f"{BIN}{os.pathsep}{cluster.env['PATH']}")
        on_slurm = prepared(base, "slurm", cluster_env)
        before = set(cluster.jobs())
        slurm_wall = snakemake(
            on_slurm, *slurm_args(cluster), *config_overrides(), "--until", "rank_sweep", env=cluster_env
        )
        trials = {
            job["comment"].removeprefix("rule_train_model_wildcards_"): job_id
            for job_id, job in cluster.jobs().items()
            if job_id not in before and job["comment"].startswith("rule_train_model_")
        }
        assert len(trials) == TRIALS, cluster.jobs()  # one Slurm job per trial
        jobs = slurm_times(cluster, trials)
        cpus = cluster.cpus

    local_trials, slurm_trials = trial_runtimes(local), trial_runtimes(on_slurm)
    result = {
        "trials": TRIALS,
        "node_cpus": cpus,
        "local": {"wall_s": round(local_wall, 1), "trial_runtime_s": summary(list(local_trials.values()))},
        "slurm": {
            "wall_s": round(slurm_wall, 1),
            "trial_runtime_s": summary(list(slurm_trials.values())),
            "job_queued_s": summary([j["queued_s"] for j in jobs.values()]),
            "job_elapsed_s": summary([j["elapsed_s"] for j in jobs.values()]),
            # the job's own start-up and end: a Snakemake process in the job, around the training
            "job_around_training_s": summary([jobs[t]["elapsed_s"] - slurm_trials[t] for t in jobs]),
        },
        # with one trial at a time (a trial takes 2 CPUs): the wall time outside the trials' commands
        # (local) or outside their Slurm jobs (Slurm): start-up, submission, status polling, ranking
        "local_outside_trials_s": round(local_wall - sum(local_trials.values()), 1),
        "slurm_outside_jobs_s": round(slurm_wall - sum(j["elapsed_s"] for j in jobs.values()), 1),
        "overhead_s": round(slurm_wall - local_wall, 1),
        "overhead_per_trial_s": round((slurm_wall - local_wall) / TRIALS, 1),
        "workdir": str(base),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
