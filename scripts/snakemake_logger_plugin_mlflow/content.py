"""What the MLflow hook reads from a job's files, as plain data (no MLflow import, unit-testable).

- `parse_benchmark`: Snakemake's benchmark file (TSV or JSONL; extended columns when
  `--benchmark-extended`) -> numeric rows and the rule's params/wildcards/threads/resources.
- `metrics_from_json`: a rule's `metrics.json` (flat name -> number, optional `history` list of
  per-step dicts) -> `(key, value, step)` triples; `tags_from_json`: its text values -> tags.
- `split_tags`: a job's params -> (the params, the tags its `mlflow_tags` param asks for).
- `flatten`: nested params/config -> flat `a.b.c` string values, JSON strings included.
- `file_digest`: sha256 of a file, or why it was not hashed (directory, too large, missing).
- `versions_from_log`: the software versions a job's log records -> `version.<name>` tags.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import posixpath
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

# MLflow limits (mlflow/utils/validation.py): key length, param/tag value length.
MAX_KEY = 250
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
HASH_LIMIT = 1 << 30  # files larger than 1 GiB are not hashed (their tag says so)
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")

# Benchmark columns that become metrics, with the unit in the name (Snakemake writes MB and s).
BENCHMARK_METRICS = {
    "s": "benchmark.runtime_s",
    "max_rss": "benchmark.max_rss_mb",
    "max_vms": "benchmark.max_vms_mb",
    "max_uss": "benchmark.max_uss_mb",
    "max_pss": "benchmark.max_pss_mb",
    "io_in": "benchmark.io_in_mb",
    "io_out": "benchmark.io_out_mb",
    "mean_load": "benchmark.mean_load",
    "cpu_time": "benchmark.cpu_time_s",
    "cpu_usage": "benchmark.cpu_usage",
}
BENCHMARK_DICTS = ("params", "wildcards", "resources")
# A rule param of this name holds tags for the job's run (a dict, or a JSON object as text), e.g. a
# sweep trial's sweep and settings; it is not logged as params.
TAGS_PARAM = "mlflow_tags"
# The line a job's log carries with the versions it ran with (cifarflow.versions.LOG_MARKER, which this
# package does not import: the hook never imports the workflow's library; a test holds them equal).
VERSIONS_MARKER = "software versions: "
VERSIONS_READ = 1 << 16  # the line is near the top of the log: read no more than this


def safe_key(key: str) -> str:
    """A name MLflow accepts as metric/param/tag key: allowed characters, no path tricks, <= 250."""
    key = _BAD_KEY_CHARS.sub("_", str(key)) or "_"
    norm = posixpath.normpath(key)
    if norm != key or norm == "." or norm.startswith("..") or norm.startswith("/"):
        key = key.replace("/", "_")
        if key in (".", "..") or key.startswith(".."):
            key = "_" + key
    if len(key) > MAX_KEY:
        digest = hashlib.sha256(key.encode()).hexdigest()[:8]
        key = f"{key[: MAX_KEY - 10]}~{digest}"
    return key


def truncate(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 12] + " [truncated]"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _maybe_json(value: str) -> Any:
    """A JSON object/array given as a string (e.g. a rule's `settings` param), parsed; else None."""
    text = value.strip()
    if len(text) >= 2 and text[0] + text[-1] in ("{}", "[]"):
        try:
            return json.loads(text)
        except ValueError:
            return None
    return None


def flatten(value: Any, prefix: str) -> dict[str, str]:
    """Nested dicts/lists (and JSON strings holding them) -> {'prefix.a.b': 'str value'}.

    A list of scalars stays one value (compact JSON); a list holding dicts/lists is indexed.
    """
    if isinstance(value, str):
        parsed = _maybe_json(value)
        if isinstance(parsed, dict | list):
            return flatten(parsed, prefix)
        return {prefix: value}
    if isinstance(value, Mapping):
        if not value:
            return {prefix: "{}"}
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list | tuple):
        if all(item is None or isinstance(item, str | int | float | bool) for item in value):
            return {prefix: json.dumps(list(value))}
        out = {}
        for index, item in enumerate(value):
            out.update(flatten(item, f"{prefix}.{index}"))
        return out
    if value is None:
        return {prefix: "None"}
    return {prefix: str(value)}


def _numbers(value: Any, prefix: str) -> Iterator[tuple[str, float]]:
    """Every finite number under `value` (nested dicts joined with '.'); bools and the rest skipped."""
    if _is_number(value):
        yield prefix, float(value)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _numbers(item, f"{prefix}.{key}" if prefix else str(key))


def history_step(entry: Mapping, index: int) -> int:
    """The step of one history entry: its integer `epoch` (or `step`) field, else its index."""
    for field in ("epoch", "step"):
        value = entry.get(field)
        if _is_number(value) and float(value).is_integer():
            return int(value)
    return index


def metrics_from_json(data: Mapping) -> list[tuple[str, float, int]]:
    """metrics.json -> [(key, value, step)]: top-level numbers at step 0, `history` as step metrics.

    A top-level number whose name is also a history series (e.g. the final `val_accuracy` beside
    the per-epoch ones) is put at the series' last step and last in the list, so that it is the
    run's "latest" value in MLflow and the per-epoch chart is not drawn back to step 0.
    """
    series: list[tuple[str, float, int]] = []
    history = data.get("history")
    if isinstance(history, list):
        for index, entry in enumerate(history):
            if not isinstance(entry, Mapping):
                continue
            step = history_step(entry, index)
            for key, value in entry.items():
                if key in ("epoch", "step"):
                    continue
                series += [(safe_key(k), v, step) for k, v in _numbers(value, str(key))]
    last_step = {key: max(s for k, _, s in series if k == key) for key, _, _ in series}
    summary, finals = [], []
    for key, value in data.items():
        if key == "history":
            continue
        for name, number in _numbers(value, str(key)):
            name = safe_key(name)
            if name in last_step:
                finals.append((name, number, last_step[name]))
            else:
                summary.append((name, number, 0))
    return summary + series + finals


def tags_from_json(data: Mapping) -> dict[str, str]:
    """metrics.json's top-level text values (e.g. a training's `outcome` and `reason`) -> tags."""
    return {
        safe_key(key): truncate(value, MAX_TAG_VALUE) for key, value in data.items() if isinstance(value, str)
    }


def split_tags(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """A job's params without `mlflow_tags`, and the tags it holds (values as text; lists as JSON).
    A `mlflow_tags` that is neither a mapping nor a JSON object gives no tags."""
    params = dict(params)
    value = params.pop(TAGS_PARAM, None)
    if isinstance(value, str):
        value = _maybe_json(value)
    if not isinstance(value, Mapping):
        return params, {}
    tags = {
        safe_key(key): truncate(item if isinstance(item, str) else json.dumps(item), MAX_TAG_VALUE)
        for key, item in value.items()
    }
    return params, tags


def _parse_value(text: str) -> Any:
    """One benchmark cell: a number, a Python literal (dicts of the extended format), or the text."""
    text = text.strip()
    if text in ("", "-", "NA"):
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def parse_benchmark(path: str | os.PathLike) -> dict[str, Any]:
    """A benchmark file -> {'rows': [{metric: value}], 'params': ..., 'wildcards': ..., ...}.

    `rows` holds one dict of named numeric metrics per repeat. The extended columns (params,
    wildcards, threads, resources) come from the last row; params that are not Python literals
    stay as their text. An unreadable file raises OSError (or ValueError for bad JSONL).
    """
    path = Path(path)
    records: list[dict[str, Any]] = []
    text = path.read_text(errors="replace")
    if path.suffix == ".jsonl":
        for line in text.splitlines():
            if line.strip():
                records.append(json.loads(line))
    else:
        lines = [line for line in text.splitlines() if line.strip()]
        if lines:
            header = lines[0].split("\t")
            for line in lines[1:]:
                cells = line.split("\t")
                if len(cells) == len(header):
                    records.append(
                        {name: _parse_value(cell) for name, cell in zip(header, cells, strict=True)}
                    )
    result: dict[str, Any] = {"rows": []}
    for record in records:
        row = {
            name: float(record[column])
            for column, name in BENCHMARK_METRICS.items()
            if _is_number(record.get(column))
        }
        result["rows"].append(row)
    if records:
        last = records[-1]
        for column in BENCHMARK_DICTS:
            value = last.get(column)
            if isinstance(value, str):
                value = _parse_value(value)
            if value is not None:
                result[column] = value
        if _is_number(last.get("threads")):
            result["threads"] = int(last["threads"])
    return result


def file_digest(path: str | os.PathLike, cache: dict | None = None, limit: int = HASH_LIMIT) -> str:
    """The sha256 hex digest of a file, or 'not hashed: <why>' (directory, too large, missing)."""
    try:
        stat = os.stat(path)
    except OSError:
        return "not hashed: missing"
    if os.path.isdir(path):
        return "not hashed: directory"
    if stat.st_size > limit:
        return f"not hashed: {stat.st_size / 2**30:.1f} GiB > {limit / 2**30:.0f} GiB limit"
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if cache is not None and key in cache:
        return cache[key]
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError as err:
        return f"not hashed: {err.strerror or err}"
    if cache is not None:
        cache[key] = digest.hexdigest()
    return digest.hexdigest()


_ANNOTATION = re.compile(r" \((?:[^()]*)\)$")


def local_path(file: str) -> str:
    """A file as Snakemake prints it (maybe annotated, e.g. 'x.txt (pipe)') -> the path itself."""
    if not os.path.lexists(file):
        stripped = _ANNOTATION.sub("", file)
        if stripped != file and os.path.lexists(stripped):
            return stripped
    return file


def run_name(rule: str, wildcards: Mapping[str, Any]) -> str:
    """`<rule>/<k=v,k=v>` (wildcards in the rule's order), or just `<rule>` without wildcards."""
    if not wildcards:
        return rule
    return f"{rule}/" + ",".join(f"{key}={value}" for key, value in wildcards.items())


def artifact_dir(path: str) -> str | None:
    """Where a file goes among a run's artifacts: its directory relative to the working directory.

    Files outside the working directory go to `files/`.
    """
    rel = os.path.relpath(os.path.abspath(path))
    if rel.startswith(".."):
        return "files"
    parent = os.path.dirname(rel)
    return parent or None


def versions_from_log(path: str | os.PathLike) -> dict[str, str]:
    """`version.<name>` -> version from the versions line near the top of a job's log ({} if none)."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        head = handle.read(VERSIONS_READ)
    for line in head.splitlines():
        at = line.find(VERSIONS_MARKER)
        if at < 0:
            continue
        try:
            data = json.loads(line[at + len(VERSIONS_MARKER) :])
        except ValueError:
            continue
        if isinstance(data, dict):
            return {f"version.{key}": str(value) for key, value in data.items()}
    return {}
