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
