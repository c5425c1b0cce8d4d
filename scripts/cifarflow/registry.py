"""The MLflow Model Registry step: register a model that passed the gate; move `champion` only on merit.

Merit is validation accuracy, on the same dataset: the split held out for choosing. Test accuracy
(as served) is recorded and reported, never compared: a model chosen among many for its test
accuracy would carry a test figure biased upward, the winner of many draws of the same noise.
"""

from __future__ import annotations

import fcntl
import logging
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

# The store register_model writes to is the one the hook logs to, decided in one place (re-exported
# for register_model.py), and the experiment is found or created by the hook's function too. Those
# modules need neither Snakemake nor this library.
from snakemake_logger_plugin_mlflow.experiment import ExperimentDeleted, ensure_experiment
from snakemake_logger_plugin_mlflow.uri import tracking_uri  # noqa: F401

from .errors import PipelineError

log = logging.getLogger("cifarflow")


def signature(model):
    """The exported graph's interface: uint8 images in, float32 [-1, classes] logits and probabilities out."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    classes = model.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, 32, 32, 3), "image")]),
        outputs=Schema(
            [
                TensorSpec(np.dtype(np.float32), (-1, classes), "logits"),
                TensorSpec(np.dtype(np.float32), (-1, classes), "probabilities"),
            ]
        ),
    )


@contextmanager
def exclusive(lock_file: Path):
    """One registration at a time on this machine, so two experiments never both take the alias."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


# What a version is: set once, when the version is created. Every other tag describes one evaluation.
IDENTITY = ("model_sha256", "dataset_id")


def evaluation_tags(tags: dict[str, str]) -> dict[str, str]:
    """This evaluation's tags, namespaced by its engine (eval.<engine>.<key>): beside the version's
    own tags, never over them, and one set per engine, so `process` and `podman` evaluations of the
    same model both stay visible on its page in the registry."""
    engine = tags["engine"]
    recorded = {key: value for key, value in tags.items() if key not in (*IDENTITY, "engine")}
    recorded["recorded_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return {f"eval.{engine}.{key}": value for key, value in recorded.items()}


def champion_decision(
    alias: str,
    version: str,
    dataset_id: str,
    val_accuracy: float,
    champion: tuple[str, dict[str, str]] | None,
) -> tuple[bool, str]:
    """Whether `alias` moves to `version` (of a model with `val_accuracy` on `dataset_id`), and why.

    `champion`: the alias's version and its tags, None when no version holds it. Validation accuracy
    decides: the trained model's, on the dataset's validation split (the served model is that model:
    the evaluation checks every served prediction against it). Comparable across engines, not across
    datasets. The champion's figure is the one it was registered with; test accuracy, latency and
    throughput are recorded and never decide.
    """
    if champion is None:
        return True, f"no '{alias}' yet"
    held, held_tags = champion
    if held == version:
        return True, f"version {version} already is '{alias}'"
    if held_tags.get("dataset_id") != dataset_id:
        return False, (
            f"'{alias}' is version {held}, evaluated on dataset {held_tags.get('dataset_id')}, "
            f"not {dataset_id}: not comparable, so it stays (move it by hand if you mean to)"
        )
    if "val_accuracy" not in held_tags:
        return False, (
            f"'{alias}' is version {held}, registered without a validation accuracy "
            "(chosen on test accuracy, before selection moved to validation): not comparable, so "
            "it stays (move it by hand if you mean to)"
        )
    best = float(held_tags["val_accuracy"])
    moved = val_accuracy > best
    return moved, (
        f"val accuracy {val_accuracy:.4f} {'beats' if moved else 'does not beat'} version "
        f"{held}'s {best:.4f} on the same dataset"
    )


def register(
    *,
    model_path: Path,
    name: str,
    alias: str,
    tags: dict[str, str],
    accuracy: float,
    uri: str,
    lock_file: Path,
    val_accuracy: float,
) -> dict:
    """Register the model at `model_path` as a version of `name` (or find its version by sha256) and
    move `alias` to it when its validation accuracy beats the alias's version's on the same dataset.

    `tags`: the model's identity (model_sha256, dataset_id) and this evaluation's provenance and
    figures (engine, image, image_id, experiment, macro_f1, ...). A new version gets them as its
    tags, with `accuracy` (test, as served: recorded, never compared) and `val_accuracy`. A version
    never has them rewritten: a later evaluation of the same model (another engine, a rebuilt
    image) is recorded beside them as eval.<engine>.* tags.
    """
    import mlflow
    import onnx
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    tags = {**tags, "accuracy": f"{accuracy:.6f}", "val_accuracy": f"{val_accuracy:.6f}"}
    with exclusive(lock_file):
        existing = [
            v
            for v in client.search_model_versions(f"name = '{name}'")
            if v.tags.get("model_sha256") == tags["model_sha256"]
        ]
        if existing:
            version = str(existing[0].version)
            log.info(
                "model %s version %s already holds this model (sha256 %s): its tags stay as first "
                "written; this evaluation goes beside them as eval.%s.*",
                name,
                version,
                tags["model_sha256"][:12],
                tags["engine"],
            )
            written = evaluation_tags(tags)
        else:
            model = onnx.load(str(model_path))
            info = mlflow.onnx.log_model(
                model,
                name="model",
                signature=signature(model),
                registered_model_name=name,
            )
            version = str(info.registered_model_version)
            log.info("registered %s version %s (%s)", name, version, info.model_uri)
            written = {**tags, **evaluation_tags(tags)}
        for key, value in written.items():
            client.set_model_version_tag(name, version, key, value)
        try:
            champion = client.get_model_version_by_alias(name, alias)
        except MlflowException:
            champion = None
        held = None if champion is None else (str(champion.version), champion.tags)
        moved, reason = champion_decision(alias, version, tags["dataset_id"], val_accuracy, held)
        if moved:
            client.set_registered_model_alias(name, alias, version)
        log.info("'%s' %s: %s", alias, f"-> version {version}" if moved else "unchanged", reason)
        current = client.get_model_version_by_alias(name, alias)
    return {
        "name": name,
        "version": int(version),
        "new_version": not existing,
        "champion": moved,
        "champion_version": int(current.version),
        "champion_reason": reason,
        "accuracy": accuracy,
        "val_accuracy": val_accuracy,
        "dataset_id": tags["dataset_id"],
        "engine": tags["engine"],
        "image": tags["image"],
        "tracking_uri": uri,
        "model_uri": f"models:/{name}/{version}",
    }


def use_experiment(uri: str, name: str) -> str:
    """Make `name` (config mlflow.experiment, where the hook logs the runs) the experiment the
    registered model is logged in: created when missing, tagged as a model-training experiment
    unless someone chose another kind (the hook's `ensure_experiment`). A deleted one is refused,
    as the hook refuses it."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        experiment_id = ensure_experiment(client, name, rename_with="config mlflow.experiment")
    except ExperimentDeleted as exc:
        raise PipelineError(str(exc)) from None
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def log_card(uri: str, name: str, version: int, files: list[Path], engine: str) -> str:
    """Attach the model card files to the registered version (the files of its logged model, beside
    MLONNX's): at the top the first time, so `models:/<name>/<version>/model_card.md` is the card it
    was registered with; a later evaluation's card goes to evaluations/<engine>/, as its tags do.
    Returns where they went, relative to the version's files."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    registered = client.get_model_version(name, str(version))
    # MLflow 3's SQL registry leaves model_id empty; the version's source names its logged model
    model_id = registered.model_id or registered.source.removeprefix("models:/")
    present = {info.path for info in client.list_logged_model_artifacts(model_id)}
    folder = None if files[0].name not in present else f"evaluations/{engine}"
    for file in files:
        client.log_model_artifact(model_id, str(file), folder)
    log.info("model card of %s version %s in its files at %s", name, version, folder or "the top")
    return folder or ""
