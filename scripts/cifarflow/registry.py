"""The MLflow Model Registry step: register a model that passed the gate; move `champion` only on merit.

Merit is measured on the validation split of the same dataset, the split held out for choosing: a
challenger takes the alias only when an exact McNemar test on the two models' paired predictions
says it is better (not just higher by noise), and its calibration (validation ECE) and robustness
(mean corruption accuracy on validation images) are not worse beyond set tolerances
(champion_decision). Test figures (accuracy as served, corruption accuracy) are recorded and
reported, never compared: a model chosen among many for its test accuracy would carry a test
figure biased upward, the winner of many draws of the same noise.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

# The store register_model writes to is the one the hook logs to, decided in one place (re-exported
# for register_model.py), and the experiment is found or created by the hook's function too. Those
# modules need neither Snakemake nor this library.
from snakemake_logger_plugin_mlflow.experiment import ExperimentDeleted, ensure_experiment
from snakemake_logger_plugin_mlflow.uri import tracking_uri  # noqa: F401

from .errors import PipelineError
from .paired import FILE as PREDICTIONS
from .paired import McNemar, ValPredictions, mcnemar

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


@dataclass(frozen=True)
class Evidence:
    """What a version brings to the champion rule: its predictions on the validation split
    (val_predictions.npz; None for a version registered before the paired test) and its mean
    corruption accuracy on validation images (evaluate_robustness; None where not recorded)."""

    predictions: ValPredictions | None
    val_mean_corruption_accuracy: float | None


@dataclass(frozen=True)
class ChallengerRule:
    """config register.challenger: what a challenger must show to take the alias (schema.yaml)."""

    alpha: float = 0.05
    max_ece_increase: float = 0.02
    max_corruption_drop: float = 0.02

    @classmethod
    def from_settings(cls, settings: dict) -> ChallengerRule:
        return cls(
            **{key: float(settings[key]) for key in ("alpha", "max_ece_increase", "max_corruption_drop")}
        )


@dataclass(frozen=True)
class Decision:
    """Whether the alias moves to the challenger, and why. `outcome`: first (no holder: it takes
    the alias), holds (it already is the holder), moved, stayed (compared and not good enough), not
    compared (nothing comparable: another dataset, other images, no stored predictions)."""

    moved: bool
    outcome: str
    reason: str
    compared_with: str | None = None
    test: McNemar | None = None
    figures: dict[str, float] = field(default_factory=dict)
    rule: ChallengerRule | None = None

    def to_json(self) -> dict:
        """registration.json's champion_decision (and the model card's section)."""
        out: dict = {"moved": self.moved, "outcome": self.outcome, "reason": self.reason}
        if self.compared_with is not None:
            out["compared_with"] = int(self.compared_with)
        if self.test is not None:
            out |= {"images": self.test.images, "better": self.test.better, "worse": self.test.worse}
            out["p_value"] = self.test.p_value
        out |= self.figures
        if self.rule is not None:
            out |= {
                "alpha": self.rule.alpha,
                "max_ece_increase": self.rule.max_ece_increase,
                "max_corruption_drop": self.rule.max_corruption_drop,
            }
        return out

    def tags(self) -> dict[str, str]:
        """The decision as tags of the challenger's version (champion.*)."""
        out = {}
        for key, value in self.to_json().items():
            if key == "moved":
                continue
            name = "decision" if key == "outcome" else key
            out[f"champion.{name}"] = f"{value:.6g}" if isinstance(value, float) else str(value)
        return out


NOT_COMPARABLE = "not comparable, so it stays (move it by hand if you mean to)"


def champion_decision(
    alias: str,
    version: str,
    dataset_id: str,
    challenger: Evidence,
    champion: tuple[str, dict[str, str], Evidence | None] | None,
    rule: ChallengerRule = ChallengerRule(),
) -> Decision:
    """Whether `alias` moves to `version` (a model trained on `dataset_id`, with `challenger`'s
    evidence), and why.

    `champion`: the alias's version, its tags and its evidence; None when no version holds it. The
    challenger takes the alias only when, on the same validation images, it is better by the exact
    one-sided McNemar test (p < rule.alpha: the discordant images it wins are too many for a coin
    toss between two equally good models), its validation ECE is at most rule.max_ece_increase above
    the holder's, and its mean corruption accuracy on validation images at most
    rule.max_corruption_drop below. Test figures (accuracy, corruption accuracy), latency and
    throughput never decide. Another dataset, other validation images, or a holder without stored
    predictions: nothing comparable, the alias stays.
    """
    if champion is None:
        return Decision(True, "first", f"no '{alias}' yet: version {version} takes it")
    held, held_tags, holder = champion
    if held == version:
        return Decision(True, "holds", f"version {version} already is '{alias}'")
    if held_tags.get("dataset_id") != dataset_id:
        return Decision(
            False,
            "not compared",
            f"'{alias}' is version {held}, evaluated on dataset {held_tags.get('dataset_id')}, "
            f"not {dataset_id}: {NOT_COMPARABLE}",
            held,
        )
    if holder is None or holder.predictions is None:
        return Decision(
            False,
            "not compared",
            f"'{alias}' is version {held}, registered without validation predictions (before the "
            f"paired test): {NOT_COMPARABLE}",
            held,
        )
    if challenger.predictions is None or len(challenger.predictions.label) == 0:
        return Decision(
            False,
            "not compared",
            f"version {version} has no predictions on validation images to compare with version "
            f"{held}'s (an empty validation split: raise dataset.val_fraction): the alias stays",
            held,
        )
    ours, theirs = challenger.predictions, holder.predictions
    differs = ours.same_images(theirs)
    if differs is not None:
        return Decision(
            False,
            "not compared",
            f"'{alias}' is version {held}, whose validation predictions are on {differs}: {NOT_COMPARABLE}",
            held,
        )
    test = mcnemar(ours.correct, theirs.correct)
    figures = {
        "val_accuracy": round(ours.accuracy, 6),
        "holder_val_accuracy": round(theirs.accuracy, 6),
        "val_ece": ours.ece,
        "holder_val_ece": theirs.ece,
    }
    paired = (
        f"better on {test.better} images, worse on {test.worse} (of {test.images}), "
        f"McNemar p = {test.p_value:.3g}"
    )
    guards = []
    increase = round(ours.ece - theirs.ece, 9)
    if increase > rule.max_ece_increase:
        guards.append(
            f"its validation ECE {ours.ece:.4f} is {increase:.4f} above version {held}'s "
            f"{theirs.ece:.4f} (more than register.challenger.max_ece_increase {rule.max_ece_increase:g})"
        )
    ours_mca, theirs_mca = challenger.val_mean_corruption_accuracy, holder.val_mean_corruption_accuracy
    if ours_mca is None or theirs_mca is None:
        missing = version if ours_mca is None else held
        guards.append(
            f"version {missing} has no mean corruption accuracy on validation images to compare "
            "(evaluate_robustness: an empty validation split, or registered before it measured one)"
        )
    else:
        figures |= {
            "val_mean_corruption_accuracy": ours_mca,
            "holder_val_mean_corruption_accuracy": theirs_mca,
        }
        drop = round(theirs_mca - ours_mca, 9)
        if drop > rule.max_corruption_drop:
            guards.append(
                f"its validation mean corruption accuracy {ours_mca:.4f} is {drop:.4f} below version "
                f"{held}'s {theirs_mca:.4f} (more than register.challenger.max_corruption_drop "
                f"{rule.max_corruption_drop:g})"
            )

    def decided(moved: bool, reason: str) -> Decision:
        return Decision(moved, "moved" if moved else "stayed", reason, held, test, figures, rule)

    if test.p_value >= rule.alpha:
        return decided(
            False, f"stays with version {held}: challenger version {version} {paired} >= {rule.alpha:g}"
        )
    if guards:
        return decided(
            False,
            f"stays with version {held}: challenger version {version} {paired} < {rule.alpha:g}, "
            f"but {'; and '.join(guards)}",
        )
    robustness = (
        f", validation mean corruption accuracy {ours_mca:.4f} against {theirs_mca:.4f}"
        if ours_mca is not None
        else ""
    )
    return decided(
        True,
        f"moves from version {held} to version {version}: {paired} < {rule.alpha:g}; validation ECE "
        f"{ours.ece:.4f} against {theirs.ece:.4f}{robustness}",
    )


def _logged_model_id(client, name: str, version: str) -> str:
    registered = client.get_model_version(name, str(version))
    # MLflow 3's SQL registry leaves model_id empty; the version's source names its logged model
    return registered.model_id or registered.source.removeprefix("models:/")


def stored_evidence(client, uri: str, name: str, version: str, tags: dict[str, str]) -> Evidence:
    """A registered version's evidence: its val_predictions.npz (None when it has none: registered
    before the paired test) and its val_mean_corruption_accuracy tag (None when it has none: an
    empty validation split, or registered before robustness was measured on validation; its
    test figure, `mean_corruption_accuracy`, never decides)."""
    import mlflow

    predictions = None
    present = client.list_logged_model_artifacts(_logged_model_id(client, name, version))
    if PREDICTIONS in {info.path for info in present}:
        with tempfile.TemporaryDirectory() as folder:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{version}/{PREDICTIONS}", dst_path=folder, tracking_uri=uri
            )
            predictions = ValPredictions.load(Path(path))
    robustness = tags.get("val_mean_corruption_accuracy")
    return Evidence(predictions, None if robustness is None else float(robustness))


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
    val_predictions: Path,
    val_mean_corruption_accuracy: float | None,
    rule: ChallengerRule = ChallengerRule(),
) -> dict:
    """Register the model at `model_path` as a version of `name` (or find its version by sha256) and
    move `alias` to it when it beats the alias's version by the champion rule (champion_decision).

    `tags`: the model's identity (model_sha256, dataset_id) and this evaluation's provenance and
    figures (engine, image, image_id, experiment, macro_f1, ...). A new version gets them as its
    tags, with `accuracy` (test, as served: recorded, never compared), `val_accuracy`, `val_ece`,
    `val_mean_corruption_accuracy`, the decision's champion.* tags, and `val_predictions` (the graph's
    predictions on the validation split) in its files, where a later challenger reads them. A
    version never has them rewritten: a later evaluation of the same model (another engine, a
    rebuilt image) is recorded beside them as eval.<engine>.* tags, its decision too.
    """
    import mlflow
    import onnx
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    predictions = ValPredictions.load(val_predictions)
    tags = {**tags, "accuracy": f"{accuracy:.6f}", "val_accuracy": f"{val_accuracy:.6f}"}
    if len(predictions.label):
        tags["val_ece"] = f"{predictions.ece:.6f}"
    if val_mean_corruption_accuracy is not None:
        tags["val_mean_corruption_accuracy"] = f"{val_mean_corruption_accuracy:.6f}"
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
            with tempfile.TemporaryDirectory() as folder:  # under the name a challenger looks for
                stored = Path(folder) / PREDICTIONS
                shutil.copyfile(val_predictions, stored)
                client.log_model_artifact(_logged_model_id(client, name, version), str(stored))
        try:
            champion = client.get_model_version_by_alias(name, alias)
        except MlflowException:
            champion = None
        held = None
        if champion is not None:
            held_version, held_tags = str(champion.version), dict(champion.tags)
            comparable = held_version != version and held_tags.get("dataset_id") == tags["dataset_id"]
            evidence = stored_evidence(client, uri, name, held_version, held_tags) if comparable else None
            held = (held_version, held_tags, evidence)
        decision = champion_decision(
            alias,
            version,
            tags["dataset_id"],
            Evidence(predictions, val_mean_corruption_accuracy),
            held,
            rule,
        )
        if existing:
            written = evaluation_tags({**tags, **decision.tags()})
        else:
            written = {**tags, **decision.tags(), **evaluation_tags(tags)}
        for key, value in written.items():
            client.set_model_version_tag(name, version, key, value)
        if decision.moved:
            client.set_registered_model_alias(name, alias, version)
        if decision.outcome in ("moved", "stayed"):  # the reason starts "moves from" / "stays with"
            log.info("'%s' %s", alias, decision.reason)
        else:
            log.info(
                "'%s' %s: %s",
                alias,
                f"-> version {version}" if decision.moved else "unchanged",
                decision.reason,
            )
        current = client.get_model_version_by_alias(name, alias)
    return {
        "name": name,
        "version": int(version),
        "new_version": not existing,
        "alias": alias,
        "champion": decision.moved,
        "champion_version": int(current.version),
        "champion_reason": decision.reason,
        "champion_decision": decision.to_json(),
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
    model_id = _logged_model_id(client, name, version)
    present = {info.path for info in client.list_logged_model_artifacts(model_id)}
    folder = None if files[0].name not in present else f"evaluations/{engine}"
    for file in files:
        client.log_model_artifact(model_id, str(file), folder)
    log.info("model card of %s version %s in its files at %s", name, version, folder or "the top")
    return folder or ""
