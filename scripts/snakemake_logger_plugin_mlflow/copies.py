"""A job's files, read once into the hook's own copy, and that copy uploaded to the job's run.

A file that vanished or cannot be read is that job's problem: a `hook.artifact:<path>` tag on its
run and one warning line. A failed job's logs are copied by `capture` at once (`keep_all`), before
Snakemake removes them to retry the job, so its run keeps the log of the attempt that failed.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from typing import TYPE_CHECKING, Any

from .content import artifact_dir, local_path
from .failures import describe

if TYPE_CHECKING:
    from .runs import Job

PLOT_LIMIT = 5 << 20  # plots larger than 5 MiB are not uploaded
LOG_LIMIT = 50 << 20  # nor logs larger than 50 MiB
OVER_LIMIT = {  # size limit -> the tag that says a file was not uploaded
    PLOT_LIMIT: ("hook.plot", "not uploaded: larger than 5 MiB"),
    LOG_LIMIT: ("hook.artifact", "not uploaded: > 50 MiB"),
}

Kept = dict[str, str | OSError | None]  # file -> its copy, None (over the limit) or why not copied


class Copies:
    def __init__(self) -> None:
        self.folder: str | None = None  # a temporary directory, made by whichever thread needs it first
        self.lock = threading.Lock()

    def keep(self, file: str, limit: int) -> str | None:
        """A private copy of `file`, or None when it is larger than `limit`. Raises OSError when the
        file cannot be read (FileNotFoundError: it is not there): the job's problem, not the store's."""
        path = local_path(file)
        if os.path.getsize(path) > limit:
            return None
        with self.lock:
            if self.folder is None:
                self.folder = tempfile.mkdtemp(prefix="snakemake-mlflow-")
        folder = tempfile.mkdtemp(dir=self.folder)  # one folder per copy: it keeps the file's name
        try:
            return shutil.copyfile(path, os.path.join(folder, os.path.basename(path)))
        except OSError:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def keep_all(self, files: list[str]) -> Kept:
        """`keep` for each of a failed job's logs, in `capture`: a copy, None, or why not."""
        kept: Kept = {}
        for file in files:
            try:
                kept[file] = self.keep(file, LOG_LIMIT)
            except OSError as exc:
                kept[file] = exc
        return kept

    def upload(
        self, client: Any, job: Job, files: dict[str, int], logger: logging.Logger, kept: Kept | None = None
    ) -> dict[str, str]:
        """Each file (-> its size limit) to the job's run, from the hook's copy (`kept` ones as they
        were then); returns the tags that say which were not uploaded and why. Only the store's
        failures raise: a file that vanished or cannot be read is one warning line and a tag."""
        tags: dict[str, str] = {}
        for file, limit in files.items():
            path = os.path.normpath(local_path(file))
            try:
                copy = kept[file] if kept is not None and file in kept else self.keep(file, limit)
                if isinstance(copy, OSError):
                    raise copy
            except OSError as exc:
                tags[f"hook.artifact:{path}"] = f"not uploaded: {describe(exc)}"
                logger.warning(
                    f"MLflow: {path} of run {job.name} (job {job.jobid}) not uploaded ({describe(exc)}); "
                    "its run says so in a hook.artifact tag. Tracking carries on."
                )
                continue
            if copy is None:
                key, text = OVER_LIMIT[limit]
                tags[f"{key}:{path}"] = text
                continue
            try:
                client.log_artifact(job.run_id, copy, artifact_dir(path))
            finally:
                shutil.rmtree(os.path.dirname(copy), ignore_errors=True)
        return tags

    def remove(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
