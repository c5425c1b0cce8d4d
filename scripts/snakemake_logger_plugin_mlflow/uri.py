"""Which MLflow store a workflow writes to, decided in this one place.

The logger plugin's hook logs the runs there and the registry step (`cifarflow.registry`) registers
the model there; deciding it twice is how the two would end up in different stores. Standard
library only: the registry step imports this inside the pipeline image, which has no Snakemake.
"""

from __future__ import annotations

import os


def tracking_uri(configured: str | None, *, override: str | None = None) -> str:
    """`override` (the hook's --logger-mlflow-tracking-uri), else `configured` (config
    mlflow.tracking_uri), else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working
    directory (an absolute path: MLflow's own default, what `mlflow ui` there reads). Empty means unset.
    """
    uri = override or configured or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{os.path.abspath('mlflow.db')}"


# What `mlflow ui` serves when started without options.
MLFLOW_UI = "http://127.0.0.1:5000"


def runs_table_url(uri: str, experiment_id: str) -> str:
    """Where MLflow's UI shows an experiment's runs table: on the tracking server itself for an
    http(s) store, else on `mlflow ui` in the working directory. MLflow 3.17's UI opens every
    experiment on its GenAI overview unless told `workflowType=machine_learning` (or its sidebar's
    'Model training' was chosen in that browser): its experiment-kind tag no longer decides."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else MLFLOW_UI
    return f"{base}/#/experiments/{experiment_id}?workflowType=machine_learning"
