"""What every rule CLI shares: logging to the rule's log, progress lines, atomic files, metrics.json."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from .errors import PipelineError
from .serving.logs import setup_logging
from .versions import log_line, software_versions

log = logging.getLogger("cifarflow")
T = TypeVar("T")
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class _ProgressToLog:
    """A file-like sink for tqdm: every refresh becomes one log line (readable in log files)."""

    def write(self, text: str) -> None:
        text = text.strip("\r\n ")
        if text:
            log.info(text)

    def flush(self) -> None:
        pass


def progress(items: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[T]:
    """Iterate with one progress line at most every 5 s, written to stderr and the log."""
    return tqdm(
        items,
        total=total,
        desc=desc,
        unit=unit,
        file=_ProgressToLog(),
        mininterval=5,
        ascii=True,
        dynamic_ncols=False,
        ncols=100,
    )


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON atomically, with sorted keys so that reruns produce identical files."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file (HTML, RST) atomically: the old file or the whole new one, never a part."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_metrics(path: str | os.PathLike, metrics: dict[str, Any]) -> None:
    """Write a rule's metrics.json: flat name -> finite number (a metric in MLflow) or text (a tag,
    e.g. a training's `outcome`), plus an optional `history` list.

    This file is the contract between rules and the MLflow hook, which logs the numbers as the job's
    metrics and `history` as per-step series (snakemake_logger_plugin_mlflow.content.metrics_from_json).
    """
    for key, value in metrics.items():
        if key == "history":
            if not isinstance(value, list):
                raise TypeError("metrics['history'] must be a list of per-step dicts")
            continue
        if isinstance(value, str):
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise TypeError(f"metric {key!r} must be a finite number or a text, got {value!r}")
    write_json(path, metrics)


def where_running() -> str:
    """The job's environment, for its log: the pipeline image sets CIFARFLOW_IMAGE (the host has none)."""
    image = os.environ.get("CIFARFLOW_IMAGE")
    where = f"image {image}" if image else "no container image (the host's environment)"
    return f"running in {where}: Python {platform.python_version()} at {sys.prefix}"


def run_cli(main: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser) -> None:
    """Parse args, set up logging to --log, run `main`; a PipelineError exits 1 with its message only."""
    parser.add_argument("--log", help="the rule's log file (also logged to stderr)")
    args = parser.parse_args()
    setup_logging(args.log)
    log.info("%s", where_running())
    # What made this job's outputs; the MLflow hook tags the job's run with it, the report tabulates it.
    log.info("%s", log_line(software_versions()))
    # Snakemake stops jobs with SIGTERM: unwind like Ctrl-C, so cleanups run (servers, partial files).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    start = time.perf_counter()
    try:
        main(args)
    except PipelineError as err:
        log.error("%s", err)
        sys.exit(1)
    except KeyboardInterrupt:
        log.error("interrupted; no partial output was kept")
        sys.exit(130)
    log.info("done in %.1f s", time.perf_counter() - start)
