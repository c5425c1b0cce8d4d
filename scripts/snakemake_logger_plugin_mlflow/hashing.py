"""The sha256 of each job's input and output files, as `input:<path>` / `output:<path>` tags for
lineage across runs. Computed by one thread of the hook's own, fed by `capture` as soon as a job
starts (inputs) or ends (outputs): the listener may lag behind and a temp() file may be gone by then.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor

from .content import file_digest, local_path

MAX_FILE_TAGS = 200  # input/output files tagged (and hashed) per direction and job


class Hasher:
    def __init__(self) -> None:
        self.cache: dict = {}
        self.produced: dict[str, str] = {}  # output path -> digest, this invocation
        self.executor: ThreadPoolExecutor | None = None

    def later(self, direction: str, files: list[str]) -> Future:
        """`tags` on the hashing thread (started on first use)."""
        if self.executor is None:
            self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-hook-sha256")
        return self.executor.submit(self.tags, direction, files)

    def result(self, future: Future | None, direction: str, files: list[str]) -> dict[str, str]:
        """The tags hashed ahead (`later`), or hashed now when nothing was (capture did not see the event)."""
        return future.result() if future is not None else self.tags(direction, files)

    def tags(self, direction: str, files: list[str]) -> dict[str, str]:
        """`input:<path>` / `output:<path>` -> sha256 (or why not hashed). An input missing now that
        this invocation wrote (a temp() file, since removed) gets the digest it was written with."""
        tags = {}
        for file in files[:MAX_FILE_TAGS]:
            path = os.path.normpath(local_path(file))
            digest = file_digest(path, self.cache)
            if direction == "output":
                self.produced[path] = digest
            elif digest == "not hashed: missing" and path in self.produced:
                digest = self.produced[path]
            tags[f"{direction}:{path}"] = digest
        if len(files) > MAX_FILE_TAGS:
            tags[f"{direction}s.not_listed"] = f"{len(files) - MAX_FILE_TAGS} more files, not hashed"
        return tags

    def shutdown(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
