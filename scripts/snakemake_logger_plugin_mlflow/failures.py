"""What a failed MLflow call means for tracking (the store is gone, or one request was refused), and
the one line that says why. Plain decisions on exceptions: no store needed."""

from __future__ import annotations

import re

from snakemake_interface_common.exceptions import ApiError


class TrackingStoreError(ApiError):
    """The store cannot be used and `strict` is on. An ApiError subclass only because Snakemake
    prints those as one clean 'Error: <message>' line (a WorkflowError gets a traceback of the
    logging internals that raised it)."""


def chain(exc: BaseException) -> list[BaseException]:
    """The exception and those it was raised from or while handling (MLflow wraps the requests error)."""
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def connection_error(exc: BaseException) -> BaseException | None:
    """The error in `exc`'s chain that says no connection was made or no answer came, if any."""
    try:
        from requests.exceptions import ConnectionError as RequestsConnectionError
        from requests.exceptions import RetryError, Timeout
    except ImportError:  # MLflow (and so requests) not importable: the failure is not a connection
        return None
    kinds = (RequestsConnectionError, Timeout, RetryError, ConnectionError, TimeoutError)
    return next((err for err in chain(exc) if isinstance(err, kinds)), None)


def store_unreachable(exc: BaseException) -> bool:
    """Whether a failed MLflow call means the store cannot be used: no connection or no answer, an
    HTTP 5xx, a database error (MLflow raises those as 5xx-coded MlflowExceptions), or an OSError
    (the store's own files: the job's files are read into the hook's copy first, see copies.py).
    False when the store answered and refused this one request (HTTP 4xx), and for anything else
    (a bug in this hook must not end tracking either)."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import HTTPError

    if connection_error(exc) is not None:
        return True
    for err in chain(exc):
        if isinstance(err, HTTPError) and err.response is not None:  # an artifact upload's answer
            return err.response.status_code >= 500
        if isinstance(err, MlflowException):  # error codes map to HTTP statuses, also for local stores
            return err.get_http_status_code() >= 500
    return isinstance(exc, OSError)


def describe(exc: BaseException) -> str:
    """A one-line reason: 'cannot connect: <OS error>' for connection failures, the OS error and
    its file for local file errors, else the exception's first line."""
    connection = connection_error(exc)
    if connection is not None:
        for text in (str(exc), str(connection)):
            errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
            if errno:
                return f"cannot connect: {errno.group(1).strip()}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__
