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

What goes wrong, and what it stops:
- A job's files are read once, into the hook's own copy, and that copy is uploaded. A file that
  vanished or cannot be read is that job's problem: a `hook.artifact:<path>` tag on its run and one
  warning line. A failed job's logs are copied at once by `capture`, before Snakemake removes them
  to retry the job (--retries), so its run keeps the log of the attempt that failed.
- A store that cannot be reached (no connection, no answer, HTTP 5xx, a database error) stops
  tracking for the rest of the invocation; `close()` then connects once more to end the runs left
  open. A store that answers but refuses one request (HTTP 4xx) is again that job's problem.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
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
    split_tags,
    tags_from_json,
    truncate,
    versions_from_log,
)
from .uri import runs_table_url, tracking_uri

PLOT_SUFFIXES = {".png", ".svg", ".jpg", ".jpeg", ".pdf"}
PLOT_LIMIT = 5 << 20  # plots larger than 5 MiB are not uploaded
LOG_LIMIT = 50 << 20  # nor logs larger than 50 MiB
MAX_FILE_TAGS = 200  # input/output files tagged (and hashed) per direction and job
HTTP_PROBE_TIMEOUT = 10
OVER_LIMIT = {  # size limit -> the tag that says a file was not uploaded
    PLOT_LIMIT: ("hook.plot", "not uploaded: larger than 5 MiB"),
    LOG_LIMIT: ("hook.artifact", "not uploaded: > 50 MiB"),
}

# What is lost when Snakemake's Workflow or Job object is not where `_caller_instance` looks, and
# what to do about it (the warning `MlflowHook._lost` prints once per kind).
LOST = {
    "Workflow": (
        "the workflow's config: its mlflow.tracking_uri and mlflow.experiment are not used (the store "
        "falls back to --logger-mlflow-tracking-uri, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db "
        "here; the experiment to --logger-mlflow-experiment, else the working directory's name), so "
        "this hook and register_model may write to different stores; and the parent run's config.* "
        "params and config.json",
        "Give the store and experiment explicitly (--logger-mlflow-tracking-uri and "
        "--logger-mlflow-experiment, or MLFLOW_TRACKING_URI), or use the Snakemake version this "
        "plugin is tested with (pyproject.toml)",
    ),
    "Job": (
        "each job's params when it has no --benchmark-extended benchmark file, and its container.image tag",
        "Run with --benchmark-extended (the params are then read from the benchmark file), or use "
        "the Snakemake version this plugin is tested with (pyproject.toml)",
    ),
}


# What the experiment is: model training, not GenAI. MLflow UIs that pick an experiment's view by this
# tag open it on the runs table; 3.17's picks by its workflowType instead (uri.runs_table_url, the
# link printed at the end). Set when the experiment is created, or on an existing one that has no
# kind or only the UI's own guess (`*_inferred`); a kind someone chose stays.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def _kind_unset(kind: str | None) -> bool:
    return not kind or kind.endswith("_inferred") or kind == "no_inferred_type"


def _ms(seconds: float | None = None) -> int:
    return int((time.time() if seconds is None else seconds) * 1000)


class TrackingStoreError(ApiError):
    """The store cannot be used and `strict` is on. An ApiError subclass only because Snakemake
    prints those as one clean 'Error: <message>' line (a WorkflowError gets a traceback of the
    logging internals that raised it)."""


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and those it was raised from or while handling (MLflow wraps the requests error)."""
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _connection_error(exc: BaseException) -> BaseException | None:
    """The error in `exc`'s chain that says no connection was made or no answer came, if any."""
    try:
        from requests.exceptions import ConnectionError as RequestsConnectionError
        from requests.exceptions import RetryError, Timeout
    except ImportError:  # MLflow (and so requests) not importable: the failure is not a connection
        return None
    kinds = (RequestsConnectionError, Timeout, RetryError, ConnectionError, TimeoutError)
    return next((err for err in _chain(exc) if isinstance(err, kinds)), None)


def _store_unreachable(exc: BaseException) -> bool:
    """Whether a failed MLflow call means the store cannot be used: no connection or no answer, an
    HTTP 5xx, a database error (MLflow raises those as 5xx-coded MlflowExceptions), or an OSError
    (the store's own files: the job's files are read into the hook's copy first, see `_upload`).
    False when the store answered and refused this one request (HTTP 4xx), and for anything else
    (a bug in this hook must not end tracking either)."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import HTTPError

    if _connection_error(exc) is not None:
        return True
    for err in _chain(exc):
        if isinstance(err, HTTPError) and err.response is not None:  # an artifact upload's answer
            return err.response.status_code >= 500
        if isinstance(err, MlflowException):  # error codes map to HTTP statuses, also for local stores
            return err.get_http_status_code() >= 500
    return isinstance(exc, OSError)


def _describe(exc: BaseException) -> str:
    """A one-line reason: 'cannot connect: <OS error>' for connection failures, the OS error and
    its file for local file errors, else the exception's first line."""
    connection = _connection_error(exc)
    if connection is not None:
        for text in (str(exc), str(connection)):
            errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
            if errno:
                return f"cannot connect: {errno.group(1).strip()}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__


def _caller_instance(cls: type, max_depth: int = 40) -> Any:
    """The nearest `self` of type `cls` up the current thread's stack (None if not found).

    Snakemake's events do not carry the workflow's config or a job's container image; the
    objects that logged them do (Workflow.execute logs RUN_INFO, Job.log_info JOB_INFO). Without
    them the hook still logs everything the events and files hold, and says once what it lost
    (`MlflowHook._lost`): a Snakemake release that moves them must not go unnoticed.
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


def _versions(logs: list[str]) -> dict[str, str]:
    """The software versions the job's log records, as `version.<name>` tags (its own run_cli line)."""
    for log in logs:
        try:
            found = versions_from_log(local_path(log))
        except OSError:  # the upload of the same file says what went wrong
            continue
        if found:
            return found
    return {}


@dataclass
class _Job:
    run_id: str
    name: str
    output: list[str]
    log: list[str]
    benchmark: str | None
    params: dict[str, Any] | None  # from the Job object: used when the benchmark has none
    jobid: int


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
        self.lost: set[str] = set()  # Snakemake objects not found (warned once each)
        self.unended: list[tuple[str, str, int]] = []  # (run id, status, end ms) of jobs ended after a stop
        self.not_logged = 0  # jobs started after tracking stopped
        self.copies: str | None = None  # the hook's copies of job files (a temporary directory)
        self.copies_lock = threading.Lock()  # made by whichever thread needs it first

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
        elif event == LogEvent.JOB_ERROR and not self.broken:
            # Now, before Snakemake removes the logs to retry the job: the run keeps the failed attempt's.
            record.mlflow_logs = self._keep_all(list(record.log or []))
        elif event == LogEvent.GROUP_ERROR and not self.broken:
            for info in getattr(record, "job_error_info", []):
                info["mlflow_logs"] = self._keep_all(list(info.get("log") or []))
        elif event == LogEvent.JOB_STARTED and self.settings.strict and self.broken:
            raise TrackingStoreError(
                f"MLflow logging failed ({self.broken}) and --logger-mlflow-strict is on: "
                "no further jobs are started."
            )
        return True

    def _capture_workflow(self, record: logging.LogRecord) -> None:
        stats = getattr(record, "stats", None) or {}
        self.state.jobs_planned = stats.get("total")
        workflow = self._snakemake_object("snakemake.workflow", "Workflow")
        if workflow is None:
            return
        try:
            if workflow.touch:  # --touch runs no job: nothing to log
                self.disabled = True
                return
            config = json.loads(json.dumps(workflow.config, default=str))
            basedir = str(workflow.basedir)
        except Exception as exc:  # noqa: BLE001 - the object is there but no longer looks as expected
            self._lost("Workflow", f"reading its touch/config/basedir failed: {_describe(exc)}")
            return
        self.state.config, self.state.basedir = config, basedir

    def _capture_job(self) -> dict[str, Any]:
        job = self._snakemake_object("snakemake.jobs", "Job")
        if job is None:
            return {}
        try:
            extra: dict[str, Any] = {"params": {key: value for key, value in job.params.items()}}
            if job.container_img is not None:  # only when Snakemake runs it in a container
                extra["container"] = str(job.container_img_url)
        except Exception as exc:  # noqa: BLE001
            self._lost("Job", f"reading its params/container_img failed: {_describe(exc)}")
            return {}
        return extra

    def _snakemake_object(self, module: str, name: str) -> Any:
        """The Snakemake `module.name` object that logged the current event, or None (said once).
        The class is taken from the modules Snakemake loaded, not imported: an object of it can be
        up the stack only if it is loaded (and importing snakemake.workflow alone is circular)."""
        cls = getattr(sys.modules.get(module), name, None)
        if not isinstance(cls, type):
            self._lost(name, f"no class {module}.{name} is loaded")
            return None
        found = _caller_instance(cls)
        if found is None:
            self._lost(name, f"no {module}.{name} up the stack of the thread that logged the event")
        return found

    def _lost(self, kind: str, why: str) -> None:
        if kind in self.lost:
            return
        self.lost.add(kind)
        lost, fix = LOST[kind]
        version = self.state.info.get("snakemake_version") or "this"
        self.logger.warning(
            f"MLflow hook: Snakemake {version}'s {kind} object was not found ({why}); this Snakemake "
            f"release may have moved it. Not logged for this invocation: {lost}. {fix}."
        )

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
            experiment_id = client.create_experiment(experiment, tags=dict([EXPERIMENT_KIND]))
        elif found.lifecycle_stage != "active":
            raise RuntimeError(
                f"experiment '{experiment}' is deleted; restore it (mlflow experiments restore) "
                "or choose another name with --logger-mlflow-experiment"
            )
        else:
            experiment_id = found.experiment_id
            if _kind_unset(found.tags.get(EXPERIMENT_KIND[0])):
                client.set_experiment_tag(experiment_id, *EXPERIMENT_KIND)
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
        if self.parent_id is None:
            return
        if event == LogEvent.JOB_INFO:
            if self.broken:
                self.not_logged += bool(record.output or record.log)
            else:
                self._step("starting the run", record.jobid, self._job_started, record)
        elif event == LogEvent.JOB_FINISHED:
            self._end_job(record.job_id, "FINISHED", _ms(record.created), self._job_finished, record)
        elif event == LogEvent.JOB_ERROR:
            logs = list(record.log or [])
            kept = getattr(record, "mlflow_logs", None)
            self._end_job(record.jobid, "FAILED", _ms(record.created), self._job_failed, logs, kept)
        elif event == LogEvent.GROUP_ERROR:
            for info in getattr(record, "job_error_info", []):
                logs, kept = list(info["log"]), info.get("mlflow_logs")
                self._end_job(info["jobid"], "FAILED", _ms(record.created), self._job_failed, logs, kept)

    def _end_job(self, jobid: int, status: str, end: int, log_step, *args) -> None:
        """Log what a job left (`log_step`), then end its run; after a stop, `close()` ends it."""
        job = self.jobs.pop(jobid, None)
        if job is None:
            return
        if not self.broken:
            self._step(f"logging the {status.lower()} job", job, log_step, job, *args)
        if not self.broken:
            self._step("ending the run", job, self.client.set_terminated, job.run_id, status, end)
        if self.broken:
            self.unended.append((job.run_id, status, end))

    def _step(self, what: str, job: _Job | int, func, *args) -> None:
        """One MLflow step for one job. A store that cannot be reached stops tracking (`_stop`);
        any other failure is this job's alone: one warning line, a `hook.warning` tag on its run."""
        try:
            func(*args)
        except Exception as exc:  # noqa: BLE001 - logging must never break the workflow
            if _store_unreachable(exc):
                self._stop(what, exc)
                return
            if isinstance(job, int):  # starting: the run may exist already (its params failed)
                job = self.jobs.get(job, job)
            name = f"run {job.name} (job {job.jobid})" if isinstance(job, _Job) else f"job {job}"
            self.logger.warning(
                f"MLflow: {what} of {name} failed ({_describe(exc)}); that run may lack some of its "
                "fields. Tracking carries on."
            )
            if isinstance(job, _Job):
                self._tag_problem(job, f"{what} failed: {_describe(exc)}")

    def _tag_problem(self, job: _Job, text: str) -> None:
        try:
            self._batch(job.run_id, tags={"hook.warning": text})
        except Exception as exc:  # noqa: BLE001 - the warning line already told
            if _store_unreachable(exc):
                self._stop("tagging a job's problem", exc)

    def _stop(self, what: str, exc: BaseException) -> None:
        self.broken = f"{what}: {_describe(exc)}"
        consequence = (
            "No further jobs are started (--logger-mlflow-strict)."
            if self.settings.strict
            else "The workflow carries on."
        )
        self.logger.warning(
            f"MLflow tracking stopped: {what} failed on {self.state.uri} ({_describe(exc)}): the store "
            f"cannot be reached. Not logged from here on: the remaining jobs of this invocation "
            f"(experiment '{self.state.experiment}', parent run {self.parent_id}); at the end the hook "
            f"connects once more to end that run and the runs left open. {consequence}"
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
        tags.update(split_tags(extra.get("params") or {})[1])  # e.g. a sweep trial's sweep and settings
        name = run_name(record.rule_name, wildcards)
        run = self.client.create_run(
            self.experiment_id, start_time=_ms(record.created), tags=tags, run_name=name
        )
        run_id = run.info.run_id
        self.jobs[record.jobid] = _Job(
            run_id, name, output, log, record.benchmark, extra.get("params"), record.jobid
        )
        params = {f"wildcards.{key}": value for key, value in wildcards.items()}
        params["threads"] = record.threads
        resources = record.resources
        items = resources.items() if hasattr(resources, "items") else []
        params.update({f"resources.{k}": v for k, v in items if not str(k).startswith("_")})
        tags = self._hashed(record, "mlflow_inputs", "input", list(record.input or []))
        self._batch(run_id, params=params, tags=tags)

    def _job_finished(self, job: _Job, record: logging.LogRecord) -> None:
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
        if "params" in benchmark or job.params is not None:
            # the benchmark's first; without one (or not --benchmark-extended), the job's own
            source = benchmark.get("params", job.params)
            raw, asked = split_tags(source) if isinstance(source, Mapping) else (source, {})
            params = flatten(raw, "params") if raw else {}
            tags.update(asked)  # set at the start already, unless the Job object was not found
        else:
            tags["hook.params"] = "not available: no benchmark file with --benchmark-extended"
        artifacts = {f: LOG_LIMIT for f in job.log if os.path.isfile(local_path(f))}
        tags |= _versions(list(artifacts))
        for file in job.output:
            path = local_path(file)
            if os.path.basename(path) == "metrics.json" and os.path.isfile(path):
                try:
                    with open(path) as handle:
                        data = json.load(handle)
                    if isinstance(data, dict):
                        metrics += metrics_from_json(data)
                        tags.update(tags_from_json(data))
                    artifacts[path] = LOG_LIMIT
                except (OSError, ValueError) as exc:
                    tags[f"hook.metrics:{os.path.normpath(path)}"] = f"unreadable: {_describe(exc)}"
            elif os.path.splitext(path)[1].lower() in PLOT_SUFFIXES and os.path.isfile(path):
                artifacts[path] = PLOT_LIMIT
        if job.benchmark and os.path.isfile(job.benchmark):
            artifacts[job.benchmark] = LOG_LIMIT
        self._batch(job.run_id, metrics=metrics, params=params, tags=tags, timestamp=timestamp)
        self._batch(job.run_id, tags=self._upload(job, artifacts))

    def _job_failed(self, job: _Job, logs: list[str], kept: dict | None) -> None:
        """`kept`: what `capture` copied of the logs when the job failed (None: it did not see it)."""
        tags = {"snakemake.error": f"job failed; see {', '.join(logs) or 'the Snakemake log'}"}
        raw, _ = split_tags(job.params or {})
        params = flatten(raw, "params") if raw else {}
        kept = self._keep_all(logs) if kept is None else kept
        tags |= _versions([copy for copy in kept.values() if isinstance(copy, str)])
        for file in logs:
            if isinstance(kept.get(file), FileNotFoundError):  # not written, or removed by the job itself
                tags[f"hook.artifact:{os.path.normpath(local_path(file))}"] = "not uploaded: no such file"
        self._batch(job.run_id, params=params, tags=tags)
        present = {f: LOG_LIMIT for f in logs if not isinstance(kept.get(f), FileNotFoundError)}
        self._batch(job.run_id, tags=self._upload(job, present, kept))

    # ---- a job's files: read once, into the hook's own copy, which is uploaded ----------------

    def _keep(self, file: str, limit: int) -> str | None:
        """A private copy of `file`, or None when it is larger than `limit`. Raises OSError when the
        file cannot be read (FileNotFoundError: it is not there): the job's problem, not the store's."""
        path = local_path(file)
        if os.path.getsize(path) > limit:
            return None
        with self.copies_lock:
            if self.copies is None:
                self.copies = tempfile.mkdtemp(prefix="snakemake-mlflow-")
        folder = tempfile.mkdtemp(dir=self.copies)  # one folder per copy: it keeps the file's name
        try:
            return shutil.copyfile(path, os.path.join(folder, os.path.basename(path)))
        except OSError:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def _keep_all(self, files: list[str]) -> dict[str, str | OSError | None]:
        """`_keep` for each of a failed job's logs, in `capture`: a copy, None, or why not."""
        kept: dict[str, str | OSError | None] = {}
        for file in files:
            try:
                kept[file] = self._keep(file, LOG_LIMIT)
            except OSError as exc:
                kept[file] = exc
        return kept

    def _upload(self, job: _Job, files: dict[str, int], kept: dict | None = None) -> dict[str, str]:
        """Each file (-> its size limit) to the job's run, from the hook's copy (`kept` ones as they
        were then); returns the tags that say which were not uploaded and why. Only the store's
        failures raise: a file that vanished or cannot be read is one warning line and a tag."""
        tags: dict[str, str] = {}
        for file, limit in files.items():
            path = os.path.normpath(local_path(file))
            try:
                copy = kept[file] if kept is not None and file in kept else self._keep(file, limit)
                if isinstance(copy, OSError):
                    raise copy
            except OSError as exc:
                tags[f"hook.artifact:{path}"] = f"not uploaded: {_describe(exc)}"
                self.logger.warning(
                    f"MLflow: {path} of run {job.name} (job {job.jobid}) not uploaded ({_describe(exc)}); "
                    "its run says so in a hook.artifact tag. Tracking carries on."
                )
                continue
            if copy is None:
                key, text = OVER_LIMIT[limit]
                tags[f"{key}:{path}"] = text
                continue
            try:
                self.client.log_artifact(job.run_id, copy, artifact_dir(path))
            finally:
                shutil.rmtree(os.path.dirname(copy), ignore_errors=True)
        return tags

    # ---- the end: main thread, after the listener has drained the queue ----------------------

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.hasher is not None:
            self.hasher.shutdown(wait=True, cancel_futures=True)
        try:
            if self.parent_id is not None:
                self._end_runs()
        finally:
            if self.copies is not None:
                shutil.rmtree(self.copies, ignore_errors=True)

    def _end_runs(self) -> None:
        """End the parent run and the runs left open; once more on a fresh connection when the
        store could not be reached (now, or earlier: then that is the only attempt)."""
        reason = self.broken
        for reconnect in (True,) if self.broken else (False, True):
            try:
                if reconnect:
                    self._reconnect()
                self._end_open_runs()
                return
            except Exception as exc:  # noqa: BLE001 - the workflow's outcome must not depend on it
                reason = f"{'reconnecting: ' if reconnect else ''}{_describe(exc)}"
                if not _store_unreachable(exc):
                    break
        earlier = f"tracking stopped earlier ({self.broken}), then " if self.broken else ""
        self.logger.warning(
            f"MLflow tracking: parent run {self.parent_id} stays RUNNING in experiment "
            f"'{self.state.experiment}' on {self.state.uri}: {earlier}ending it failed ({reason}). Once "
            f"the store is back: MlflowClient({self.state.uri!r}).set_terminated({self.parent_id!r}, "
            f"{self._parent_status()!r})."
        )

    def _reconnect(self) -> None:
        from mlflow import MlflowClient

        if self.state.uri.startswith(("http://", "https://")):
            self._probe_http(self.state.uri, self.state.experiment)
        client = MlflowClient(tracking_uri=self.state.uri)
        client.get_run(self.parent_id)  # the store answers
        self.client = client

    def _parent_status(self) -> str:
        if self.workflow_error:
            return "FAILED"
        return "KILLED" if self.jobs else "FINISHED"  # jobs never ended, no error: interrupted

    def _end_open_runs(self) -> None:
        stopped = "tracking stopped before this job ended: its outputs, metrics and files were not logged"
        while self.unended:
            run_id, status, end = self.unended[0]
            self._batch(run_id, tags={"hook.warning": stopped})
            self.client.set_terminated(run_id, status, end_time=end)
            self.unended.pop(0)
        for job in self.jobs.values():  # still running when Snakemake stopped
            self.client.set_terminated(job.run_id, "KILLED")
        metrics = [
            ("jobs_finished", float(self.counts["finished"]), 0),
            ("jobs_failed", float(self.counts["failed"]), 0),
        ]
        tags = {"snakemake.error": truncate(self.workflow_error, 5000)} if self.workflow_error else {}
        if self.broken:
            tags["hook.warning"] = (
                f"tracking stopped mid-run ({self.broken}); {self.not_logged} later job(s) not logged"
            )
        self._batch(self.parent_id, metrics=metrics, tags=tags)
        self.client.set_terminated(self.parent_id, self._parent_status())
        url = runs_table_url(self.state.uri, self.experiment_id)
        local = "" if self.state.uri.startswith(("http://", "https://")) else " (run `mlflow ui` here first)"
        self.logger.info(
            f"MLflow: this invocation is run {self.parent_id} of experiment '{self.state.experiment}' "
            f"in {self.state.uri}; its runs table: {url}{local}"
        )
