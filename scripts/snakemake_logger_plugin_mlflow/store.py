"""Talking to the store: which store and experiment, opening it (one quick probe first for a
server), and writing a run's fields in batches within MLflow's limits. MLflow is imported only
when a store is opened."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from .content import MAX_PARAM_VALUE, MAX_TAG_VALUE, safe_key, truncate
from .experiment import ensure_experiment
from .uri import tracking_uri

HTTP_PROBE_TIMEOUT = 10
MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100  # per log_batch request


def ms(seconds: float | None = None) -> int:
    return int((time.time() if seconds is None else seconds) * 1000)


def _section(config: dict | None) -> dict:
    section = (config or {}).get("mlflow")
    return section if isinstance(section, dict) else {}


def store_uri(settings: Any, config: dict | None) -> str:
    """--logger-mlflow-tracking-uri first, then what register_model uses too (uri.py)."""
    configured = _section(config).get("tracking_uri")
    configured = configured if isinstance(configured, str) else None
    return tracking_uri(configured, override=settings.tracking_uri)


def experiment_name(settings: Any, config: dict | None) -> str:
    """--logger-mlflow-experiment, else config mlflow.experiment, else the working directory's name."""
    if settings.experiment:
        return settings.experiment
    if isinstance(_section(config).get("experiment"), str):
        return _section(config)["experiment"]
    return os.path.basename(os.getcwd()) or "snakemake"


def probe_http(uri: str, experiment: str) -> None:
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


def connect(uri: str, experiment: str) -> Any:
    """An MlflowClient for `uri`, a server probed first (it answers, or this raises at once)."""
    from mlflow import MlflowClient

    if uri.startswith(("http://", "https://")):
        probe_http(uri, experiment)
    return MlflowClient(tracking_uri=uri)


def open_experiment(uri: str, experiment: str) -> tuple[Any, str]:
    """The client and the experiment's id, the experiment created if missing (ensure_experiment)."""
    import mlflow  # noqa: F401 - heavy (about 1.5 s): imported only when there is work to log

    for name in ("alembic", "mlflow.store.db.utils"):  # "creating tables" chatter on a new store
        logging.getLogger(name).setLevel(logging.WARNING)
    client = connect(uri, experiment)
    return client, ensure_experiment(client, experiment, rename_with="--logger-mlflow-experiment")


def batches(metrics=(), params=None, tags=None, timestamp: int | None = None) -> list[dict[str, list]]:
    """log_batch's keyword arguments, in requests within MLflow's limits: the metrics first, then
    params and tags together. A repeated (key, step) gets a later timestamp, so the last one wins."""
    from mlflow.entities import Metric, Param, RunTag

    timestamp = timestamp or ms()
    seen: dict[tuple[str, int], int] = {}
    metric_entities = []
    for key, value, step in metrics:
        offset = seen[key, step] = seen.get((key, step), -1) + 1
        metric_entities.append(Metric(key, value, timestamp + offset, step))
    param_entities = [
        Param(safe_key(k), truncate(str(v), MAX_PARAM_VALUE)) for k, v in (params or {}).items()
    ]
    tag_entities = [RunTag(safe_key(k), truncate(str(v), MAX_TAG_VALUE)) for k, v in (tags or {}).items()]
    requests = [
        {"metrics": metric_entities[start : start + MAX_METRICS]}
        for start in range(0, len(metric_entities), MAX_METRICS)
    ]
    for start in range(0, max(len(param_entities), len(tag_entities)), MAX_PARAMS):
        requests.append(
            {
                "params": param_entities[start : start + MAX_PARAMS],
                "tags": tag_entities[start : start + MAX_TAGS],
            }
        )
    return requests


def log_batch(
    client: Any, run_id: str, metrics=(), params=None, tags=None, timestamp: int | None = None
) -> None:
    for request in batches(metrics, params, tags, timestamp):
        client.log_batch(run_id, **request)
