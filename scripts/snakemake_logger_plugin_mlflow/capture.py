"""What `capture` (the thread that logs an event) collects that the event lacks, and how it reaches
`handle` (the listener thread): one `Captured` object on the record, the only attribute the hook adds.

Snakemake's events do not carry the workflow's config or a job's container image and params; the
objects that logged them do (Workflow.execute logs RUN_INFO, Job.log_info JOB_INFO), up the stack of
the logging thread. Without them the hook still logs everything the events and files hold, and says
once per kind what it lost: a Snakemake release that moves them must not go unnoticed.
"""

from __future__ import annotations

import json
import logging
import sys
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .copies import Kept
from .failures import describe

ATTRIBUTE = "mlflow_captured"


@dataclass
class Captured:
    """Set by `capture` on the record it saw, read by `handle` when the listener gets to that record.
    A record `capture` did not see has none: `handle` then reads and hashes the files itself."""

    job: dict[str, Any] = field(default_factory=dict)  # JOB_INFO: the Job object's params, container
    inputs: Future | None = None  # JOB_INFO: the input files' tags, hashed on the hashing thread
    outputs: Future | None = None  # JOB_FINISHED: the output files' tags, likewise
    logs: dict[int, Kept] = field(default_factory=dict)  # JOB_ERROR, GROUP_ERROR: jobid -> its logs' copies


def attach(record: logging.LogRecord, captured: Captured) -> None:
    setattr(record, ATTRIBUTE, captured)


def captured(record: logging.LogRecord) -> Captured:
    """What `capture` attached to `record` (empty when it attached nothing)."""
    found = getattr(record, ATTRIBUTE, None)
    return found if isinstance(found, Captured) else Captured()


# What is lost when Snakemake's Workflow or Job object is not where `caller_instance` looks, and
# what to do about it (the warning `SnakemakeObjects.lost` prints once per kind).
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


def caller_instance(cls: type, max_depth: int = 40) -> Any:
    """The nearest `self` of type `cls` up the current thread's stack (None if not found)."""
    frame = sys._getframe(1)
    for _ in range(max_depth):
        if frame is None:
            return None
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, cls):
            return candidate
        frame = frame.f_back
    return None


@dataclass
class WorkflowFacts:
    touch: bool  # --touch runs no job: nothing to log
    config: dict | None = None  # the resolved config, as JSON data
    basedir: str | None = None


class SnakemakeObjects:
    """Snakemake's Workflow and Job objects that logged the current event; says once per kind when
    one is not found or no longer looks as expected."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.lost: set[str] = set()  # kinds not found (warned once each)
        self.version: str | None = None  # Snakemake's, for the warning

    def workflow(self) -> WorkflowFacts | None:
        workflow = self._find("snakemake.workflow", "Workflow")
        if workflow is None:
            return None
        try:
            if workflow.touch:
                return WorkflowFacts(touch=True)
            config = json.loads(json.dumps(workflow.config, default=str))
            basedir = str(workflow.basedir)
        except Exception as exc:  # noqa: BLE001 - the object is there but no longer looks as expected
            self._lost("Workflow", f"reading its touch/config/basedir failed: {describe(exc)}")
            return None
        return WorkflowFacts(touch=False, config=config, basedir=basedir)

    def job(self) -> dict[str, Any]:
        """The job's params and, when Snakemake runs it in a container, the image ({} if not found)."""
        job = self._find("snakemake.jobs", "Job")
        if job is None:
            return {}
        try:
            extra: dict[str, Any] = {"params": {key: value for key, value in job.params.items()}}
            if job.container_img is not None:  # only when Snakemake runs it in a container
                extra["container"] = str(job.container_img_url)
        except Exception as exc:  # noqa: BLE001
            self._lost("Job", f"reading its params/container_img failed: {describe(exc)}")
            return {}
        return extra

    def _find(self, module: str, name: str) -> Any:
        """The Snakemake `module.name` object that logged the current event, or None (said once).
        The class is taken from the modules Snakemake loaded, not imported: an object of it can be
        up the stack only if it is loaded (and importing snakemake.workflow alone is circular)."""
        cls = getattr(sys.modules.get(module), name, None)
        if not isinstance(cls, type):
            self._lost(name, f"no class {module}.{name} is loaded")
            return None
        found = caller_instance(cls)
        if found is None:
            self._lost(name, f"no {module}.{name} up the stack of the thread that logged the event")
        return found

    def _lost(self, kind: str, why: str) -> None:
        if kind in self.lost:
            return
        self.lost.add(kind)
        lost, fix = LOST[kind]
        self.logger.warning(
            f"MLflow hook: Snakemake {self.version or 'this'}'s {kind} object was not found ({why}); this "
            f"Snakemake release may have moved it. Not logged for this invocation: {lost}. {fix}."
        )
