"""The MLflow side of the logger plugin: one parent run per invocation, one child run per job.

This module is the run lifecycle: which event opens, fills and ends which run, and what a failure
stops. The rest is decided elsewhere, one concern a module: `capture.py` (what the logging thread
collects and hands over), `store.py` (opening the store, writing batches), `experiment.py` (the
experiment), `runs.py` (what each run gets), `hashing.py` (file digests), `copies.py` (a job's
files, copied and uploaded), `failures.py` (what a failed call means, in one line).

Threads (see snakemake/logging.py, LoggerManager):
- `capture(record)` is a filter on Snakemake's logger, so it runs synchronously in the thread that
  logs the event (the main process's scheduler). It only collects what is not in the event itself
  (the workflow's config, a job's container image and params) and, with `strict`, opens the store
  so that a failure can stop the workflow before any job runs. What it collects for `handle` goes
  on the record as one `capture.Captured` object (`record.mlflow_captured`).
- `handle(record)` runs in Snakemake's single QueueListener thread: every MLflow write happens
  there, one after another, so parallel jobs never write concurrently (no "database is locked").
- Files are hashed by one more thread (`hashing.Hasher`), fed by `capture` as soon as a job starts
  (inputs) or ends (outputs): the listener may lag behind (opening a new SQLite store takes
  seconds) and a temp() file may be gone by the time it gets there.
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

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from snakemake_interface_logger_plugins.common import LogEvent

from . import runs, store
from .capture import Captured, SnakemakeObjects, attach, captured
from .copies import Copies
from .failures import TrackingStoreError, describe, store_unreachable
from .hashing import Hasher
from .runs import Job
from .store import log_batch, ms
from .uri import runs_table_url

STARTED_FIELDS = (
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
        self.snakemake = SnakemakeObjects(logger)
        self.hasher = Hasher()
        self.copies = Copies()
        self.client: Any = None
        self.experiment_id: str | None = None
        self.parent_id: str | None = None
        self.jobs: dict[int, Job] = {}
        self.outputs: dict[int, list[str]] = {}  # jobid -> outputs (JOB_FINISHED carries only the id)
        self.disabled = dryrun  # True once tracking is off for this invocation (never turned back on)
        self.broken: str | None = None  # why logging stopped, once it did
        self.start_lock = threading.Lock()
        self.started = False
        self.workflow_error: str | None = None
        self.counts = {"finished": 0, "failed": 0}
        self.closed = False
        self.unended: list[tuple[str, str, int]] = []  # (run id, status, end ms) of jobs ended after a stop
        self.not_logged = 0  # jobs started after tracking stopped

    # ---- synchronous part: runs in the thread that logs the event ----------------------------

    def capture(self, record: logging.LogRecord) -> bool:
        event = getattr(record, "event", None)
        if event is None or self.disabled:
            return True
        if event == LogEvent.WORKFLOW_STARTED:
            self.state.info = {key: getattr(record, key, None) for key in STARTED_FIELDS}
            self.state.info["started"] = record.created
            self.snakemake.version = self.state.info["snakemake_version"]
        elif event == LogEvent.RUN_INFO:
            self.state.jobs_planned = (getattr(record, "stats", None) or {}).get("total")
            facts = self.snakemake.workflow()
            if facts is not None and facts.touch:
                self.disabled = True
            elif facts is not None:
                self.state.config, self.state.basedir = facts.config, facts.basedir
            if self.state.jobs_planned == 0:  # e.g. --until with everything done: no run to log
                return True
            if self.settings.strict and not self.disabled:
                self.start()  # raises TrackingStoreError: the workflow stops before any job runs
        elif event == LogEvent.JOB_INFO:
            found = Captured(job=self.snakemake.job())
            output, log = list(record.output or []), list(record.log or [])
            if runs.has_run(output, log):
                self.outputs[record.jobid] = output
                found.inputs = self.hasher.later("input", list(record.input or []))
            attach(record, found)
        elif event == LogEvent.JOB_FINISHED and record.job_id in self.outputs:
            attach(record, Captured(outputs=self.hasher.later("output", self.outputs.pop(record.job_id))))
        elif event == LogEvent.JOB_ERROR and not self.broken:
            # Now, before Snakemake removes the logs to retry the job: the run keeps the failed attempt's.
            attach(record, Captured(logs={record.jobid: self.copies.keep_all(list(record.log or []))}))
        elif event == LogEvent.GROUP_ERROR and not self.broken:
            infos = getattr(record, "job_error_info", [])
            kept = {info.get("jobid"): self.copies.keep_all(list(info.get("log") or [])) for info in infos}
            attach(record, Captured(logs=kept))
        elif event == LogEvent.JOB_STARTED and self.settings.strict and self.broken:
            raise TrackingStoreError(
                f"MLflow logging failed ({self.broken}) and --logger-mlflow-strict is on: "
                "no further jobs are started."
            )
        return True

    # ---- opening the store --------------------------------------------------------------------

    def start(self) -> None:
        """Open the store, get/create the experiment, create the parent run (once)."""
        with self.start_lock:
            if self.started or self.disabled:
                return
            self.started = True
            self.state.uri = uri = store.store_uri(self.settings, self.state.config)
            self.state.experiment = store.experiment_name(self.settings, self.state.config)
            try:
                self._open(uri, self.state.experiment)
            except Exception as exc:  # noqa: BLE001 - any failure means: no tracking
                self.disabled = True
                jobs = self.state.jobs_planned
                if self.settings.strict:
                    raise TrackingStoreError(
                        f"MLflow tracking store {uri} cannot be used ({describe(exc)}). "
                        "--logger-mlflow-strict is on, so the workflow stops before running any job. "
                        "Fix the store or the URI (MLFLOW_TRACKING_URI or --logger-mlflow-tracking-uri), "
                        "or drop --logger-mlflow-strict to run without tracking."
                    ) from None
                self.logger.warning(
                    f"MLflow tracking is off for this run: the tracking store {uri} cannot be used "
                    f"({describe(exc)}). Not logged: this invocation's parent run and its "
                    f"{jobs if jobs is not None else 'N'} job(s) (params, metrics, artifacts) in experiment "
                    f"'{self.state.experiment}'. The workflow carries on. Set MLFLOW_TRACKING_URI or "
                    "--logger-mlflow-tracking-uri to a working store; --logger-mlflow-strict makes this "
                    "an error."
                )

    def _open(self, uri: str, experiment: str) -> None:
        client, experiment_id = store.open_experiment(uri, experiment)
        info = self.state.info
        tags = runs.parent_tags(info, self.state.basedir)
        run = client.create_run(
            experiment_id, start_time=ms(info.get("started")), tags=tags, run_name=runs.parent_name(info)
        )
        self.client, self.experiment_id, self.parent_id = client, experiment_id, run.info.run_id
        fields = runs.parent_start(self.state.jobs_planned, self.state.config)
        if self.state.config is not None:
            client.log_dict(self.parent_id, self.state.config, "config.json")
        log_batch(client, self.parent_id, metrics=fields.metrics, params=fields.params)

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
        found = captured(record)
        if event == LogEvent.JOB_INFO:
            if self.broken:
                self.not_logged += runs.has_run(list(record.output or []), list(record.log or []))
            else:
                self._step("starting the run", record.jobid, self._job_started, record, found)
        elif event == LogEvent.JOB_FINISHED:
            end = ms(record.created)
            self._end_job(record.job_id, "FINISHED", end, self._job_finished, end, found.outputs)
        elif event == LogEvent.JOB_ERROR:
            logs, kept = list(record.log or []), found.logs.get(record.jobid)
            self._end_job(record.jobid, "FAILED", ms(record.created), self._job_failed, logs, kept)
        elif event == LogEvent.GROUP_ERROR:
            for info in getattr(record, "job_error_info", []):
                logs, kept = list(info["log"]), found.logs.get(info["jobid"])
                self._end_job(info["jobid"], "FAILED", ms(record.created), self._job_failed, logs, kept)

    def _job_started(self, record: logging.LogRecord, found: Captured) -> None:
        output, log = list(record.output or []), list(record.log or [])
        if not runs.has_run(output, log):
            return
        name, tags, fields = runs.job_start(record, self.parent_id, found.job)
        run = self.client.create_run(
            self.experiment_id, start_time=ms(record.created), tags=tags, run_name=name
        )
        job = Job(run.info.run_id, name, output, log, record.benchmark, found.job.get("params"), record.jobid)
        self.jobs[record.jobid] = job
        hashed = self.hasher.result(found.inputs, "input", list(record.input or []))
        log_batch(self.client, job.run_id, params=fields.params, tags=hashed)

    def _job_finished(self, job: Job, end: int, hashing) -> None:
        """`hashing`: the output tags `capture` started hashing (None: it did not see the event)."""
        hashed = self.hasher.result(hashing, "output", job.output)
        fields = runs.job_finished(job)
        tags = {**hashed, **fields.tags}
        log_batch(
            self.client, job.run_id, metrics=fields.metrics, params=fields.params, tags=tags, timestamp=end
        )
        log_batch(
            self.client, job.run_id, tags=self.copies.upload(self.client, job, fields.files, self.logger)
        )

    def _job_failed(self, job: Job, logs: list[str], kept: dict | None) -> None:
        """`kept`: what `capture` copied of the logs when the job failed (None: it did not see it)."""
        kept = self.copies.keep_all(logs) if kept is None else kept
        fields = runs.job_failed(job, logs, kept)
        log_batch(self.client, job.run_id, params=fields.params, tags=fields.tags)
        uploaded = self.copies.upload(self.client, job, fields.files, self.logger, kept)
        log_batch(self.client, job.run_id, tags=uploaded)

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

    def _step(self, what: str, job: Job | int, func, *args) -> None:
        """One MLflow step for one job. A store that cannot be reached stops tracking (`_stop`);
        any other failure is this job's alone: one warning line, a `hook.warning` tag on its run."""
        try:
            func(*args)
        except Exception as exc:  # noqa: BLE001 - logging must never break the workflow
            if store_unreachable(exc):
                self._stop(what, exc)
                return
            if isinstance(job, int):  # starting: the run may exist already (its params failed)
                job = self.jobs.get(job, job)
            name = f"run {job.name} (job {job.jobid})" if isinstance(job, Job) else f"job {job}"
            self.logger.warning(
                f"MLflow: {what} of {name} failed ({describe(exc)}); that run may lack some of its "
                "fields. Tracking carries on."
            )
            if isinstance(job, Job):
                self._tag_problem(job, f"{what} failed: {describe(exc)}")

    def _tag_problem(self, job: Job, text: str) -> None:
        try:
            log_batch(self.client, job.run_id, tags={"hook.warning": text})
        except Exception as exc:  # noqa: BLE001 - the warning line already told
            if store_unreachable(exc):
                self._stop("tagging a job's problem", exc)

    def _stop(self, what: str, exc: BaseException) -> None:
        self.broken = f"{what}: {describe(exc)}"
        consequence = (
            "No further jobs are started (--logger-mlflow-strict)."
            if self.settings.strict
            else "The workflow carries on."
        )
        self.logger.warning(
            f"MLflow tracking stopped: {what} failed on {self.state.uri} ({describe(exc)}): the store "
            f"cannot be reached. Not logged from here on: the remaining jobs of this invocation "
            f"(experiment '{self.state.experiment}', parent run {self.parent_id}); at the end the hook "
            f"connects once more to end that run and the runs left open. {consequence}"
        )

    # ---- the end: main thread, after the listener has drained the queue ----------------------

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.hasher.shutdown()
        try:
            if self.parent_id is not None:
                self._end_runs()
        finally:
            self.copies.remove()

    def _end_runs(self) -> None:
        """End the parent run and the runs left open; once more on a fresh connection when the
        store could not be reached (now, or earlier: then that is the only attempt)."""
        reason = self.broken
        for reconnect in (True,) if self.broken else (False, True):
            try:
                if reconnect:
                    client = store.connect(self.state.uri, self.state.experiment)
                    client.get_run(self.parent_id)  # the store answers
                    self.client = client
                self._end_open_runs()
                return
            except Exception as exc:  # noqa: BLE001 - the workflow's outcome must not depend on it
                reason = f"{'reconnecting: ' if reconnect else ''}{describe(exc)}"
                if not store_unreachable(exc):
                    break
        earlier = f"tracking stopped earlier ({self.broken}), then " if self.broken else ""
        self.logger.warning(
            f"MLflow tracking: parent run {self.parent_id} stays RUNNING in experiment "
            f"'{self.state.experiment}' on {self.state.uri}: {earlier}ending it failed ({reason}). Once "
            f"the store is back: MlflowClient({self.state.uri!r}).set_terminated({self.parent_id!r}, "
            f"{runs.parent_status(self.workflow_error, bool(self.jobs))!r})."
        )

    def _end_open_runs(self) -> None:
        stopped = "tracking stopped before this job ended: its outputs, metrics and files were not logged"
        while self.unended:
            run_id, status, end = self.unended[0]
            log_batch(self.client, run_id, tags={"hook.warning": stopped})
            self.client.set_terminated(run_id, status, end_time=end)
            self.unended.pop(0)
        for job in self.jobs.values():  # still running when Snakemake stopped
            self.client.set_terminated(job.run_id, "KILLED")
        fields = runs.parent_end(self.counts, self.workflow_error, self.broken, self.not_logged)
        log_batch(self.client, self.parent_id, metrics=fields.metrics, tags=fields.tags)
        self.client.set_terminated(self.parent_id, runs.parent_status(self.workflow_error, bool(self.jobs)))
        url = runs_table_url(self.state.uri, self.experiment_id)
        local = "" if self.state.uri.startswith(("http://", "https://")) else " (run `mlflow ui` here first)"
        self.logger.info(
            f"MLflow: this invocation is run {self.parent_id} of experiment '{self.state.experiment}' "
            f"in {self.state.uri}; its runs table: {url}{local}"
        )
