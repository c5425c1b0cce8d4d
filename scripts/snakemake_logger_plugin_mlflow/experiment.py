"""The experiment runs and registered models go to: found, or created, in one function that the hook
and the registry step (`cifarflow.registry`) both use.

Imports nothing itself (the caller's `MlflowClient` does the talking), so the registry step imports
it in the pipeline image, which has MLflow but no Snakemake.
"""

from __future__ import annotations

from typing import Any

# What the experiment is: model training, not GenAI. MLflow UIs that pick an experiment's view by this
# tag open it on the runs table; 3.17's picks by its workflowType instead (uri.runs_table_url, the
# link printed at the end). Set when the experiment is created, or on an existing one that has no
# kind or only the UI's own guess (`*_inferred`); a kind someone chose stays.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


class ExperimentDeleted(RuntimeError):
    """The experiment is in MLflow's trash: logging to it would hide the runs from every listing."""


def kind_unset(kind: str | None) -> bool:
    """Whether an experiment's kind tag is missing or only the UI's guess (so it may be set)."""
    return not kind or kind.endswith("_inferred") or kind == "no_inferred_type"


def ensure_experiment(client: Any, name: str, *, rename_with: str) -> str:
    """The id of the active experiment `name`, created when missing, tagged as a model-training
    experiment unless someone chose another kind. Raises ExperimentDeleted when it is deleted:
    `rename_with` says where another name is chosen (the hook's option, the registry's config key)."""
    found = client.get_experiment_by_name(name)
    if found is None:
        return client.create_experiment(name, tags=dict([EXPERIMENT_KIND]))
    if found.lifecycle_stage != "active":
        raise ExperimentDeleted(
            f"experiment '{name}' is deleted; restore it (mlflow experiments restore) "
            f"or choose another name with {rename_with}"
        )
    if kind_unset(found.tags.get(EXPERIMENT_KIND[0])):
        client.set_experiment_tag(found.experiment_id, *EXPERIMENT_KIND)
    return found.experiment_id
