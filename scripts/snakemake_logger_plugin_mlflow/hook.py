"""The MLflow side of the logger plugin: one parent run per invocation, one child run per job.

Threads (see snakemake/logging.py, LoggerManager):
- `capture(record)` is a filter on Snakemake's logger, so it runs synchronously in the thread that
  logs the event (the main process's scheduler). It only collects what is not in the event itself
  (the workflow's config, a job's container image and params) and, with `strict`, opens the store
  so that a failure can stop the workflow before any job runs.
- `handle(record)` runs in Snakemake's single QueueListener thread: every MLflow write happens
  there, one after another, so parallel jobs never write concurrently (no "database is locked").
- Files are hashed by one more thread, fed by `capture` as soon as a job starts (inputs) or ends
  (outputs): the listener may lag behind (opening a new SQLite store takes seconds) and a temp()
  file may be gone by the time it gets there.
- `close()` runs in the main thread after that listener has drained its queue: it ends the runs.

Jobs never talk to MLflow: everything is read from the files they leave behind (benchmark, logs,
metrics.json, plots) by the main Snakemake process.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from snakemake_interface_common.exceptions import ApiError
from snakemake_interface_logger_plugins.common import LogEvent

from .content import (
    MAX_PARAM_VALUE,
    MAX_TAG_VALUE,
    artifact_dir,
    file_digest,
    flatten,
    local_path,
    metrics_from_json,
    parse_benchmark,
    run_name,
    safe_key,
    truncate,
)
from .uri import tracking_uri

PLOT_SUFFIXES = {".png", ".svg", ".jpg", ".jpeg", ".pdf"}
PLOT_LIMIT = 5 << 20  # plots larger than 5 MiB are not uploaded
LOG_LIMIT = 50 << 20  # nor logs larger than 50 MiB
MAX_FILE_TAGS = 200  # input/output files tagged (and hashed) per direction and job
HTTP_PROBE_TIMEOUT = 10


def _ms(seconds: float | None = None) -> int:
    return int((time.time() if seconds is None else seconds) * 1000)


class TrackingStoreError(ApiError):
    """The store cannot be used and `strict` is on. An ApiError subclass only because Snakemake
    prints those as one clean 'Error: <message>' line (a WorkflowError gets a traceback of the
    logging internals that raised it)."""


def _describe(exc: BaseException) -> str:
    """A one-line reason: the OS error for connection failures, else the exception's first line."""
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if errno:
        return f"cannot connect: {errno.group(1).strip()}"
    lines = text.strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__


def _caller_instance(cls: type, max_depth: int = 40) -> Any:
    """The nearest `self` of type `cls` up the current thread's stack (None if not found).

    Snakemake's events do not carry the workflow's config or a job's container image; the
    objects that logged them do. Looking them up is best effort: without them the hook still
    logs everything the events and files hold.
    """
    frame = sys._getframe(1)
    for _ in range(max_depth):
        if frame is None:
            return None
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, cls):
            return candidate
        frame = frame.f_back
    return None


def _git_info(directory: str) -> dict[str, str]:
    """git commit and dirty flag (tracked files changed) of the repository holding `directory`."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", directory, *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git.commit": commit, "git.dirty": str(dirty).lower(), "mlflow.source.git.commit": commit}


@dataclass
class _Job:
    run_id: str
    name: str
    output: list[str]
    log: list[str]
    benchmark: str | None
    params: dict[str, Any] | None  # from the Job object: used when the benchmark has none


@dataclass
class _State:
    info: dict[str, Any] = field(default_factory=dict)  # WORKFLOW_STARTED fields
    config: dict | None = None
    basedir: str | None = None
    jobs_planned: int | None = None
    uri: str | None = None
    experiment: str | None = None


class MlflowHook:
    def __init__(self, settings: Any, logger: logging.Logger, dryrun: bool):
        self.settings = settings
        self.logger = logger
        self.dryrun = dryrun
        self.state = _State()
        self.client: Any = None
        self.experiment_id: str | None = None
        self.parent_id: str | None = None
        self.jobs: dict[int, _Job] = {}
        self.hash_cache: dict = {}
        self.produced: dict[str, str] = {}  # output path -> digest, this invocation
        self.hasher: ThreadPoolExecutor | None = None
        self.outputs: dict[int, list[str]] = {}  # jobid -> outputs (JOB_FINISHED carries only the id)
        self.disabled = dryrun  # True once tracking is off for this invocation (never turned back on)
        self.broken: str | None = None  # why logging stopped, once it did
        self.start_lock = threading.Lock()
        self.started = False
        self.workflow_error: str | None = None
        self.counts = {"finished": 0, "failed": 0}
        self.closed = False

    # ---- synchronous part: runs in the thread that logs the event ----------------------------

    def capture(self, record: logging.LogRecord) -> bool:
        event = getattr(record, "event", None)
        if event is None or self.disabled:
            return True
        if event == LogEvent.WORKFLOW_STARTED:
            self.state.info = {
                key: getattr(record, key, None)
                for key in (
                    "cmd",
                    "config_md5",
                    "snakemake_version",
                    "host",
                    "user",
                    "workflow_id",
                    "snakefile_main",
                    "basedir",
                    "cwd",
                    "configfiles",
                    "datetime",
                )
            }
            self.state.info["started"] = record.created
        elif event == LogEvent.RUN_INFO:
            self._capture_workflow(record)
            if self.state.jobs_planned == 0:  # e.g. --until with everything done: no run to log
                return True
            if self.settings.strict and not self.disabled:
                self.start()  # raises TrackingStoreError: the workflow stops before any job runs
        elif event == LogEvent.JOB_INFO:
            record.mlflow_job = self._capture_job()
            output, log = list(record.output or []), list(record.log or [])
            if output or log:
                self.outputs[record.jobid] = output
                record.mlflow_inputs = self._hash_later("input", list(record.input or []))
        elif event == LogEvent.JOB_FINISHED and record.job_id in self.outputs:
            record.mlflow_outputs = self._hash_later("output", self.outputs.pop(record.job_id))
        elif event == LogEvent.JOB_STARTED and self.settings.strict and self.broken:
            raise TrackingStoreError(
                f"MLflow logging failed ({self.broken}) and --logger-mlflow-strict is on: "
                "no further jobs are started."
            )
        return True

    def _capture_workflow(self, record: logging.LogRecord) -> None:
        stats = getattr(record, "stats", None) or {}
        self.state.jobs_planned = stats.get("total")
        try:
            from snakemake.workflow import Workflow

            workflow = _caller_instance(Workflow)
            if workflow is None:
                return
            if workflow.touch:  # --touch runs no job: nothing to log
                self.disabled = True
                return
            self.state.config = json.loads(json.dumps(workflow.config, default=str))
            self.state.basedir = str(workflow.basedir)
        except Exception:  # noqa: BLE001 - best effort, see _caller_instance
            pass

    def _capture_job(self) -> dict[str, Any]:
        try:
            from snakemake.jobs import Job

            job = _caller_instance(Job)
            if job is None:
                return {}
            extra: dict[str, Any] = {"params": {key: value for key, value in job.params.items()}}
            if job.container_img is not None:  # only when Snakemake runs it in a container
                extra["container"] = str(job.container_img_url)
            return extra
        except Exception:  # noqa: BLE001
            return {}

    # ---- opening the store --------------------------------------------------------------------

    def _tracking_uri(self) -> str:
        """--logger-mlflow-tracking-uri first, then what register_model uses too (uri.py)."""
        section = (self.state.config or {}).get("mlflow")
        configured = section.get("tracking_uri") if isinstance(section, dict) else None
        configured = configured if isinstance(configured, str) else None
        return tracking_uri(configured, override=self.settings.tracking_uri)

    def _experiment_name(self) -> str:
        if self.settings.experiment:
            return self.settings.experiment
        section = (self.state.config or {}).get("mlflow")
        if isinstance(section, dict) and isinstance(section.get("experiment"), str):
            return section["experiment"]
        return os.path.basename(os.getcwd()) or "snakemake"

    def start(self) -> None:
        """Open the store, get/create the experiment, create the parent run (once)."""
        with self.start_lock:
            if self.started or self.disabled:
                return
            self.started = True
            self.state.uri = uri = self._tracking_uri()
            self.state.experiment = self._experiment_name()
            try:
                self._open(uri, self.state.experiment)
            except Exception as exc:  # noqa: BLE001 - any failure means: no tracking
                self.disabled = True
                jobs = self.state.jobs_planned
                if self.settings.strict:
                    raise TrackingStoreError(
                        f"MLflow tracking store {uri} cannot be used ({_describe(exc)}). "
                        "--logger-mlflow-strict is on, so the workflow stops before running any job. "
                        "Fix the store or the URI (MLFLOW_TRACKING_URI or --logger-mlflow-tracking-uri), "
                        "or drop --logger-mlflow-strict to run without tracking."
                    ) from None
                self.logger.warning(
                    f"MLflow tracking is off for this run: the tracking store {uri} cannot be used "
                    f"({_describe(exc)}). Not logged: this invocation's parent run and its "
                    f"{jobs if jobs is not None else 'N'} job(s) (params, metrics, artifacts) in experiment "
                    f"'{self.state.experiment}'. The workflow carries on. Set MLFLOW_TRACKING_URI or "
                    "--logger-mlflow-tracking-uri to a working store; --logger-mlflow-strict makes this "
                    "an error."
                )

    def _open(self, uri: str, experiment: str) -> None:
        import mlflow  # noqa: F401 - heavy (about 1.5 s): imported only when there is work to log
        from mlflow import MlflowClient

        for name in ("alembic", "mlflow.store.db.utils"):  # "creating tables" chatter on a new store
            logging.getLogger(name).setLevel(logging.WARNING)
        if uri.startswith(("http://", "https://")):
            self._probe_http(uri, experiment)
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            experiment_id = client.create_experiment(experiment)
        elif found.lifecycle_stage != "active":
            raise RuntimeError(
                f"experiment '{experiment}' is deleted; restore it (mlflow experiments restore) "
                "or choose another name with --logger-mlflow-experiment"
            )
        else:
            experiment_id = found.experiment_id
        info = self.state.info
        tags = {
            "snakemake.command": truncate(str(info.get("cmd") or " ".join(sys.argv)), MAX_TAG_VALUE),
            "snakemake.config_md5": str(info.get("config_md5")),
            "snakemake.version": str(info.get("snakemake_version")),
            "snakemake.workflow_id": str(info.get("workflow_id")),
            "snakemake.snakefile": str(info.get("snakefile_main")),
            "snakemake.workdir": os.getcwd(),
            "snakemake.configfiles": truncate(
                json.dumps([str(f) for f in info.get("configfiles") or []]), 8000
            ),
            "host": str(info.get("host") or platform.node()),
            "mlflow.user": str(info.get("user")),
            "mlflow.source.name": str(info.get("snakefile_main")),
        }
        tags.update(_git_info(self.state.basedir or str(info.get("basedir") or os.getcwd())))
        started = info.get("started")
        run = client.create_run(
            experiment_id,
            start_time=_ms(started),
            tags=tags,
            run_name=f"snakemake {info.get('datetime') or time.strftime('%Y-%m-%d %H:%M:%S')}",
        )
        self.client, self.experiment_id, self.parent_id = client, experiment_id, run.info.run_id
        metrics = []
        if self.state.jobs_planned is not None:
            metrics.append(("jobs_planned", float(self.state.jobs_planned), 0))
        params = {}
        if self.state.config is not None:
            params = flatten(self.state.config, "config")
            client.log_dict(self.parent_id, self.state.config, "config.json")
        self._batch(self.parent_id, metrics=metrics, params=params)

    def _probe_http(self, uri: str, experiment: str) -> None:
        """One quick request without retries: MLflow's client retries for minutes otherwise."""
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request

        response = http_request(
            get_default_host_creds(uri),
            "/api/2.0/mlflow/experiments/get-by-name",
            "GET",
            max_retries=0,
            timeout=HTTP_PROBE_TIMEOUT,
            raise_on_status=False,
            params={"experiment_name": experiment},
        )
        if response.status_code not in (200, 404):
            raise RuntimeError(f"HTTP {response.status_code} from {uri}: {response.text[:200]}")

    # ---- asynchronous part: Snakemake's QueueListener thread ----------------------------------

    def handle(self, record: logging.LogRecord) -> None:
        event = getattr(record, "event", None)
        if event is None or self.disabled:
            return
        if event == LogEvent.ERROR:
            # Fatal errors end in an ERROR event after every finished job; a job that failed and
            # was then retried successfully (--retries) is followed by its JOB_FINISHED.
            self.workflow_error = str(record.getMessage())
            return
        if event == LogEvent.JOB_FINISHED:
            self.counts["finished"] += 1
            self.workflow_error = None
        elif event in (LogEvent.JOB_ERROR, LogEvent.GROUP_ERROR):
            self.counts["failed"] += 1
        if event == LogEvent.RUN_INFO:
            if self.state.jobs_planned != 0:
                self.start()
            return
        if self.parent_id is None or self.broken:
            return
        if event == LogEvent.JOB_INFO:
            self._guard("starting the run of a job", self._job_started, record)
        elif event == LogEvent.JOB_FINISHED:
            self._guard("logging a finished job", self._job_finished, record)
        elif event == LogEvent.JOB_ERROR:
            self._guard("logging a failed job", self._job_failed, record.jobid, list(record.log), record)
        elif event == LogEvent.GROUP_ERROR:
            for info in getattr(record, "job_error_info", []):
                self._guard(
                    "logging a failed job", self._job_failed, info["jobid"], list(info["log"]), record
                )

    def _guard(self, what: str, func, *args) -> None:
        try:
            func(*args)
        except Exception as exc:  # noqa: BLE001 - logging must never break the workflow
            self.broken = f"{what}: {_describe(exc)}"
            consequence = (
                "no further jobs are started (--logger-mlflow-strict)"
                if self.settings.strict
                else "the workflow carries on"
            )
            self.logger.warning(
                f"MLflow tracking stopped: {what} failed on {self.state.uri} ({_describe(exc)}). "
                f"Not logged from here on: the remaining jobs of this invocation and the final status "
                f"of parent run {self.parent_id} (experiment '{self.state.experiment}'); {consequence}."
            )

    def _batch(self, run_id: str, metrics=(), params=None, tags=None, timestamp: int | None = None) -> None:
        """log_batch in chunks within MLflow's limits (1000 metrics, 100 params, 100 tags)."""
        from mlflow.entities import Metric, Param, RunTag

        timestamp = timestamp or _ms()
        seen: dict[tuple[str, int], int] = {}
        metric_entities = []
        for key, value, step in metrics:  # a repeated (key, step) gets a later timestamp: it wins
            offset = seen[key, step] = seen.get((key, step), -1) + 1
            metric_entities.append(Metric(key, value, timestamp + offset, step))
        param_entities = [
            Param(safe_key(k), truncate(str(v), MAX_PARAM_VALUE)) for k, v in (params or {}).items()
        ]
        tag_entities = [RunTag(safe_key(k), truncate(str(v), MAX_TAG_VALUE)) for k, v in (tags or {}).items()]
        for start in range(0, len(metric_entities), 1000):
            self.client.log_batch(run_id, metrics=metric_entities[start : start + 1000])
        for start in range(0, max(len(param_entities), len(tag_entities)), 100):
            self.client.log_batch(
                run_id, params=param_entities[start : start + 100], tags=tag_entities[start : start + 100]
            )

    def _hash_later(self, direction: str, files: list[str]) -> Future:
        if self.hasher is None:
            self.hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-hook-sha256")
        return self.hasher.submit(self._file_tags, direction, files)

    def _hashed(self, record: logging.LogRecord, attribute: str, direction: str, files: list[str]) -> dict:
        """The tags hashed ahead by `capture` (or now, when it did not see the event)."""
        future = getattr(record, attribute, None)
        return future.result() if future is not None else self._file_tags(direction, files)

    def _file_tags(self, direction: str, files: list[str]) -> dict[str, str]:
        """`input:<path>` / `output:<path>` -> sha256 (or why not hashed), for lineage across runs."""
        tags = {}
        for file in files[:MAX_FILE_TAGS]:
            path = os.path.normpath(local_path(file))
            digest = file_digest(path, self.hash_cache)
            if direction == "output":
                self.produced[path] = digest
            elif digest == "not hashed: missing" and path in self.produced:
                digest = self.produced[path]  # a temp() file written and removed in this invocation
            tags[f"{direction}:{path}"] = digest
        if len(files) > MAX_FILE_TAGS:
            tags[f"{direction}s.not_listed"] = f"{len(files) - MAX_FILE_TAGS} more files, not hashed"
        return tags

    def _job_started(self, record: logging.LogRecord) -> None:
        output, log = list(record.output or []), list(record.log or [])
        if not output and not log:  # target-only rules such as `all`: nothing ran, nothing to log
            return
        wildcards = dict(record.wildcards or {})
        extra = getattr(record, "mlflow_job", None) or {}
        tags = {
            "mlflow.parentRunId": self.parent_id,
            "snakemake.rule": record.rule_name,
            "snakemake.jobid": str(record.jobid),
            "snakemake.wildcards": json.dumps(wildcards, default=str),
        }
        if record.shellcmd:
            tags["snakemake.shellcmd"] = truncate(str(record.shellcmd), MAX_TAG_VALUE)
        if extra.get("container"):
            tags["container.image"] = extra["container"]
        name = run_name(record.rule_name, wildcards)
        run = self.client.create_run(
            self.experiment_id, start_time=_ms(record.created), tags=tags, run_name=name
        )
        run_id = run.info.run_id
        self.jobs[record.jobid] = _Job(run_id, name, output, log, record.benchmark, extra.get("params"))
        params = {f"wildcards.{key}": value for key, value in wildcards.items()}
        params["threads"] = record.threads
        resources = record.resources
        items = resources.items() if hasattr(resources, "items") else []
        params.update({f"resources.{k}": v for k, v in items if not str(k).startswith("_")})
        tags = self._hashed(record, "mlflow_inputs", "input", list(record.input or []))
        self._batch(run_id, params=params, tags=tags)

    def _job_finished(self, record: logging.LogRecord) -> None:
        job = self.jobs.pop(record.job_id, None)
        if job is None:
            return
        timestamp = _ms(record.created)
        tags = self._hashed(record, "mlflow_outputs", "output", job.output)
        metrics: list[tuple[str, float, int]] = []
        params: dict[str, Any] = {}
        benchmark = {}
        if job.benchmark and os.path.isfile(job.benchmark):
            try:
                benchmark = parse_benchmark(job.benchmark)
            except (OSError, ValueError) as exc:
                tags["hook.benchmark"] = f"unreadable: {_describe(exc)}"
            for step, row in enumerate(benchmark.get("rows", [])):
                metrics += [(key, value, step) for key, value in row.items()]
        if "params" in benchmark:
            params = flatten(benchmark["params"], "params") if benchmark["params"] else {}
        elif job.params is not None:  # no benchmark (or not --benchmark-extended): the job's own
            params = flatten(job.params, "params") if job.params else {}
        else:
            tags["hook.params"] = "not available: no benchmark file with --benchmark-extended"
        artifacts = [f for f in job.log if os.path.isfile(local_path(f))]
        for file in job.output:
            path = local_path(file)
            if os.path.basename(path) == "metrics.json" and os.path.isfile(path):
                try:
                    with open(path) as handle:
                        data = json.load(handle)
                    metrics += metrics_from_json(data) if isinstance(data, dict) else []
                    artifacts.append(path)
                except (OSError, ValueError) as exc:
                    tags[f"hook.metrics:{os.path.normpath(path)}"] = f"unreadable: {_describe(exc)}"
            elif os.path.splitext(path)[1].lower() in PLOT_SUFFIXES and os.path.isfile(path):
                if os.path.getsize(path) <= PLOT_LIMIT:
                    artifacts.append(path)
                else:
                    tags[f"hook.plot:{os.path.normpath(path)}"] = "not uploaded: larger than 5 MiB"
        if job.benchmark and os.path.isfile(job.benchmark):
            artifacts.append(job.benchmark)
        self._batch(job.run_id, metrics=metrics, params=params, tags=tags, timestamp=timestamp)
        self._upload(job.run_id, artifacts)
        self.client.set_terminated(job.run_id, "FINISHED", end_time=timestamp)

    def _job_failed(self, jobid: int, logs: list[str], record: logging.LogRecord) -> None:
        job = self.jobs.pop(jobid, None)
        if job is None:
            return
        tags = {"snakemake.error": f"job failed; see {', '.join(logs) or 'the Snakemake log'}"}
        params = flatten(job.params, "params") if job.params else {}
        self._batch(job.run_id, params=params, tags=tags)
        self._upload(job.run_id, [f for f in logs if os.path.isfile(local_path(f))])
        self.client.set_terminated(job.run_id, "FAILED", end_time=_ms(record.created))

    def _upload(self, run_id: str, files: list[str]) -> None:
        for file in dict.fromkeys(files):
            path = local_path(file)
            if os.path.getsize(path) > LOG_LIMIT:
                self._batch(
                    run_id, tags={f"hook.artifact:{os.path.normpath(path)}": "not uploaded: > 50 MiB"}
                )
                continue
            self.client.log_artifact(run_id, path, artifact_dir(path))

    # ---- the end: main thread, after the listener has drained the queue ----------------------

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.hasher is not None:
            self.hasher.shutdown(wait=True, cancel_futures=True)
        if self.parent_id is None or self.broken:
            return
        try:
            for job in self.jobs.values():  # still running when Snakemake stopped
                self.client.set_terminated(job.run_id, "KILLED")
            if self.workflow_error:
                status = "FAILED"
            elif self.jobs:  # no error reported, yet jobs never ended: interrupted
                status = "KILLED"
            else:
                status = "FINISHED"
            metrics = [
                ("jobs_finished", float(self.counts["finished"]), 0),
                ("jobs_failed", float(self.counts["failed"]), 0),
            ]
            tags = {"snakemake.error": truncate(self.workflow_error, 5000)} if self.workflow_error else {}
            self._batch(self.parent_id, metrics=metrics, tags=tags)
            self.client.set_terminated(self.parent_id, status)
        except Exception as exc:  # noqa: BLE001
            self.logger.warning(
                f"MLflow tracking: ending parent run {self.parent_id} on {self.state.uri} failed "
                f"({_describe(exc)}); it stays RUNNING in experiment '{self.state.experiment}'."
            )
