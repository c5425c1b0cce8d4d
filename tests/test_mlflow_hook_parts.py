"""The MLflow hook's pieces one at a time (scripts/snakemake_logger_plugin_mlflow): what is read from
a job's files, what each run gets, log_batch's requests, what a failure means, hashing, the hook's
copies, the experiment, and what `capture` hands to `handle`. No Snakemake run and no MLflow store,
but for the one test of a deleted experiment (test_mlflow_hook.py runs the whole hook)."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import pytest
from snakemake_interface_logger_plugins.common import LogEvent
from snakemake_logger_plugin_mlflow import LogHandlerSettings
from snakemake_logger_plugin_mlflow.capture import ATTRIBUTE, Captured, captured
from snakemake_logger_plugin_mlflow.content import (
    VERSIONS_MARKER,
    file_digest,
    flatten,
    metrics_from_json,
    parse_benchmark,
    run_name,
    safe_key,
    split_tags,
    tags_from_json,
)
from snakemake_logger_plugin_mlflow.copies import LOG_LIMIT, OVER_LIMIT, PLOT_LIMIT, Copies
from snakemake_logger_plugin_mlflow.experiment import EXPERIMENT_KIND, ExperimentDeleted, ensure_experiment
from snakemake_logger_plugin_mlflow.failures import TrackingStoreError, describe, store_unreachable
from snakemake_logger_plugin_mlflow.hashing import MAX_FILE_TAGS, Hasher
from snakemake_logger_plugin_mlflow.hook import MlflowHook
from snakemake_logger_plugin_mlflow.runs import (
    Job,
    has_run,
    job_failed,
    job_finished,
    job_start,
    parent_end,
    parent_start,
    parent_status,
    parent_tags,
)
from snakemake_logger_plugin_mlflow.store import batches
from test_mlflow_hook import _event

VERSIONS_LINE = f'12:00:00 INFO {VERSIONS_MARKER}{{"python": "3.11.2", "torch": "2.14.1"}}\n'
VERSION_TAGS = {"version.python": "3.11.2", "version.torch": "2.14.1"}


# ---- content.py: what is read from a job's files ------------------------------------------------


def test_tags_come_from_the_mlflow_tags_param_and_metrics_json_text():
    params = {
        "recipe": '{"lr": 0.1}',
        "mlflow_tags": '{"sweep": "s", "sweep.widths": [8, 16], "sweep.lr": 0.1}',
    }
    rest, tags = split_tags(params)
    assert rest == {"recipe": '{"lr": 0.1}'} and params["mlflow_tags"]  # a copy: the job's params stay
    assert tags == {"sweep": "s", "sweep.widths": "[8, 16]", "sweep.lr": "0.1"}
    assert split_tags({"mlflow_tags": {"a b/c": True}}) == ({}, {"a b/c": "true"})
    assert split_tags({"mlflow_tags": "not json", "x": 1}) == ({"x": 1}, {})  # no tags, and no param
    assert split_tags({"x": 1}) == ({"x": 1}, {})
    data = {"outcome": "diverged", "reason": "x" * 9000, "epochs": 0, "history": []}
    tags = tags_from_json(data)
    assert set(tags) == {"outcome", "reason"} and tags["outcome"] == "diverged"
    assert len(tags["reason"]) == 8000 and tags["reason"].endswith("[truncated]")


def test_metrics_json_history_becomes_step_metrics():
    data = {
        "test_accuracy": 0.8,
        "val_accuracy": 0.65,  # the final value of a history series: put at the series' last step
        "nested": {"a": 1, "flag": True},
        "history": [
            {"epoch": 1, "train_loss": 2.0, "val_accuracy": 0.3},
            {"epoch": 2, "train_loss": 1.0, "val_accuracy": 0.6},
            {"train_loss": 0.5, "note": "text"},  # no epoch: its index is the step
        ],
    }
    assert metrics_from_json(data) == [
        ("test_accuracy", 0.8, 0),
        ("nested.a", 1.0, 0),
        ("train_loss", 2.0, 1),
        ("val_accuracy", 0.3, 1),
        ("train_loss", 1.0, 2),
        ("val_accuracy", 0.6, 2),
        ("train_loss", 0.5, 2),
        ("val_accuracy", 0.65, 2),
    ]


def test_flatten_safe_keys_run_names_and_digests(tmp_path):
    assert flatten({"settings": '{"a": {"b": 1}, "c": [1, 2]}', "n": None, "l": [{"x": 1}]}, "params") == {
        "params.settings.a.b": "1",
        "params.settings.c": "[1, 2]",
        "params.n": "None",
        "params.l.0.x": "1",
    }
    assert safe_key("a<b>/../c") == "a_b__.._c" and safe_key("ok/key") == "ok/key"
    assert 240 < len(safe_key("k" * 400)) <= 250
    assert run_name("train", {"experiment": "a", "dataset": "d"}) == "train/experiment=a,dataset=d"
    assert run_name("all", {}) == "all"
    (tmp_path / "f").write_bytes(b"abc")
    assert file_digest(tmp_path / "f") == hashlib.sha256(b"abc").hexdigest()
    assert file_digest(tmp_path) == "not hashed: directory"
    assert file_digest(tmp_path / "missing") == "not hashed: missing"
    assert file_digest(tmp_path / "f", limit=2) == "not hashed: 0.0 GiB > 0 GiB limit"


def test_parse_extended_benchmark(tmp_path):
    bench = tmp_path / "b.tsv"
    bench.write_text(
        "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\tjobid\t"
        "rule_name\twildcards\tparams\tthreads\tcpu_usage\tresources\tinput_size_mb\n"
        "1.50\t0:00:01\t65.33\t185.27\t45.27\t51.14\tNA\t0.00\t0.00\t0.50\t1\tprep\t{'d': 'x'}\t"
        "{'settings': '{\"seed\": 0}', 'n': 3}\t2\t0.00\t{'tmpdir': '/tmp', '_cores': 2}\t{}\n"
    )
    parsed = parse_benchmark(bench)
    assert parsed["rows"][0]["benchmark.runtime_s"] == 1.5 and "benchmark.io_in_mb" not in parsed["rows"][0]
    assert (
        parsed["rows"][0]["benchmark.max_rss_mb"] == 65.33
        and parsed["rows"][0]["benchmark.cpu_time_s"] == 0.5
    )
    assert parsed["params"] == {"settings": '{"seed": 0}', "n": 3}
    assert parsed["wildcards"] == {"d": "x"} and parsed["threads"] == 2


# ---- runs.py: what each run gets ----------------------------------------------------------------


def test_a_starting_job_gets_its_name_tags_and_params():
    record = SimpleNamespace(
        rule_name="train_model",
        jobid=3,
        wildcards={"experiment": "a"},
        shellcmd="python train.py",
        threads=2,
        resources={"_cores": 1, "mem_mb": 10, "tmpdir": "/tmp"},
    )
    extra = {"container": "docker://x:1", "params": {"lr": 0.1, "mlflow_tags": '{"sweep": "s"}'}}
    name, tags, fields = job_start(record, "parent-id", extra)
    assert name == "train_model/experiment=a"
    assert tags == {
        "mlflow.parentRunId": "parent-id",
        "snakemake.rule": "train_model",
        "snakemake.jobid": "3",
        "snakemake.wildcards": '{"experiment": "a"}',
        "snakemake.shellcmd": "python train.py",
        "container.image": "docker://x:1",
        "sweep": "s",  # asked for by the mlflow_tags param
    }
    assert fields.params == {
        "wildcards.experiment": "a",
        "threads": 2,
        "resources.mem_mb": 10,
        "resources.tmpdir": "/tmp",
    }
    assert fields.metrics == [] and fields.files == {}
    # no shell command, no container, no Job object: only what the event says
    bare = SimpleNamespace(**{**vars(record), "shellcmd": None, "resources": None})
    _, tags, fields = job_start(bare, "p", {})
    assert "snakemake.shellcmd" not in tags and "container.image" not in tags and "sweep" not in tags
    assert fields.params == {"wildcards.experiment": "a", "threads": 2}
    assert has_run(["out"], []) and has_run([], ["log"]) and not has_run([], [])  # `all` gets no run


def test_a_finished_job_logs_its_benchmark_metrics_json_plots_and_versions(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("job.log").write_text(f"starting\n{VERSIONS_LINE}")
    Path("bench.tsv").write_text("s\tmax_rss\tparams\n2.00\t10.00\t{'lr': 0.1, 'mlflow_tags': {'a': 1}}\n")
    Path("metrics.json").write_text('{"accuracy": 0.5, "outcome": "ok"}')
    Path("plot.png").write_bytes(b"png")
    Path("bad").mkdir()
    Path("bad/metrics.json").write_text("{not json")
    outputs = ["metrics.json", "plot.png", "missing.svg", "bad/metrics.json", "model.onnx"]
    job = Job("r", "train", outputs, ["job.log", "gone.log"], "bench.tsv", {"lr": 0.2}, 3)
    fields = job_finished(job)
    assert fields.metrics == [
        ("benchmark.runtime_s", 2.0, 0),
        ("benchmark.max_rss_mb", 10.0, 0),
        ("accuracy", 0.5, 0),
    ]
    assert fields.params == {"params.lr": "0.1"}  # the benchmark's, over the Job object's
    assert fields.tags == {
        "a": "1",
        **VERSION_TAGS,
        "outcome": "ok",
        "hook.metrics:bad/metrics.json": "unreadable: JSONDecodeError: Expecting property name enclosed "
        "in double quotes: line 1 column 2 (char 1)",
    }
    # files that are there, each with its size limit (a missing log is not listed: nothing to say)
    assert fields.files == {
        "job.log": LOG_LIMIT,
        "metrics.json": LOG_LIMIT,
        "plot.png": PLOT_LIMIT,
        "bench.tsv": LOG_LIMIT,
    }
    # without a benchmark the Job object's params; without either, a tag says so
    no_bench = job_finished(Job("r", "train", [], [], None, {"lr": 0.2}, 3))
    assert no_bench.params == {"params.lr": "0.2"} and no_bench.metrics == [] and no_bench.files == {}
    nothing = job_finished(Job("r", "train", [], [], None, None, 3))
    assert nothing.tags == {"hook.params": "not available: no benchmark file with --benchmark-extended"}
    Path("bench.jsonl").write_text("{not json\n")  # a benchmark that cannot be read: a tag says why
    unreadable = job_finished(Job("r", "train", [], [], "bench.jsonl", None, 3))
    assert unreadable.tags["hook.benchmark"].startswith("unreadable: JSONDecodeError: ")
    assert unreadable.files == {"bench.jsonl": LOG_LIMIT}


def test_a_failed_job_uploads_the_copies_it_has_and_tags_the_logs_that_are_not_there(tmp_path):
    copy = tmp_path / "copy.log"
    copy.write_text(VERSIONS_LINE)
    job = Job("r", "train", ["out"], [], None, {"lr": 0.1, "mlflow_tags": {"a": 1}}, 3)
    kept = {
        "logs/a.log": str(copy),
        "logs/gone.log": FileNotFoundError(2, "No such file or directory"),
        "logs/dir.log": IsADirectoryError(21, "Is a directory"),
        "logs/big.log": None,  # over the limit: its upload says so
    }
    fields = job_failed(job, list(kept), kept)
    assert fields.params == {"params.lr": "0.1"}  # the tags param is not a param
    assert fields.tags == {
        "snakemake.error": "job failed; see logs/a.log, logs/gone.log, logs/dir.log, logs/big.log",
        **VERSION_TAGS,
        "hook.artifact:logs/gone.log": "not uploaded: no such file",
    }
    assert fields.files == {"logs/a.log": LOG_LIMIT, "logs/dir.log": LOG_LIMIT, "logs/big.log": LOG_LIMIT}
    nothing = job_failed(Job("r", "x", [], [], None, None, 4), [], {})
    assert nothing.tags == {"snakemake.error": "job failed; see the Snakemake log"} and nothing.params == {}


def test_the_parent_run_fields_and_status(tmp_path):
    info = {"cmd": "snakemake --cores 4", "snakemake_version": "9.0", "configfiles": [Path("c.yaml")]}
    tags = parent_tags(info, str(tmp_path))  # not a git repository: no git tags
    assert tags["snakemake.command"] == "snakemake --cores 4" and tags["snakemake.version"] == "9.0"
    assert tags["snakemake.configfiles"] == '["c.yaml"]' and tags["snakemake.workdir"] == os.getcwd()
    assert not any(key.startswith("git.") for key in tags)
    assert parent_start(None, None).metrics == [] and parent_start(None, None).params == {}
    start = parent_start(5, {"mlflow": {"experiment": "x"}})
    assert start.metrics == [("jobs_planned", 5.0, 0)] and start.params == {"config.mlflow.experiment": "x"}

    assert parent_status("boom", jobs_open=True) == "FAILED"
    assert parent_status(None, jobs_open=True) == "KILLED"  # jobs never ended, no error: interrupted
    assert parent_status(None, jobs_open=False) == "FINISHED"
    end = parent_end({"finished": 2, "failed": 1}, "x" * 6000, None, 0)
    assert end.metrics == [("jobs_finished", 2.0, 0), ("jobs_failed", 1.0, 0)]
    assert len(end.tags["snakemake.error"]) == 5000 and "hook.warning" not in end.tags
    stopped = parent_end({"finished": 0, "failed": 0}, None, "logging: cannot connect", 3)
    assert stopped.tags == {
        "hook.warning": "tracking stopped mid-run (logging: cannot connect); 3 later job(s) not logged"
    }


# ---- store.py: log_batch's requests --------------------------------------------------------------


def test_batches_stay_within_mlflows_limits_and_a_repeated_step_comes_later():
    metrics = [("loss", float(i), i) for i in range(1001)] + [("loss", 9.0, 0)]
    params = {f"p{i}": i for i in range(150)}
    requests = batches(metrics, params, {"bad key<>": "v" * 9000}, timestamp=1000)
    assert [len(r.get("metrics", [])) for r in requests] == [1000, 2, 0, 0]
    assert [(len(r.get("params", [])), len(r.get("tags", []))) for r in requests] == [
        (0, 0),
        (0, 0),
        (100, 1),
        (50, 0),
    ]
    first, repeated = requests[0]["metrics"][0], requests[1]["metrics"][1]
    assert (first.step, first.timestamp) == (0, 1000) and (repeated.step, repeated.timestamp) == (0, 1001)
    tag = requests[2]["tags"][0]
    assert tag.key == "bad key__" and len(tag.value) == 8000  # a key MLflow accepts, a value it keeps
    assert batches() == [] and batches(tags={"a": 1})[0]["tags"][0].value == "1"


# ---- failures.py: what a failed call means ---------------------------------------------------------


def test_what_a_failure_means_and_the_line_that_says_so():
    import requests
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE

    refused = requests.exceptions.ConnectionError(
        "HTTPConnectionPool(host='h', port=1): Max retries exceeded (Caused by NewConnectionError("
        "'<conn>: Failed to establish a new connection: [Errno 111] Connection refused'))"
    )
    try:
        try:
            raise refused
        except requests.exceptions.ConnectionError as exc:
            raise MlflowException("API request failed") from exc
    except MlflowException as exc:
        wrapped = exc
    assert describe(wrapped) == "cannot connect: Connection refused" and store_unreachable(wrapped)
    assert (
        describe(FileNotFoundError(2, "No such file or directory", "x.log"))
        == "No such file or directory: x.log"
    )
    assert (
        describe(ValueError("first line\nsecond")) == "ValueError: first line"
        and describe(ValueError()) == "ValueError"
    )

    def answer(status: int) -> requests.exceptions.HTTPError:
        response = requests.Response()
        response.status_code = status
        return requests.exceptions.HTTPError(response=response)

    assert store_unreachable(answer(503)) and not store_unreachable(answer(404))
    assert store_unreachable(MlflowException("db", error_code=INTERNAL_ERROR))  # a database error
    assert not store_unreachable(MlflowException("bad", error_code=INVALID_PARAMETER_VALUE))  # refused: 4xx
    assert store_unreachable(OSError("disk full")) and not store_unreachable(ValueError("a bug"))
    assert issubclass(TrackingStoreError, Exception)


# ---- hashing.py and copies.py: a job's files -------------------------------------------------------


def test_hashes_follow_a_temp_file_written_then_removed_and_stop_at_the_limit(tmp_path):
    hasher = Hasher()
    made = tmp_path / "made.txt"
    made.write_bytes(b"abc")
    digest = hashlib.sha256(b"abc").hexdigest()
    future = hasher.later("output", [str(made)])
    assert isinstance(future, Future) and future.result() == {f"output:{made}": digest}
    made.unlink()  # a temp() file, gone when the next job's inputs are hashed
    assert hasher.result(None, "input", [str(made), str(tmp_path / "never")]) == {
        f"input:{made}": digest,
        f"input:{tmp_path / 'never'}": "not hashed: missing",
    }
    many = [str(tmp_path / f"f{i}") for i in range(MAX_FILE_TAGS + 3)]
    tags = hasher.tags("input", many)
    assert len(tags) == MAX_FILE_TAGS + 1 and tags["inputs.not_listed"] == "3 more files, not hashed"
    hasher.shutdown()


class Client:
    """log_artifact only: what an upload sends to the store."""

    def __init__(self):
        self.sent: list[tuple[str, str, str | None]] = []

    def log_artifact(self, run_id, path, folder):
        self.sent.append((run_id, Path(path).read_text(), folder))


def test_copies_are_what_is_uploaded_and_a_missing_file_is_a_tag_and_one_line(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    Path("logs").mkdir()
    Path("logs/a.log").write_text("attempt 1\n")
    Path("big.png").write_bytes(b"x" * (PLOT_LIMIT + 1))
    copies = Copies()
    kept = copies.keep_all(["logs/a.log", "logs/gone.log"])
    assert isinstance(kept["logs/gone.log"], FileNotFoundError)
    Path("logs/a.log").write_text("attempt 2\n")  # the retry overwrote it: the copy is what goes
    client, job = Client(), Job("run-1", "train", [], [], None, None, 7)
    with caplog.at_level(logging.WARNING, logger="test.copies"):
        tags = copies.upload(
            client,
            job,
            {"logs/a.log": LOG_LIMIT, "logs/gone.log": LOG_LIMIT},
            logging.getLogger("test.copies"),
            kept,
        )
        tags |= copies.upload(
            client, job, {"big.png": PLOT_LIMIT, "nowhere.txt": LOG_LIMIT}, logging.getLogger("test.copies")
        )
    assert client.sent == [("run-1", "attempt 1\n", "logs")]
    assert tags == {
        "hook.artifact:logs/gone.log": "not uploaded: No such file or directory: logs/gone.log",
        "hook.plot:big.png": OVER_LIMIT[PLOT_LIMIT][1],
        "hook.artifact:nowhere.txt": "not uploaded: No such file or directory: nowhere.txt",
    }
    assert [r.getMessage() for r in caplog.records] == [
        f"MLflow: {path} of run train (job 7) not uploaded (No such file or directory: {path}); "
        "its run says so in a hook.artifact tag. Tracking carries on."
        for path in ("logs/gone.log", "nowhere.txt")
    ]
    folder = copies.folder
    assert folder is not None and os.listdir(folder) == []  # each uploaded copy is removed at once
    copies.remove()
    assert not os.path.exists(folder)


# ---- experiment.py: one function for the hook and the registry ---------------------------------------


class Experiments:
    """The client calls ensure_experiment makes, on experiments held in a dict."""

    def __init__(self, **existing):
        self.existing, self.created, self.tagged = existing, [], []

    def get_experiment_by_name(self, name):
        return self.existing.get(name)

    def create_experiment(self, name, tags):
        self.created.append((name, tags))
        return "new-id"

    def set_experiment_tag(self, experiment_id, key, value):
        self.tagged.append((experiment_id, key, value))


def experiment(stage: str = "active", kind: str | None = None) -> SimpleNamespace:
    tags = {EXPERIMENT_KIND[0]: kind} if kind else {}
    return SimpleNamespace(experiment_id="7", lifecycle_stage=stage, tags=tags)


def test_ensure_experiment_creates_tags_or_refuses_a_deleted_one():
    client = Experiments()
    assert ensure_experiment(client, "new", rename_with="X") == "new-id"
    assert client.created == [("new", {"mlflow.experimentKind": "custom_model_development"})]
    for kind, tagged in [(None, True), ("genai_development_inferred", True), ("genai_development", False)]:
        client = Experiments(old=experiment(kind=kind))
        assert ensure_experiment(client, "old", rename_with="X") == "7" and client.created == []
        assert client.tagged == ([("7", *EXPERIMENT_KIND)] if tagged else [])
    client = Experiments(gone=experiment(stage="deleted"))
    with pytest.raises(ExperimentDeleted) as deleted:
        ensure_experiment(client, "gone", rename_with="--an-option")
    assert str(deleted.value) == (
        "experiment 'gone' is deleted; restore it (mlflow experiments restore) or choose another name "
        "with --an-option"
    )
    assert client.created == [] and client.tagged == []


def test_the_hook_refuses_a_deleted_experiment(tmp_path, caplog):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'gone.db'}"
    client = MlflowClient(uri)
    client.delete_experiment(client.create_experiment("gone"))
    why = (
        "experiment 'gone' is deleted; restore it (mlflow experiments restore) or choose another name "
        "with --logger-mlflow-experiment"
    )
    strict = MlflowHook(
        LogHandlerSettings(tracking_uri=uri, experiment="gone", strict=True),
        logging.getLogger("test.gone"),
        dryrun=False,
    )
    with pytest.raises(
        TrackingStoreError,
        match=re.escape(f"cannot be used (ExperimentDeleted: {why})"),
    ):
        strict.capture(_event(LogEvent.RUN_INFO, stats={"total": 1}))
    hook = MlflowHook(
        LogHandlerSettings(tracking_uri=uri, experiment="gone"), logging.getLogger("test.gone"), dryrun=False
    )
    with caplog.at_level(logging.WARNING, logger="test.gone"):
        hook.handle(_event(LogEvent.RUN_INFO, stats={"total": 1}))
    (warning,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("MLflow tracking")]
    assert (
        f"cannot be used (ExperimentDeleted: {why})" in warning and hook.disabled and hook.parent_id is None
    )
    assert client.get_experiment_by_name("gone").lifecycle_stage == "deleted"  # nothing restored


# ---- capture.py: what the logging thread hands to the listener ----------------------------------------


def test_capture_hands_over_one_captured_object_and_leaves_snakemakes_fields_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("a.log").write_text("failed attempt\n")
    hook = MlflowHook(LogHandlerSettings(), logging.getLogger("test.capture"), dryrun=False)
    hook.snakemake.lost = {"Workflow", "Job"}  # events logged from a test: no Snakemake objects to warn about
    job = dict(rule_name="r", jobid=1, input=["in.txt"], output=["out.txt"], log=["a.log"])
    records = [
        _event(LogEvent.JOB_INFO, **job),
        _event(LogEvent.JOB_FINISHED, job_id=1),
        _event(LogEvent.JOB_ERROR, jobid=2, log=["a.log"]),
        _event(
            LogEvent.GROUP_ERROR, job_error_info=[{"jobid": 3, "log": ["a.log"]}, {"jobid": 4, "log": []}]
        ),
    ]
    fields = [set(vars(record)) for record in records]
    for record in records:
        assert hook.capture(record)
    for record, before in zip(records, fields, strict=True):
        assert set(vars(record)) - before == {ATTRIBUTE}  # the one attribute the hook adds
    started, finished, failed, group = (captured(record) for record in records)
    assert started.job == {} and started.inputs.result() == {"input:in.txt": "not hashed: missing"}
    assert finished.outputs.result() == {"output:out.txt": "not hashed: missing"}
    assert set(failed.logs) == {2} and Path(failed.logs[2]["a.log"]).read_text() == "failed attempt\n"
    assert set(group.logs) == {3, 4} and group.logs[4] == {}
    assert records[3].job_error_info == [{"jobid": 3, "log": ["a.log"]}, {"jobid": 4, "log": []}]  # unchanged
    assert (
        captured(_event(LogEvent.JOB_INFO, **job)) == Captured()
    )  # not seen by capture: nothing handed over
    hook.close()
