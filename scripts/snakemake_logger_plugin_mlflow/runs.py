"""What each run gets: its name, tags, params, metrics and files, decided from Snakemake's events
and the files a job left behind. Plain data in, plain data out: no MLflow, no Snakemake."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .content import (
    MAX_TAG_VALUE,
    flatten,
    local_path,
    metrics_from_json,
    parse_benchmark,
    run_name,
    split_tags,
    tags_from_json,
    truncate,
    versions_from_log,
)
from .copies import LOG_LIMIT, PLOT_LIMIT, Kept
from .failures import describe

PLOT_SUFFIXES = {".png", ".svg", ".jpg", ".jpeg", ".pdf"}


@dataclass
class Job:
    """A job whose run is open."""

    run_id: str
    name: str
    output: list[str]
    log: list[str]
    benchmark: str | None
    params: dict[str, Any] | None  # from the Job object: used when the benchmark has none
    jobid: int


@dataclass
class Fields:
    """What one step logs to a run (log_batch's metrics, params and tags) and the files it uploads
    (path -> size limit)."""

    metrics: list[tuple[str, float, int]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)


# ---- the parent run: one per invocation ------------------------------------------------------


def git_info(directory: str) -> dict[str, str]:
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


def parent_tags(info: Mapping[str, Any], basedir: str | None) -> dict[str, str]:
    """The invocation's tags, from WORKFLOW_STARTED's fields and the workflow's repository."""
    tags = {
        "snakemake.command": truncate(str(info.get("cmd") or " ".join(sys.argv)), MAX_TAG_VALUE),
        "snakemake.config_md5": str(info.get("config_md5")),
        "snakemake.version": str(info.get("snakemake_version")),
        "snakemake.workflow_id": str(info.get("workflow_id")),
        "snakemake.snakefile": str(info.get("snakefile_main")),
        "snakemake.workdir": os.getcwd(),
        "snakemake.configfiles": truncate(json.dumps([str(f) for f in info.get("configfiles") or []]), 8000),
        "host": str(info.get("host") or platform.node()),
        "mlflow.user": str(info.get("user")),
        "mlflow.source.name": str(info.get("snakefile_main")),
    }
    tags.update(git_info(basedir or str(info.get("basedir") or os.getcwd())))
    return tags


def parent_name(info: Mapping[str, Any]) -> str:
    return f"snakemake {info.get('datetime') or time.strftime('%Y-%m-%d %H:%M:%S')}"


def parent_start(jobs_planned: int | None, config: dict | None) -> Fields:
    """The jobs planned and the resolved config (flattened; the hook also logs it as config.json)."""
    metrics = [("jobs_planned", float(jobs_planned), 0)] if jobs_planned is not None else []
    return Fields(metrics=metrics, params=flatten(config, "config") if config is not None else {})


def parent_status(workflow_error: str | None, jobs_open: bool) -> str:
    """FAILED after an error; KILLED when jobs never ended without one (interrupted); else FINISHED."""
    if workflow_error:
        return "FAILED"
    return "KILLED" if jobs_open else "FINISHED"


def parent_end(
    counts: Mapping[str, int], workflow_error: str | None, broken: str | None, not_logged: int
) -> Fields:
    """The parent's last fields: jobs finished and failed, the workflow's error, a stop of tracking."""
    metrics = [("jobs_finished", float(counts["finished"]), 0), ("jobs_failed", float(counts["failed"]), 0)]
    tags = {"snakemake.error": truncate(workflow_error, 5000)} if workflow_error else {}
    if broken:
        tags["hook.warning"] = f"tracking stopped mid-run ({broken}); {not_logged} later job(s) not logged"
    return Fields(metrics=metrics, tags=tags)


# ---- a job's run ---------------------------------------------------------------------------------


def has_run(output: list[str], log: list[str]) -> bool:
    """Target-only rules such as `all` (no output, no log): nothing ran, nothing to log."""
    return bool(output or log)


def job_start(record: Any, parent_id: str, extra: Mapping[str, Any]) -> tuple[str, dict[str, str], Fields]:
    """A starting job's run name, its tags at creation, and its params (JOB_INFO's fields; `extra`:
    what `capture` read from the Job object, its params and container image)."""
    wildcards = dict(record.wildcards or {})
    tags = {
        "mlflow.parentRunId": parent_id,
        "snakemake.rule": record.rule_name,
        "snakemake.jobid": str(record.jobid),
        "snakemake.wildcards": json.dumps(wildcards, default=str),
    }
    if record.shellcmd:
        tags["snakemake.shellcmd"] = truncate(str(record.shellcmd), MAX_TAG_VALUE)
    if extra.get("container"):
        tags["container.image"] = extra["container"]
    tags.update(split_tags(extra.get("params") or {})[1])  # e.g. a sweep trial's sweep and settings
    params = {f"wildcards.{key}": value for key, value in wildcards.items()}
    params["threads"] = record.threads
    resources = record.resources
    items = resources.items() if hasattr(resources, "items") else []
    params.update({f"resources.{k}": v for k, v in items if not str(k).startswith("_")})
    return run_name(record.rule_name, wildcards), tags, Fields(params=params)


def versions(logs: list[str]) -> dict[str, str]:
    """The software versions the job's log records, as `version.<name>` tags (its own run_cli line)."""
    for log in logs:
        try:
            found = versions_from_log(local_path(log))
        except OSError:  # the upload of the same file says what went wrong
            continue
        if found:
            return found
    return {}


def job_finished(job: Job) -> Fields:
    """A finished job's benchmark rows (metrics by step), params (the benchmark's, else the Job
    object's), metrics.json figures and texts, versions, and the files to upload: its logs,
    metrics.json files, plots and benchmark, each with its size limit."""
    fields = Fields()
    metrics, tags = fields.metrics, fields.tags
    benchmark = {}
    if job.benchmark and os.path.isfile(job.benchmark):
        try:
            benchmark = parse_benchmark(job.benchmark)
        except (OSError, ValueError) as exc:
            tags["hook.benchmark"] = f"unreadable: {describe(exc)}"
        for step, row in enumerate(benchmark.get("rows", [])):
            metrics += [(key, value, step) for key, value in row.items()]
    if "params" in benchmark or job.params is not None:
        # the benchmark's first; without one (or not --benchmark-extended), the job's own
        source = benchmark.get("params", job.params)
        raw, asked = split_tags(source) if isinstance(source, Mapping) else (source, {})
        fields.params = flatten(raw, "params") if raw else {}
        tags.update(asked)  # set at the start already, unless the Job object was not found
    else:
        tags["hook.params"] = "not available: no benchmark file with --benchmark-extended"
    artifacts = fields.files = {f: LOG_LIMIT for f in job.log if os.path.isfile(local_path(f))}
    tags |= versions(list(artifacts))
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
                tags[f"hook.metrics:{os.path.normpath(path)}"] = f"unreadable: {describe(exc)}"
        elif os.path.splitext(path)[1].lower() in PLOT_SUFFIXES and os.path.isfile(path):
            artifacts[path] = PLOT_LIMIT
    if job.benchmark and os.path.isfile(job.benchmark):
        artifacts[job.benchmark] = LOG_LIMIT
    return fields


def job_failed(job: Job, logs: list[str], kept: Kept) -> Fields:
    """A failed job's error tag, params (the Job object's), versions, and the logs to upload (those
    `kept` has a copy of, or a reason other than 'not there' for)."""
    tags = {"snakemake.error": f"job failed; see {', '.join(logs) or 'the Snakemake log'}"}
    raw, _ = split_tags(job.params or {})
    tags |= versions([copy for copy in kept.values() if isinstance(copy, str)])
    for file in logs:
        if isinstance(kept.get(file), FileNotFoundError):  # not written, or removed by the job itself
            tags[f"hook.artifact:{os.path.normpath(local_path(file))}"] = "not uploaded: no such file"
    present = {f: LOG_LIMIT for f in logs if not isinstance(kept.get(f), FileNotFoundError)}
    return Fields(params=flatten(raw, "params") if raw else {}, tags=tags, files=present)
