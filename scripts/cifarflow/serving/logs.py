"""Logging for every cifarflow program: the rule scripts (runtime.run_cli), the server (serve.py, also
inside the serving image), the benchmarks and the pipeline image's build script.

Part of cifarflow.serving because the serving image carries this package and nothing else of
cifarflow; the standard library only, so that it needs none of the pipeline's dependencies. Every
module and script logs to the one logger `logging.getLogger("cifarflow")`; other libraries' records
(KServe, Uvicorn, MLflow, ONNX Runtime) reach the same handlers under their own names, which each
line shows.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
DATE_FORMAT = "%H:%M:%S"


def setup_logging(log_file: str | os.PathLike | None = None) -> None:
    """Log INFO and above to stderr and, when given, to `log_file` (overwritten), before anything else
    happens; replaces any earlier set-up of the root logger.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(level=logging.INFO, format=FORMAT, datefmt=DATE_FORMAT, handlers=handlers, force=True)
