"""model.pt, the trained model as training writes it and export (and the benches) read it back: the
weights with all that rebuilds and describes the model, or, for a sweep trial that did not finish, a
marker that says why it holds none. Its own module, so that reading a model does not import the
training loop."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .config import Recipe
from .errors import PipelineError
from .models import Classifier, build_model
from .runtime import atomic_path

FORMAT = 1


def build_model_of(recipe: Recipe, mean: list[float], std: list[float], num_classes: int) -> Classifier:
    return build_model(
        recipe.model,
        mean,
        std,
        num_classes,
        recipe.widths,
        tta=recipe.tta,
        tta_translate=recipe.tta_translate,
        identity_init=recipe.identity_init,
    )


def save_checkpoint(path: Path, model: nn.Module, recipe: Recipe, meta: dict) -> None:
    """model.pt: the weights with all that rebuilds and describes the model (load_checkpoint)."""
    _save(
        path,
        {
            "format": FORMAT,
            "weights": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "recipe": recipe.asdict(),
            "recipe_sha256": recipe.sha256(),
            "class_names": meta["class_names"],
            "mean": meta["mean"],
            "std": meta["std"],
            "dataset_id": meta["dataset_id"],
        },
    )


def save_failure(path: Path, recipe: Recipe, dataset_id: str, outcome: str, reason: str) -> None:
    """model.pt of a training that stopped: no weights, the outcome and its reason instead
    (load_checkpoint refuses it, naming them)."""
    _save(
        path,
        {
            "format": FORMAT,
            "outcome": outcome,
            "reason": reason,
            "recipe": recipe.asdict(),
            "recipe_sha256": recipe.sha256(),
            "dataset_id": dataset_id,
        },
    )


def _save(path: Path, checkpoint: dict) -> None:
    # Saved through a file object: torch.save(obj, path) names the zip's folder after the (random)
    # temporary file, so the same weights would make a different file each time.
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(checkpoint, fh)


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the trained model (eval mode, CPU) from model.pt, loaded with weights_only=True."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if "weights" not in checkpoint:  # save_failure's: a sweep trial that did not finish
        raise PipelineError(
            f"{path} holds no model: its training {checkpoint.get('outcome', 'failed')} "
            f"({checkpoint.get('reason')}). Only a training that finished can be exported or served."
        )
    recipe = Recipe.from_config(checkpoint["recipe"])
    num_classes = len(checkpoint["class_names"])
    model = build_model_of(recipe, checkpoint["mean"], checkpoint["std"], num_classes)
    model.load_state_dict(checkpoint["weights"])
    return model.eval(), checkpoint
