"""profiles/slurm on a real Slurm cluster (tests/slurm_cluster.py starts munged, slurmctld and slurmd
here): the offline demo submitted job by job with sbatch; a job that Slurm cancels fails the run
with its Slurm log named; the rerun resumes without redoing finished jobs and retries a job that
Slurm cancels; every job's placement comes from the profile; only a CUDA recipe's training asks
for a GPU and the GPU partition; the results equal a local run's.

The profile runs unedited, with the flags this cluster needs (below). Its Apptainer setting stays
on but does nothing here: the test empties config container.image (no Apptainer on Debian 12), so
the jobs use the venv they inherit, as on a cluster where the project is installed on the shared
filesystem. Rules in the pipeline image under --use-singularity: tests/test_workflow_containers.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import onnx
import pytest
from conftest import copy_workflow
from onnx import numpy_helper
from slurm_cluster import BIN, DEMO, SlurmRun, config_overrides, slurm_args
from test_mlflow_hook import runs_of, sqlite_uri
from test_training import without_timings

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]


@pytest.fixture(scope="module")
def local_run(demo_run) -> Path:
    """The demo to export, run locally: the session's run (conftest.demo_run), only read here."""
    return demo_run


def test_a_job_cancelled_by_slurm_fails_the_run_and_names_its_slurm_log(slurm_runs):
    run, job_id = slurm_runs.failed, slurm_runs.cancelled_train
    assert run.returncode != 0, run.output[-4000:]
    assert f"SLURM-job '{job_id}' failed, SLURM status is: 'CANCELLED'" in run.output, run.output[-4000:]
    slurm_log = slurm_runs.workdir / ".snakemake/slurm_logs/rule_train_model/default" / f"{job_id}.log"
    assert str(slurm_log) in run.output  # the error's "log:" line names the Slurm log, next to the rule's log
    assert f"JOB {job_id} ON " in slurm_log.read_text() and "CANCELLED" in slurm_log.read_text()
    assert "Error in rule train_model" in run.output
    # finished work stays; the cancelled training left its last epoch's state, not its outputs
    left = slurm_runs.after_failure
    assert left["meta_mtime"] is not None and left["resume"] and not left["checkpoint"], left


def test_the_rerun_resumes_without_redoing_finished_jobs_and_retries_a_cancelled_job(slurm_runs):
    run = slurm_runs.rerun
    assert run.returncode == 0, run.output[-6000:]
    planned = run.jobs()
    assert planned.get("train_model") == 1 and planned.get("export_onnx") == 1, planned
    assert "prepare_dataset" not in planned, planned
    (meta,) = (slurm_runs.workdir / "results" / "data").glob("*/meta.json")
    assert meta.stat().st_mtime_ns == slurm_runs.after_failure["meta_mtime"]
    assert "resuming after epoch" in (slurm_runs.workdir / "logs/train_model/default.log").read_text()
    # export_onnx, cancelled once, was resubmitted by the profile's retries and finished
    assert f"SLURM-job '{slurm_runs.cancelled_export}' failed, SLURM status is: 'CANCELLED'" in run.output
    assert "Trying to restart job" in run.output
    assert (slurm_runs.workdir / "results/export/default/model.onnx").exists()


def test_every_job_went_through_sbatch_with_the_profiles_resources(slurm_runs, slurm_profile_cluster):
    cluster = slurm_profile_cluster
    jobs = cluster.jobs()
    cancelled = {slurm_runs.cancelled_train, slurm_runs.cancelled_export}
    by_rule: dict[str, list[str]] = {}
    for run in (slurm_runs.failed, slurm_runs.rerun):
        submitted = run.submitted()
        assert submitted, run.output[-4000:]
        for job_id, slurm_log in submitted.items():
            job = jobs[job_id]  # slurmctld knows every id snakemake printed
            assert job["name"] == run.slurm_run_id()  # sbatch --job-name <this run's id>
            assert job["state"] == ("CANCELLED" if job_id in cancelled else "COMPLETED"), (job_id, job)
            rule = re.match(r"rule_(.+?)_wildcards_", job["comment"]).group(1)
            by_rule.setdefault(rule, []).append(job_id)
            assert slurm_log.exists(), slurm_log  # --slurm-keep-successful-logs
    assert {"prepare_dataset", "train_model", "export_onnx"} <= set(by_rule), by_rule

    def details(rule: str, index: int = -1) -> dict[str, str]:
        return cluster.job_details(by_rule[rule][index])

    # placement and sizes from profiles/slurm and the rules' resources
    assert details("prepare_dataset")["Partition"] == "cpu"
    assert details("prepare_dataset")["MinMemoryNode"] == "4000M"
    train = details("train_model")
    # the demo recipe trains on device auto: no GPU asked for, so the CPU partition
    assert train["Partition"] == "cpu" and "TresPerJob" not in train, train
    assert train["MinMemoryNode"] == "8000M" and train["TimeLimit"] == "02:00:00", train
    assert details("evaluate_served_model")["Features"] == "container"  # where an engine is
    assert details("export_onnx", 0)["MinMemoryNode"] == "4000M"  # the cancelled first attempt
    assert details("export_onnx", -1)["MinMemoryNode"] == "8000M"  # the retry asks for twice as much
    assert by_rule["export_onnx"][0] == slurm_runs.cancelled_export and len(by_rule["export_onnx"]) == 2


def test_results_equal_a_local_run(slurm_runs, local_run):
    on_slurm, local = slurm_runs.workdir, local_run
    (meta,) = (local / "results" / "data").glob("*/meta.json")
    relative = meta.relative_to(local)
    # meta.json holds the sha256 of every array
    assert json.loads((on_slurm / relative).read_text()) == json.loads(meta.read_text())

    def metrics(workdir: Path, stage: str) -> dict:
        return json.loads((workdir / "results" / stage / "default" / "metrics.json").read_text())

    # same seed, same CPU, same threads: training is bit-identical (a resumed run included)
    assert without_timings(metrics(on_slurm, "train")) == without_timings(metrics(local, "train"))
    # model_bytes aside: torch.export writes each node's Python stack trace, absolute paths of the
    # working directory included, into the ONNX file, so its size follows the directory's name.
    unequal = {"latency_ms_p50", "latency_ms_p99", "throughput_images_per_second", "model_bytes"}
    exported = {k: v for k, v in metrics(on_slurm, "export").items() if k not in unequal}
    assert exported == {k: v for k, v in metrics(local, "export").items() if k not in unequal}
    operators, weights = graph(on_slurm / "results/export/default/model.onnx")
    assert operators and weights  # not vacuous: the demo net has tens of thousands of weights
    assert (operators, weights) == graph(local / "results/export/default/model.onnx")


def graph(path: Path) -> tuple[list[str], dict[str, bytes]]:
    """An ONNX graph's operators in order and its weights, byte for byte."""
    model = onnx.load(path)
    weights = {i.name: numpy_helper.to_array(i).tobytes() for i in model.graph.initializer}
    return [node.op_type for node in model.graph.node], weights


def test_mlflow_logged_the_slurm_jobs_from_the_main_process(slurm_runs):
    runs = runs_of(sqlite_uri(slurm_runs.workdir))
    assert len(runs.parents) == 2  # the failed run and the rerun
    train = [r for r in runs.children if r.info.run_name == "train_model/experiment=default"]
    assert [r.info.status for r in train] == ["FAILED", "FINISHED"]
    trained = json.loads((slurm_runs.workdir / "results/train/default/metrics.json").read_text())
    assert train[-1].data.metrics["test_accuracy"] == trained["test_accuracy"]


def test_only_a_cuda_recipe_asks_for_a_gpu_and_the_gpu_partition(slurm_profile_cluster, tmp_path):
    """Two experiments, one per device: each training job asks Slurm for what its recipe trains on.
    This cluster's GPU is a GRES with no device behind it, so the requests are read from slurmctld
    (scontrol) while the jobs are queued or running; then the run is interrupted (Ctrl-C), which
    cancels its jobs: a training on `cuda` could only fail here."""
    cluster = slurm_profile_cluster
    workdir = copy_workflow(tmp_path / "wf")
    env = dict(cluster.env, PATH=f"{BIN}{os.pathsep}{cluster.env['PATH']}")
    devices = {"oncpu": "cpu", "oncuda": "cuda"}
    experiments = {name: {"device": device} for name, device in devices.items()}
    overrides = config_overrides()
    targets = [f"results/train/{name}/model.pt" for name in devices]
    args = (*slurm_args(cluster), *DEMO, "--retries", "0", *overrides, f"experiments={experiments!r}")
    run = SlurmRun(workdir, "devices", (*targets, *args), env)  # targets first: --config takes what follows
    try:
        comments = {f"rule_train_model_wildcards_{name}": name for name in devices}
        deadline = time.monotonic() + 180
        while True:
            found = {comments[j["comment"]]: i for i, j in cluster.jobs().items() if j["comment"] in comments}
            if len(found) == len(devices):
                break
            ended = run.proc.poll() is not None
            assert not ended, f"snakemake ended before both trainings were submitted:\n{run.output[-6000:]}"
            assert time.monotonic() < deadline, f"not both submitted: {cluster.jobs()}\n{run.output[-6000:]}"
            time.sleep(0.5)
        requests = {name: cluster.job_details(job_id) for name, job_id in found.items()}
    finally:
        run.proc.send_signal(signal.SIGINT)  # snakemake cancels the jobs it submitted
        run.wait(120)
        cluster.cancel_all(name=run.slurm_run_id())  # not the jobs of another run

    def tres(job: dict[str, str]) -> str:
        """Every trackable resource the job asks for: TRES (cpu, mem, node), TresPerJob (--gpus), ..."""
        return " ".join(f"{key}={value}" for key, value in job.items() if "tres" in key.lower())

    cpu, cuda = requests["oncpu"], requests["oncuda"]
    assert cpu["Partition"] == "cpu", cpu
    assert "TresPerJob" not in cpu and "gpu" not in tres(cpu).lower(), tres(cpu)
    assert cuda["Partition"] == "gpu", cuda
    assert re.fullmatch(r"gres:gpu(:\w+)?:1", cuda["TresPerJob"]), tres(cuda)  # sbatch --gpus[=<model>:]1
    # both are what the profile and the rule ask for otherwise
    assert cpu["MinMemoryNode"] == cuda["MinMemoryNode"] == "8000M", requests
