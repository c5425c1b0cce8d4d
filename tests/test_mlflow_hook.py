"""The MLflow hook (scripts/snakemake_logger_plugin_mlflow) against real MLflow stores.

Real `snakemake` runs log to a SQLite store in the test's working directory (the default the
profile gives), to a real `mlflow server` on loopback read back through its REST API, and to
stores that cannot be used. The helpers at the top (`runs_of`, `Runs`, `artifacts_of`,
`metric_steps`, `DATA_STAGE`) are meant to be reused by other tests (e.g. training's).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from cifarflow import ports
from conftest import ROOT, make_image_tree, require_system_part, snakemake, write_yaml
from mlflow import MlflowClient
from mlflow.entities import Run
from snakemake_interface_logger_plugins.common import LogEvent
from snakemake_logger_plugin_mlflow import LogHandler, LogHandlerSettings
from snakemake_logger_plugin_mlflow.content import (
    VERSIONS_MARKER,
    versions_from_log,
)
from snakemake_logger_plugin_mlflow.store import store_uri

BIN = Path(sys.executable).parent
# The data stage of the offline demo only: these tests must not depend on later stages.
DATA_STAGE = ("--configfile", "config/demo.yaml", "--until", "prepare_dataset")


# ---- helpers ---------------------------------------------------------------------------------


def sqlite_uri(workdir: Path) -> str:
    """The store a plain `snakemake` run in `workdir` logs to (no MLFLOW_TRACKING_URI set)."""
    return f"sqlite:///{workdir / 'mlflow.db'}"


@dataclass
class Runs:
    """The runs of a store: invocations (parents) and jobs (children, tagged mlflow.parentRunId)."""

    parents: list[Run]
    children: list[Run]

    @property
    def parent(self) -> Run:
        assert len(self.parents) == 1, [r.info.run_name for r in self.parents]
        return self.parents[0]

    def children_of(self, parent: Run) -> list[Run]:
        return [r for r in self.children if r.data.tags["mlflow.parentRunId"] == parent.info.run_id]

    def named(self, name: str) -> Run:
        (run,) = [r for r in self.children if r.info.run_name == name]
        return run

    def names(self) -> list[str]:
        return sorted(r.info.run_name for r in self.children)


def runs_of(tracking_uri: str, experiment: str | None = None) -> Runs:
    """All runs of one experiment (default: every experiment) of a store, oldest first."""
    client = MlflowClient(tracking_uri)
    if experiment is None:
        ids = [e.experiment_id for e in client.search_experiments()]
    else:
        found = client.get_experiment_by_name(experiment)
        ids = [found.experiment_id] if found else []
    runs = client.search_runs(ids, max_results=10_000, order_by=["attributes.start_time ASC"]) if ids else []
    return Runs(
        parents=[r for r in runs if "mlflow.parentRunId" not in r.data.tags],
        children=[r for r in runs if "mlflow.parentRunId" in r.data.tags],
    )


def artifacts_of(tracking_uri: str, run: Run, path: str | None = None) -> set[str]:
    """Every artifact path of a run (recursively)."""
    client, found = MlflowClient(tracking_uri), set()
    for info in client.list_artifacts(run.info.run_id, path):
        found |= artifacts_of(tracking_uri, run, info.path) if info.is_dir else {info.path}
    return found


def metric_steps(tracking_uri: str, run: Run, key: str) -> list[tuple[int, float]]:
    """A metric's history as (step, value), by step."""
    history = MlflowClient(tracking_uri).get_metric_history(run.info.run_id, key)
    return sorted((m.step, m.value) for m in history)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dataset_dir(workdir: Path) -> Path:
    (meta,) = (workdir / "results" / "data").glob("*/meta.json")
    return meta.parent


# ---- a real workflow run ---------------------------------------------------------------------


@pytest.mark.workflow
def test_demo_run_logs_one_parent_and_a_child_per_job(workflow):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run(["git", "init", "-q"], cwd=workflow, check=True)
    subprocess.run(["git", "add", "-A"], cwd=workflow, check=True)
    subprocess.run([*git, "commit", "-qm", "workflow"], cwd=workflow, check=True)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=workflow, capture_output=True, text=True, check=True
    ).stdout.strip()
    with open(workflow / "Snakefile", "a") as snakefile:
        snakefile.write("# a local edit: the run is from a dirty tree\n")

    snakemake(workflow, *DATA_STAGE)
    uri = sqlite_uri(workflow)
    runs = runs_of(uri)
    parent = runs.parent
    assert parent.info.status == "FINISHED"
    experiment = MlflowClient(uri).get_experiment(parent.info.experiment_id)
    assert experiment.name == "cifar10"  # config's mlflow.experiment
    tags = parent.data.tags
    assert "--until prepare_dataset" in tags["snakemake.command"]
    assert tags["snakemake.version"].startswith("9.") and tags["host"] == os.uname().nodename
    assert tags["git.commit"] == commit and tags["git.dirty"] == "true"
    config = json.loads(
        Path(MlflowClient(uri).download_artifacts(parent.info.run_id, "config.json")).read_text()
    )
    assert (
        tags["snakemake.config_md5"] == hashlib.md5(json.dumps(config, sort_keys=True).encode()).hexdigest()
    )
    assert parent.data.params["config.dataset.source"] == "synthetic"
    assert parent.data.metrics["jobs_finished"] == 1 and parent.data.metrics["jobs_failed"] == 0

    # One child per job that ran; every rule has a log, so the logs written are the jobs run.
    data = dataset_dir(workflow)
    logs = sorted(str(p.relative_to(workflow)) for p in (workflow / "logs").rglob("*.log"))
    assert runs.names() == [f"prepare_dataset/dataset={data.name}"] and len(logs) == 1
    assert runs.children_of(parent) == runs.children
    child = runs.named(f"prepare_dataset/dataset={data.name}")
    assert child.info.status == "FINISHED"
    assert child.data.tags["snakemake.rule"] == "prepare_dataset"
    # the versions the job ran with, from its log's record
    assert child.data.tags["version.numpy"] == importlib.metadata.version("numpy")
    assert child.data.tags["version.python"] == platform.python_version()
    assert child.data.tags["version.image"] == "none (the host's environment)"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert json.loads(child.data.tags["snakemake.wildcards"]) == {"dataset": data.name}
    params = child.data.params
    assert params["wildcards.dataset"] == data.name and params["threads"] == "2"
    assert params["params.settings.source"] == "synthetic"  # a JSON param, flattened
    assert params["params.settings.synthetic.train_per_class"] == "500"
    assert params["params.outdir"] == f"results/data/{data.name}"
    metrics = child.data.metrics
    assert metrics["benchmark.runtime_s"] > 0 and metrics["benchmark.max_rss_mb"] > 0
    assert "benchmark.cpu_time_s" in metrics
    written = json.loads((data / "metrics.json").read_text())
    assert metrics["train_images"] == written["train_images"] == 4500
    assert metrics["images_per_second"] == written["images_per_second"]
    for name in ("meta.json", "train_images.npy", "metrics.json"):
        relative = f"results/data/{data.name}/{name}"
        assert child.data.tags[f"output:{relative}"] == sha256(workflow / relative)
    assert artifacts_of(uri, child) == {
        logs[0],
        f"results/data/{data.name}/metrics.json",
        f"benchmarks/prepare_dataset/{data.name}.tsv",
    }
    logged_log = MlflowClient(uri).download_artifacts(child.info.run_id, logs[0])
    assert Path(logged_log).read_text() == (workflow / logs[0]).read_text()

    again = snakemake(workflow, *DATA_STAGE)
    assert "Finished jobid" not in again.stdout + again.stderr
    after = runs_of(uri)
    assert len(after.children) == 1 and len(after.parents) == 1  # nothing ran, nothing logged


@pytest.mark.workflow
def test_failing_job_gives_failed_child_and_failed_parent(workflow, tmp_path):
    make_image_tree(tmp_path / "imgs", "png")
    (tmp_path / "imgs" / "test" / "cat" / "0001.png").write_bytes(b"not a png")
    write_yaml(workflow / "bad.yaml", f"dataset:\n  source: folder\n  path: {tmp_path / 'imgs'}\n")
    run = snakemake(workflow, "--configfile", "bad.yaml", "--until", "prepare_dataset", check=False)
    assert run.returncode != 0
    uri = sqlite_uri(workflow)
    runs = runs_of(uri)
    assert runs.parent.info.status == "FAILED"
    assert "did not complete successfully" in runs.parent.data.tags["snakemake.error"]
    (child,) = runs.children
    assert child.info.run_name.startswith("prepare_dataset/dataset=folder-")
    assert child.info.status == "FAILED"
    assert child.data.params["params.settings.source"] == "folder"  # params although no benchmark
    (log,) = artifacts_of(uri, child)
    assert log.startswith("logs/prepare_dataset/")
    logged = Path(MlflowClient(uri).download_artifacts(child.info.run_id, log)).read_text()
    assert "test/cat/0001.png cannot be read as an image" in logged


@pytest.mark.workflow
def test_dry_run_and_lint_log_nothing(workflow):
    snakemake(workflow, *DATA_STAGE, "-n")
    snakemake(workflow, "--configfile", "config/demo.yaml", "--lint")
    assert not (workflow / "mlflow.db").exists() and not (workflow / "mlruns").exists()


# ---- a tracking server over HTTP -------------------------------------------------------------


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on a free loopback port (another one if that is taken before the server
    binds it); killed (its whole process group) at the end."""

    def start(chosen: list[int]) -> tuple[subprocess.Popen, str]:
        (port,) = chosen
        log = tmp_path / "server.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [
                    BIN / "mlflow",
                    "server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--workers",
                    "1",
                    "--backend-store-uri",
                    f"sqlite:///{tmp_path / 'server.db'}",
                    "--artifacts-destination",
                    str(tmp_path / "server-artifacts"),
                ],
                cwd=tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
                start_new_session=True,  # its own process group: uvicorn's worker goes with it
            )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90
            while True:
                if proc.poll() is not None:
                    output = log.read_text()
                    if ports.bind_failed(output):
                        raise ports.PortTaken(ports.bind_failure_line(output))
                    pytest.fail(f"mlflow server exited (code {proc.returncode}):\n{output[-3000:]}")
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                        # and it is this server that answers, not another process on the port
                        if response.status == 200 and ports.held([port], [proc.pid]):
                            return proc, url
                except OSError:
                    pass
                assert time.monotonic() < deadline, "mlflow server did not start in 90 s"
                time.sleep(0.25)
        except BaseException:
            stop_group(proc)
            raise

    proc, url = ports.start_on_free_ports(start, 1, what="mlflow server")
    try:
        yield url
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a server started in its own session and every process of its group (uvicorn's worker)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 15
    while True:  # no process of its group is left (uvicorn's worker included)
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("processes of the mlflow server outlived it")
        time.sleep(0.1)


def rest(url: str, endpoint: str, body: dict | None = None, **query) -> dict:
    """One MLflow REST call (POST with a JSON body, else GET with query parameters)."""
    address = f"{url}/api/2.0/mlflow/{endpoint}"
    if query:
        address += "?" + urllib.parse.urlencode(query)
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(address, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.workflow
def test_logs_to_a_tracking_server_over_http(workflow, mlflow_server):
    proc = snakemake(
        workflow,
        *DATA_STAGE,
        "--logger-mlflow-tracking-uri",
        mlflow_server,
        "--logger-mlflow-experiment",
        "http",
    )
    assert not (workflow / "mlflow.db").exists()  # everything went to the server

    experiment = rest(mlflow_server, "experiments/get-by-name", experiment_name="http")["experiment"]
    runs = rest(mlflow_server, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    tags = [{t["key"]: t["value"] for t in run["data"].get("tags", [])} for run in runs]
    parents = [(run, t) for run, t in zip(runs, tags, strict=True) if "mlflow.parentRunId" not in t]
    children = [(run, t) for run, t in zip(runs, tags, strict=True) if "mlflow.parentRunId" in t]
    assert len(parents) == 1 and len(children) == 1
    (parent, _), (child, child_tags) = parents[0], children[0]
    assert parent["info"]["status"] == "FINISHED" and child["info"]["status"] == "FINISHED"
    assert child_tags["mlflow.parentRunId"] == parent["info"]["run_id"]
    data = dataset_dir(workflow)
    assert child["info"]["run_name"] == f"prepare_dataset/dataset={data.name}"
    params = {p["key"]: p["value"] for p in child["data"]["params"]}
    assert params["params.settings.source"] == "synthetic"
    run_id = child["info"]["run_id"]
    history = rest(mlflow_server, "metrics/get-history", run_id=run_id, metric_key="train_images")
    assert [m["value"] for m in history["metrics"]] == [4500]
    listed = rest(mlflow_server, "artifacts/list", run_id=run_id, path="logs/prepare_dataset")
    assert [f["path"] for f in listed["files"]] == [f"logs/prepare_dataset/{data.name}.log"]
    query = urllib.parse.urlencode({"run_uuid": run_id, "path": f"logs/prepare_dataset/{data.name}.log"})
    with urllib.request.urlopen(f"{mlflow_server}/get-artifact?{query}", timeout=30) as response:
        assert (
            response.read().decode()
            == (workflow / "logs" / "prepare_dataset" / f"{data.name}.log").read_text()
        )

    # the experiment is a model-training one, and the link printed at the end opens MLflow's UI on
    # its runs table (parent and job runs), where a new user expects them
    assert (
        experiment["tags"]
        and {t["key"]: t["value"] for t in experiment["tags"]}["mlflow.experimentKind"]
        == "custom_model_development"
    )
    url = f"{mlflow_server}/#/experiments/{experiment['experiment_id']}?workflowType=machine_learning"
    assert f"its runs table: {url}" in proc.stdout + proc.stderr


def test_the_printed_link_opens_mlflow_ui_on_the_runs_table(mlflow_server, tmp_path, monkeypatch):
    """MLflow's own UI in headless Chromium: the link each invocation ends with shows the runs table
    with the invocation's run; the same experiment without workflowType shows MLflow 3.17's GenAI
    overview, which is why the link carries it."""
    from playwright.sync_api import sync_playwright
    from report_browser import ARGS, CHROMIUM
    from snakemake_logger_plugin_mlflow.uri import runs_table_url

    require_system_part("chromium")
    monkeypatch.chdir(tmp_path)
    Path("job.log").write_text("done\n")
    handler = LogHandler(
        SimpleNamespace(dryrun=False), LogHandlerSettings(tracking_uri=mlflow_server, experiment="ui")
    )
    job = dict(rule_name="train_model", jobid=1, input=[], output=[], log=["job.log"], wildcards={})
    events = [
        _event(LogEvent.WORKFLOW_STARTED, cmd="snakemake", config_md5="0" * 32, datetime="ui check"),
        _event(LogEvent.RUN_INFO, stats={"train_model": 1, "total": 1}),
        _event(LogEvent.JOB_INFO, **job),
        _event(LogEvent.JOB_FINISHED, job_id=1),
    ]
    replay(handler, events)
    experiment = MlflowClient(mlflow_server).get_experiment_by_name("ui")
    url = runs_table_url(mlflow_server, experiment.experiment_id)
    parent_name = "snakemake ui check"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url)
            page.get_by_text(parent_name).first.wait_for(timeout=60_000)
            assert page.get_by_role("columnheader", name="Run Name").count() >= 1
            page.goto(url.split("?")[0])
            page.get_by_text("No data available for the selected time range").first.wait_for(timeout=60_000)
            assert page.get_by_text(parent_name).count() == 0
        finally:
            browser.close()


# ---- a store that cannot be used -------------------------------------------------------------


@pytest.mark.workflow
def test_unreachable_store_warns_once_and_strict_fails(workflow):
    closed = f"http://127.0.0.1:{ports.pick()[0]}"  # nothing listens there
    run = snakemake(workflow, *DATA_STAGE, "--logger-mlflow-tracking-uri", closed)
    output = run.stdout + run.stderr
    assert output.count("MLflow tracking is off for this run") == 1
    assert f"the tracking store {closed} cannot be used (cannot connect: Connection refused)" in output
    assert "Not logged: this invocation's parent run and its 1 job(s)" in output
    assert (dataset_dir(workflow) / "meta.json").exists()  # the workflow finished its work
    assert not (workflow / "mlflow.db").exists()

    strict = snakemake(
        workflow,
        *DATA_STAGE,
        "--forcerun",
        "prepare_dataset",
        "--logger-mlflow-tracking-uri",
        closed,
        "--logger-mlflow-strict",
        check=False,
    )
    assert strict.returncode == 1
    assert f"Error: MLflow tracking store {closed} cannot be used" in strict.stderr
    assert "stops before running any job" in strict.stderr
    assert "Finished jobid" not in strict.stderr + strict.stdout and "Traceback" not in strict.stderr


# ---- parallel jobs, plots, directories, containers, retries: a purpose-built workflow --------

PARALLEL_SNAKEFILE = r"""
rule all:
    input:
        expand("out/{i}/metrics.json", i=range(8)),
        "out/tree",
        "out/flaky.txt",
        "out/boxed.txt",
        "out/consumed.txt",


rule consume:
    input:
        temp_file="out/made.tmp",
        metrics="out/0/metrics.json",
    output:
        "out/consumed.txt",
    log:
        "logs/consume.log",
    shell:
        "cat {input} > {output}; echo consumed > {log}"


rule make_temp:
    output:
        temp("out/made.tmp"),
    log:
        "logs/make_temp.log",
    shell:
        "echo temporary > {output}; echo made > {log}"


rule step:
    output:
        metrics="out/{i}/metrics.json",
        plot="out/{i}/curve.png",
    log:
        "logs/step/{i}.log",
    benchmark:
        "benchmarks/step/{i}.tsv"
    params:
        lr=lambda wildcards: 0.1 * (int(wildcards.i) + 1),
        recipe={"optimizer": {"name": "sgd", "momentum": 0.9}, "widths": [8, 16]},
        mlflow_tags=lambda wildcards: {"group": "steps", "step.i": int(wildcards.i), "step.widths": [8, 16]},
    resources:
        mem_mb=100,
    shell:
        "sleep 0.5; echo step {wildcards.i} > {log};"
        " printf '\\211PNG fake' > {output.plot};"
        " echo '{{\"score\": {wildcards.i}, \"note\": \"step {wildcards.i}\","
        " \"history\": [{{\"epoch\": 1, \"loss\": 2.0}},"
        " {{\"epoch\": 2, \"loss\": 1.5}}]}}' > {output.metrics}"


rule tree:
    output:
        directory("out/tree"),
    log:
        "logs/tree.log",
    shell:
        "mkdir -p {output}; echo x > {output}/a.txt; echo tree > {log}"


rule flaky:
    output:
        "out/flaky.txt",
    log:
        "logs/flaky.log",
    retries: 1
    shell:
        "if [ -e flaky.marker ]; then echo ok > {output}; echo second > {log};"
        " else touch flaky.marker; echo first attempt fails > {log}; exit 1; fi"


rule boxed:
    output:
        "out/boxed.txt",
    log:
        "logs/boxed.log",
    container:
        "docker://example.org/stand-in:1.0"
    shell:
        "echo boxed > {output}; echo boxed > {log}"
"""

# Stands in for apptainer (not installable here): "pulls" an empty image file and runs the
# command on the host. Enough for Snakemake to run a rule "in" a container; no isolation.
FAKE_APPTAINER = """#!/bin/sh
case "$1" in --version) echo "apptainer version 1.3.4"; exit 0;; pull) touch "$3"; exit 0;; esac
while [ $# -gt 1 ]; do [ "$1" = "-c" ] && exec bash -c "$2"; shift; done
exit 1
"""


@pytest.mark.workflow
def test_parallel_jobs_plots_directories_containers_and_retries(tmp_path):
    work = tmp_path / "par"
    work.mkdir()
    (work / "Snakefile").write_text(PARALLEL_SNAKEFILE)
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "apptainer").write_text(FAKE_APPTAINER)
    (fake / "apptainer").chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}")
    run = subprocess.run(
        [
            BIN / "snakemake",
            "--cores",
            "4",
            "--logger",
            "mlflow",
            "--benchmark-extended",
            "--sdm",
            "apptainer",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-6000:]
    assert "database is locked" not in run.stderr and "MLflow tracking" not in run.stderr
    uri = sqlite_uri(work)
    runs = runs_of(uri)
    assert runs.parent.info.status == "FINISHED"  # the retried job succeeded in the end
    expected = [f"step/i={i}" for i in range(8)] + ["boxed", "consume", "flaky", "flaky", "make_temp", "tree"]
    assert runs.names() == sorted(expected)  # `all` (no output, no log) is no job run
    starts = sorted(
        (r.info.start_time, r.info.end_time) for r in runs.children if r.info.run_name[:4] == "step"
    )
    assert any(b[0] < a[1] for a, b in zip(starts, starts[1:], strict=False))  # they did run in parallel
    for i in range(8):
        step = runs.named(f"step/i={i}")
        assert step.info.status == "FINISHED"
        assert step.data.params["params.lr"] == str(0.1 * (i + 1))
        assert step.data.params["params.recipe.optimizer.momentum"] == "0.9"
        assert step.data.params["params.recipe.widths"] == "[8, 16]"
        assert step.data.params["resources.mem_mb"] == "100"
        assert step.data.metrics["score"] == i and step.data.metrics["loss"] == 1.5
        # the mlflow_tags param: tags (lists as JSON), not params; metrics.json's text: a tag
        assert step.data.tags["group"] == "steps" and step.data.tags["step.i"] == str(i)
        assert step.data.tags["step.widths"] == "[8, 16]" and step.data.tags["note"] == f"step {i}"
        assert not any(key.startswith("params.mlflow_tags") for key in step.data.params)
        assert "note" not in step.data.metrics
        assert metric_steps(uri, step, "loss") == [(1, 2.0), (2, 1.5)]
        assert {f"out/{i}/curve.png", f"out/{i}/metrics.json", f"logs/step/{i}.log"} <= artifacts_of(
            uri, step
        )
    assert runs.named("tree").data.tags["output:out/tree"] == "not hashed: directory"
    consumed = runs.named("consume").data.tags  # lineage: what it read is what the producers wrote
    assert (
        consumed["input:out/0/metrics.json"] == runs.named("step/i=0").data.tags["output:out/0/metrics.json"]
    )
    assert consumed["input:out/made.tmp"] == hashlib.sha256(b"temporary\n").hexdigest()
    assert runs.named("make_temp").data.tags["output:out/made.tmp"] == consumed["input:out/made.tmp"]
    assert not (work / "out" / "made.tmp").exists()  # a temp() file, hashed before Snakemake removed it
    attempts = sorted(
        (r.info.status, r.data.tags.get("snakemake.error", ""))
        for r in runs.children
        if r.info.run_name == "flaky"
    )
    assert [status for status, _ in attempts] == ["FAILED", "FINISHED"]
    boxed = runs.named("boxed")
    assert boxed.data.tags["container.image"] == "docker://example.org/stand-in:1.0"
    assert "container.image" not in runs.named("tree").data.tags
    assert not any(key.startswith("params") for key in runs.named("boxed").data.params)  # it has none


# ---- one bad moment: a job's files, a store that goes away ---------------------------------

# Two jobs fail once and succeed on their retry (--retries 1); Snakemake removes a failed job's log
# before it runs the job again. `flaky` leaves its log for that; `vanishing` removes its own log
# before failing. `after` runs once both have succeeded.
RETRY_SNAKEFILE = r"""
rule all:
    input:
        "out/after.txt",


rule after:
    input:
        "out/flaky.txt",
        "out/vanishing.txt",
    output:
        "out/after.txt",
    log:
        "logs/after.log",
    shell:
        "cat {input} > {output}; echo after > {log}"


rule flaky:
    output:
        "out/flaky.txt",
    log:
        "logs/flaky.log",
    shell:
        "if [ -e flaky.marker ]; then echo attempt 2 succeeds > {log}; echo ok > {output};"
        " else touch flaky.marker; echo attempt 1 fails > {log}; exit 1; fi"


rule vanishing:
    output:
        "out/vanishing.txt",
    log:
        "logs/vanishing.log",
    shell:
        "if [ -e vanishing.marker ]; then echo attempt 2 succeeds > {log}; echo ok > {output};"
        " else touch vanishing.marker; echo attempt 1 > {log}; rm {log}; exit 1; fi"
"""


@pytest.mark.workflow
def test_a_retried_job_keeps_its_failed_log_and_tracking_goes_on(tmp_path, monkeypatch):
    work = tmp_path / "retry"
    work.mkdir()
    (work / "Snakefile").write_text(RETRY_SNAKEFILE)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # where the hook keeps its copies of job files
    # A new store: the hook's thread spends seconds creating its tables while the jobs fail and are
    # retried, so it reaches each failure only after Snakemake has removed (and rewritten) the log.
    run = snakemake(work, "--logger", "mlflow", "--retries", "1")
    output = run.stdout + run.stderr
    assert "MLflow tracking stopped" not in output and "MLflow tracking is off" not in output
    uri = sqlite_uri(work)
    runs = runs_of(uri)
    assert runs.parent.info.status == "FINISHED"
    assert runs.names() == ["after", "flaky", "flaky", "vanishing", "vanishing"]  # every job, every attempt
    assert runs.named("after").info.status == "FINISHED"
    assert runs.parent.data.metrics["jobs_failed"] == 2
    assert runs.parent.data.metrics["jobs_finished"] == 4  # `all` too
    for name in ("flaky", "vanishing"):
        attempts = {r.info.status: r for r in runs.children if r.info.run_name == name}
        assert sorted(attempts) == ["FAILED", "FINISHED"]
        logged = MlflowClient(uri).download_artifacts(attempts["FINISHED"].info.run_id, f"logs/{name}.log")
        assert Path(logged).read_text() == "attempt 2 succeeds\n"
    failed = next(r for r in runs.children if r.info.run_name == "flaky" and r.info.status == "FAILED")
    logged = MlflowClient(uri).download_artifacts(failed.info.run_id, "logs/flaky.log")
    assert Path(logged).read_text() == "attempt 1 fails\n"  # the attempt that failed, not its retry
    failed = next(r for r in runs.children if r.info.run_name == "vanishing" and r.info.status == "FAILED")
    assert failed.data.tags["hook.artifact:logs/vanishing.log"] == "not uploaded: no such file"
    assert artifacts_of(uri, failed) == set()
    assert not list((tmp_path / "tmp").iterdir())  # the hook's copies went with it


# ---- what the hook finds on the installed Snakemake, and what it says when it finds nothing ---

CONFIGURED_SNAKEFILE = r"""
configfile: "config.yaml"


rule all:
    input:
        "out/made.txt",


rule make:
    output:
        "out/made.txt",
    log:
        "logs/make.log",
    params:
        greeting="hello",
        recipe={"optimizer": "sgd"},
    container:
        "docker://example.org/stand-in:1.0"
    shell:
        "echo {params.greeting} > {output}; echo made > {log}"
"""


@pytest.mark.workflow
def test_the_installed_snakemake_gives_the_hook_its_config_and_jobs(tmp_path):
    """Snakemake's Workflow and Job objects are where the hook looks: the store and experiment come
    from the config (not the fallbacks), the job's params (no benchmark file) and container image
    from its Job object, and nothing was reported lost."""
    work = tmp_path / "configured"
    work.mkdir()
    (work / "Snakefile").write_text(CONFIGURED_SNAKEFILE)
    store = tmp_path / "elsewhere" / "store.db"
    write_yaml(
        work / "config.yaml", f"mlflow:\n  tracking_uri: sqlite:///{store}\n  experiment: from-config\n"
    )
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "apptainer").write_text(FAKE_APPTAINER)
    (fake / "apptainer").chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}")
    run = subprocess.run(
        [BIN / "snakemake", "--cores", "1", "--logger", "mlflow", "--sdm", "apptainer"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-6000:]
    assert "object was not found" not in run.stdout + run.stderr
    assert not (work / "mlflow.db").exists()  # not the fallback store
    runs = runs_of(f"sqlite:///{store}", "from-config")  # the configured store and experiment
    assert runs.parent.info.status == "FINISHED"
    assert runs.parent.data.params["config.mlflow.experiment"] == "from-config"
    made = runs.named("make")
    assert made.data.params["params.greeting"] == "hello"  # from the Job object: no benchmark file
    assert made.data.params["params.recipe.optimizer"] == "sgd"
    assert made.data.tags["container.image"] == "docker://example.org/stand-in:1.0"


def test_a_snakemake_object_not_found_is_named_once_per_kind(caplog, monkeypatch):
    """Events logged from outside Snakemake's Workflow and Job (what a release that moved them
    looks like): one warning per kind, saying what is lost and what to do; the store falls back."""
    from snakemake_logger_plugin_mlflow.hook import MlflowHook

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    hook = MlflowHook(LogHandlerSettings(), logging.getLogger("test.lost"), dryrun=False)
    job = dict(rule_name="make", input=[], output=[], log=[])
    with caplog.at_level(logging.WARNING, logger="test.lost"):
        hook.capture(_event(LogEvent.WORKFLOW_STARTED, snakemake_version="9.27.1"))
        hook.capture(_event(LogEvent.RUN_INFO, stats={"make": 3, "total": 3}))
        for jobid in (1, 2, 3):
            assert hook.capture(_event(LogEvent.JOB_INFO, jobid=jobid, **job))
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, warnings
    workflow, job_lost = warnings
    assert workflow.startswith("MLflow hook: Snakemake 9.27.1's Workflow object was not found")
    assert "mlflow.tracking_uri and mlflow.experiment are not used" in workflow
    assert "register_model may write to different stores" in workflow
    assert "config.* params and config.json" in workflow
    assert "--logger-mlflow-tracking-uri and --logger-mlflow-experiment" in workflow
    assert job_lost.startswith("MLflow hook: Snakemake 9.27.1's Job object was not found")
    assert "params when it has no --benchmark-extended benchmark file" in job_lost
    assert "container.image tag" in job_lost and "Run with --benchmark-extended" in job_lost
    assert hook.state.config is None and store_uri(hook.settings, None).endswith("/mlflow.db")

    import snakemake.api  # what the snakemake command loads first (snakemake.jobs alone is circular)
    import snakemake.jobs

    monkeypatch.delattr(snakemake.jobs, "Job")  # a release that renamed the class
    moved = MlflowHook(LogHandlerSettings(), logging.getLogger("test.lost"), dryrun=False)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="test.lost"):
        moved.capture(_event(LogEvent.JOB_INFO, jobid=1, **job))
        moved.capture(_event(LogEvent.JOB_INFO, jobid=2, **job))
    (message,) = [r.getMessage() for r in caplog.records]
    assert "Job object was not found (no class snakemake.jobs.Job is loaded)" in message


# ---- one place decides the store: the hook's and register_model's -------------------------

# What the pipeline image is, for imports: MLflow, numpy, the scripts/ directory, no Snakemake.
WITHOUT_SNAKEMAKE = """
import sys

class NoSnakemake:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "snakemake" or name.startswith("snakemake_interface"):
            raise ImportError(f"No module named {name!r} (the pipeline image has no Snakemake)")

sys.meta_path.insert(0, NoSnakemake())
from cifarflow.registry import tracking_uri
print(tracking_uri(""))
import snakemake_logger_plugin_mlflow as plugin
try:
    plugin.LogHandler
except ImportError as exc:
    print(exc)
print(sorted(name for name in sys.modules if name.startswith("snakemake")))
"""


def test_one_place_decides_the_store_and_it_needs_no_snakemake(tmp_path, monkeypatch):
    from cifarflow import registry
    from snakemake_interface_logger_plugins.registry import LoggerPluginRegistry
    from snakemake_logger_plugin_mlflow import uri
    from snakemake_logger_plugin_mlflow.hook import MlflowHook

    assert registry.tracking_uri is uri.tracking_uri  # register_model's, re-exported
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    hook = MlflowHook(LogHandlerSettings(), logging.getLogger("test.uri"), dryrun=False)

    def the_hooks() -> str:  # the store the hook opens, from its settings and the workflow's config
        return store_uri(hook.settings, hook.state.config)

    assert the_hooks() == registry.tracking_uri("") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert the_hooks() == registry.tracking_uri("") == "http://127.0.0.1:5000"
    hook.state.config = {"mlflow": {"tracking_uri": "sqlite:///configured.db"}}
    assert the_hooks() == registry.tracking_uri("sqlite:///configured.db") == "sqlite:///configured.db"
    hook.settings = LogHandlerSettings(tracking_uri="http://127.0.0.1:5001")  # the hook's own setting
    assert the_hooks() == "http://127.0.0.1:5001"

    # The registry step imports it in the pipeline image, where Snakemake is not installed.
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    run = subprocess.run(
        [sys.executable, "-c", WITHOUT_SNAKEMAKE],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "scripts")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "No module named 'snakemake_interface_logger_plugins' (the pipeline image has no Snakemake)",
        "['snakemake_logger_plugin_mlflow', 'snakemake_logger_plugin_mlflow.experiment', "
        "'snakemake_logger_plugin_mlflow.uri']",
    ]
    # ... and Snakemake still finds the plugin's two classes (they are loaded on first access).
    plugin = LoggerPluginRegistry().get_plugin("mlflow")
    assert plugin.log_handler is LogHandler and plugin.settings_cls is LogHandlerSettings


# ---- the handler fed events by hand, against a real store (its pieces: test_mlflow_hook_parts.py) --


def _event(event: LogEvent, level: int = logging.INFO, **fields) -> logging.LogRecord:
    record = logging.LogRecord("snakemake.logging", level, __file__, 0, str(event), None, None)
    record.__dict__.update(event=event, **fields)
    return record


def replay(handler, events) -> None:
    """Feed Snakemake's events to the handler as Snakemake does (capture, then emit), then close it."""
    try:
        for record in events:
            handler.hook.capture(record)
            handler.emit(record)
    finally:
        handler.close()


def test_events_to_a_real_store_without_snakemake(tmp_path, monkeypatch):
    """The handler fed Snakemake's events by hand: history steps, params from the benchmark."""
    monkeypatch.chdir(tmp_path)
    out = Path("results/x")
    out.mkdir(parents=True)
    history = [{"epoch": e, "val_accuracy": 0.1 * e, "train_loss": 3.0 - e} for e in range(1, 4)]
    (out / "metrics.json").write_text(
        json.dumps({"test_accuracy": 0.42, "val_accuracy": 0.35, "history": history})
    )
    versions = {"python": "3.11.2", "torch": "2.14.1", "image": "cifarflow-pipeline:0.1.0-cuda"}
    line = f"12:00:00 INFO {VERSIONS_MARKER}{json.dumps(versions)}\n"
    Path("train.log").write_text(f"running in image x\n{line}epoch 1\nepoch 2\nepoch 3\n")
    Path("bench.tsv").write_text("s\tmax_rss\tcpu_time\tparams\n2.00\t10.00\t1.00\t{'lr': 0.1}\n")
    uri = f"sqlite:///{tmp_path / 'unit.db'}"
    handler = LogHandler(
        SimpleNamespace(dryrun=False), LogHandlerSettings(tracking_uri=uri, experiment="unit")
    )
    job = dict(
        rule_name="train_model",
        jobid=3,
        input=[],
        output=[str(out / "metrics.json")],
        log=["train.log"],
        benchmark="bench.tsv",
        wildcards={"experiment": "base"},
        resources={"_cores": 1, "mem_mb": 10},
        threads=1,
        shellcmd="python train.py",
    )
    events = [
        _event(LogEvent.WORKFLOW_STARTED, cmd="snakemake", config_md5="0" * 32, datetime="now"),
        _event(LogEvent.RUN_INFO, stats={"train_model": 1, "total": 1}),
        _event(LogEvent.JOB_INFO, **job),
        _event(LogEvent.JOB_FINISHED, job_id=3),
    ]
    replay(handler, events)
    runs = runs_of(uri, "unit")
    assert runs.parent.info.status == "FINISHED"
    child = runs.named("train_model/experiment=base")
    steps = metric_steps(uri, child, "val_accuracy")
    assert [step for step, _ in steps] == [1, 2, 3, 3]
    assert [value for _, value in steps] == pytest.approx([0.1, 0.2, 0.3, 0.35])
    assert child.data.metrics["val_accuracy"] == 0.35  # the top-level (final) value is the latest
    assert metric_steps(uri, child, "train_loss") == [(1, 2.0), (2, 1.0), (3, 0.0)]
    assert child.data.metrics["test_accuracy"] == 0.42 and child.data.metrics["benchmark.runtime_s"] == 2.0
    assert child.data.params == {
        "wildcards.experiment": "base",
        "threads": "1",
        "resources.mem_mb": "10",
        "params.lr": "0.1",
    }
    assert artifacts_of(uri, child) == {"train.log", "results/x/metrics.json", "bench.tsv"}
    # the versions the job's log records, as tags of its run; the experiment opens on the runs table
    assert {k: v for k, v in child.data.tags.items() if k.startswith("version.")} == {
        f"version.{k}": v for k, v in versions.items()
    }
    experiment = MlflowClient(uri).get_experiment_by_name("unit")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (None, "custom_model_development"),
        ("genai_development_inferred", "custom_model_development"),  # MLflow's own guess is replaced
        ("genai_development", "genai_development"),  # a kind someone chose stays
    ],
)
def test_an_existing_experiment_becomes_a_model_training_one_unless_chosen_otherwise(tmp_path, before, after):
    uri = f"sqlite:///{tmp_path / 'kind.db'}"
    MlflowClient(uri).create_experiment("kind", tags={"mlflow.experimentKind": before} if before else None)
    handler = LogHandler(
        SimpleNamespace(dryrun=False), LogHandlerSettings(tracking_uri=uri, experiment="kind")
    )
    events = [
        _event(LogEvent.WORKFLOW_STARTED, cmd="snakemake", config_md5="0" * 32, datetime="now"),
        _event(LogEvent.RUN_INFO, stats={"total": 1}),
    ]
    replay(handler, events)
    assert MlflowClient(uri).get_experiment_by_name("kind").tags.get("mlflow.experimentKind") == after


def test_the_hook_reads_the_versions_line_the_library_writes(tmp_path):
    """One marker on both sides, though the hook never imports the workflow's library."""
    from cifarflow.versions import LOG_MARKER, log_line, software_versions

    assert VERSIONS_MARKER == LOG_MARKER
    found = software_versions()
    log = tmp_path / "job.log"
    log.write_text(f"12:00:00 INFO running in ...\n12:00:00 INFO {log_line(found)}\n" + "x\n" * 100_000)
    assert versions_from_log(log) == {f"version.{k}": v for k, v in found.items()}
    log.write_text("no versions here\n")
    assert versions_from_log(log) == {}


def test_strict_starts_no_further_job_once_logging_failed():
    from snakemake_logger_plugin_mlflow.hook import MlflowHook, TrackingStoreError

    started = _event(LogEvent.JOB_STARTED, jobs=[2])
    for strict in (False, True):
        hook = MlflowHook(LogHandlerSettings(strict=strict), logging.getLogger("test"), dryrun=False)
        assert hook.capture(started)  # nothing failed yet: the job starts
        hook.broken = "logging a finished job: cannot connect: Connection refused"
        if strict:
            with pytest.raises(TrackingStoreError, match="no further jobs are started"):
                hook.capture(started)
        else:
            assert hook.capture(started)


def _job(jobid: int, rule: str, output: list[str], log: list[str]) -> dict:
    return dict(
        rule_name=rule,
        jobid=jobid,
        input=[],
        output=output,
        log=log,
        benchmark=None,
        wildcards={},
        resources={},
        threads=1,
        shellcmd=f"run {rule}",
    )


def test_a_job_file_that_cannot_be_read_is_a_warning_on_its_run(tmp_path, monkeypatch, caplog):
    """A failed job whose log cannot be read (here: a directory where the log should be): its run
    says so, one warning line, and the next job and the parent are logged as usual."""
    monkeypatch.chdir(tmp_path)
    Path("logs/broken.log").mkdir(parents=True)
    Path("good.log").write_text("fine\n")
    uri = f"sqlite:///{tmp_path / 'unit.db'}"
    handler = LogHandler(
        SimpleNamespace(dryrun=False), LogHandlerSettings(tracking_uri=uri, experiment="unit")
    )
    events = [
        _event(LogEvent.RUN_INFO, stats={"total": 2}),
        _event(LogEvent.JOB_INFO, **_job(1, "broken", ["out.txt"], ["logs/broken.log"])),
        _event(LogEvent.JOB_ERROR, level=logging.ERROR, jobid=1, log=["logs/broken.log"]),
        _event(LogEvent.JOB_INFO, **_job(2, "good", ["out.txt"], ["good.log"])),
        _event(LogEvent.JOB_FINISHED, job_id=2),
    ]
    try:
        with caplog.at_level(logging.WARNING, logger="snakemake.logging"):
            for record in events:
                handler.hook.capture(record)
                handler.emit(record)
    finally:
        handler.close()
    runs = runs_of(uri, "unit")
    assert runs.parent.info.status == "FINISHED" and "hook.warning" not in runs.parent.data.tags
    broken = runs.named("broken")
    assert broken.info.status == "FAILED"
    assert (
        broken.data.tags["hook.artifact:logs/broken.log"] == "not uploaded: Is a directory: logs/broken.log"
    )
    assert runs.named("good").info.status == "FINISHED"
    assert artifacts_of(uri, runs.named("good")) == {"good.log"}
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("MLflow: ")]
    assert warnings == [
        "MLflow: logs/broken.log of run broken (job 1) not uploaded (Is a directory: logs/broken.log); "
        "its run says so in a hook.artifact tag. Tracking carries on."
    ]


def _server_group(url: str) -> int:
    """The process group of the `mlflow server` listening at `url` (the fixture's)."""
    import psutil

    port = str(urllib.parse.urlparse(url).port)
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "server" in cmdline and port in cmdline and "--backend-store-uri" in cmdline:
            return os.getpgid(proc.pid)
    raise AssertionError(f"no mlflow server process for {url}")


@pytest.mark.workflow
def test_a_store_that_stops_answering_ends_tracking_and_close_reconnects_once(
    mlflow_server, tmp_path, monkeypatch, caplog
):
    """The tracking server stops answering mid-run (its processes are stopped: connections hang).
    Tracking stops with one warning; the jobs after it are not logged. If the server answers again
    by the end, close() ends the open runs and the parent; if not, it says why the parent stays
    RUNNING and how to end it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail in seconds, not minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    Path("one.log").write_text("one\n")
    group = _server_group(mlflow_server)

    def invocation(experiment: str, answers_at_the_end: bool) -> list[str]:
        handler = LogHandler(
            SimpleNamespace(dryrun=False),
            LogHandlerSettings(tracking_uri=mlflow_server, experiment=experiment),
        )
        caplog.clear()
        try:
            with caplog.at_level(logging.WARNING, logger="snakemake.logging"):
                for record in [
                    _event(LogEvent.RUN_INFO, stats={"total": 3}),
                    _event(LogEvent.JOB_INFO, **_job(1, "one", ["one.txt"], ["one.log"])),
                ]:
                    handler.hook.capture(record)
                    handler.emit(record)
                os.killpg(group, signal.SIGSTOP)  # the server stops answering
                for record in [
                    _event(LogEvent.JOB_FINISHED, job_id=1),
                    _event(LogEvent.JOB_INFO, **_job(2, "two", ["two.txt"], [])),
                    _event(LogEvent.JOB_FINISHED, job_id=2),
                ]:
                    handler.hook.capture(record)
                    handler.emit(record)
                if answers_at_the_end:
                    os.killpg(group, signal.SIGCONT)
                handler.close()
        finally:
            os.killpg(group, signal.SIGCONT)
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("MLflow tracking")]

    warnings = invocation("comes-back", answers_at_the_end=True)
    runs = runs_of(mlflow_server, "comes-back")
    assert runs.parent.info.status == "FINISHED"
    assert "tracking stopped mid-run (logging the finished job: " in runs.parent.data.tags["hook.warning"]
    assert runs.parent.data.tags["hook.warning"].endswith("; 1 later job(s) not logged")
    assert runs.parent.data.metrics["jobs_finished"] == 2  # counted although not logged
    assert runs.names() == ["one"]  # job two started after the stop: no run
    assert runs.named("one").info.status == "FINISHED"
    assert runs.named("one").data.tags["hook.warning"].startswith("tracking stopped before this job ended")
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(
        f"MLflow tracking stopped: logging the finished job failed on {mlflow_server}"
    )
    assert "the store cannot be reached" in warnings[0] and "connects once more" in warnings[0]

    warnings = invocation("stays-away", answers_at_the_end=False)
    assert len(warnings) == 2, warnings
    parent = runs_of(mlflow_server, "stays-away").parent
    assert parent.info.status == "RUNNING"  # as the warning says:
    assert warnings[1].startswith(
        f"MLflow tracking: parent run {parent.info.run_id} stays RUNNING in experiment 'stays-away' on "
        f"{mlflow_server}: tracking stopped earlier (logging the finished job: "
    )
    assert "then ending it failed (reconnecting: " in warnings[1]
    assert warnings[1].endswith(
        f"Once the store is back: MlflowClient('{mlflow_server}').set_terminated('{parent.info.run_id}', "
        "'FINISHED')."
    )
