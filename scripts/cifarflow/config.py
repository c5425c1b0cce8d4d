"""Config validation against config/schema.yaml (defaults filled in), the dataset id and the
typed training recipe.

Imported by the Snakefile at parse time, so it stays light: no numpy, no torch.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml
from jsonschema import Draft202012Validator

from .errors import PipelineError

# Bump when prepare_dataset's output for the same settings changes, so old ids are not reused.
DATASET_FORMAT_VERSION = 1


def _fill_defaults(config: dict, schema: dict) -> None:
    """Insert each missing key's schema default, recursing into objects."""
    for key, sub in schema.get("properties", {}).items():
        if key not in config and "default" in sub:
            config[key] = copy.deepcopy(sub["default"])
        if isinstance(config.get(key), dict) and sub.get("type") == "object":
            _fill_defaults(config[key], sub)


def _describe(error, schema: dict) -> str:
    where = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        known = ", ".join(sorted(error.schema.get("properties", {})))
        keys = ", ".join(f"'{where + '.' if where else ''}{k}'" for k in extra)
        return f"unknown config key {keys}; known keys here: {known}. Remove or rename it."
    hint = error.schema.get("description", "")
    hint = f" ({' '.join(hint.split())})" if hint else ""
    return f"config key '{where or '<root>'}' = {error.instance!r} is invalid: {error.message}{hint}"


def load_schema(path: str | Path) -> dict:
    return yaml.safe_load(Path(path).read_text())


def validate_config(config: dict, schema_path: str | Path) -> dict:
    """Fill defaults into `config` (in place) and validate it; raise PipelineError naming the key."""
    schema = load_schema(schema_path)
    _fill_defaults(config, schema)
    errors = sorted(Draft202012Validator(schema).iter_errors(config), key=lambda e: list(e.path))
    if errors:
        lines = "\n  ".join(_describe(e, schema) for e in errors)
        raise PipelineError(f"invalid configuration:\n  {lines}")
    return config


CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"


def cifar10_archive(dataset: dict) -> Path:
    """Where the official archive is cached (or placed by hand)."""
    return Path(dataset["path"]) / CIFAR10_ARCHIVE


def dataset_identity(dataset: dict) -> dict:
    """The settings that determine the prepared arrays; nothing else goes into the dataset id."""
    identity: dict[str, Any] = {
        "format": DATASET_FORMAT_VERSION,
        "source": dataset["source"],
        "val_fraction": dataset["val_fraction"],
        "seed": dataset["seed"],
    }
    if dataset["source"] == "cifar10":
        identity["md5"] = dataset["cifar10"]["md5"]  # the content, not where it is cached
    elif dataset["source"] == "folder":
        # As written (normalised), so that a moved checkout keeps its ids.
        identity["path"] = os.path.normpath(dataset["path"])
        identity["resize"] = dataset["resize"]
    else:
        identity["synthetic"] = dataset["synthetic"]
    return identity


def prepare_settings(dataset: dict) -> dict:
    """What prepare_dataset needs: the identity less the format version (where the cifar10
    archive lies is its input, so moving the cache neither changes the id nor reruns anything),
    plus the folder's pixel limit (it refuses images, never changes the arrays: no part of the id)."""
    settings = {k: v for k, v in dataset_identity(dataset).items() if k != "format"}
    if dataset["source"] == "folder":
        settings["max_image_pixels"] = dataset["max_image_pixels"]
    return settings


def dataset_id(dataset: dict) -> str:
    """`<source>-<10 hex>`: changes when the source or split settings change, and only then."""
    blob = json.dumps(dataset_identity(dataset), sort_keys=True).encode()
    return f"{dataset['source']}-{hashlib.sha256(blob).hexdigest()[:10]}"


@dataclass(frozen=True)
class Recipe:
    """One experiment's resolved training recipe: the typed view that the code reads.

    config/schema.yaml validates the config file and supplies the defaults; this class has none
    (a second set would drift), so every field must be given. Values keep the type they were
    given (an int `lr` stays an int), so the canonical JSON, its hash and every file made from it
    are the same as the config's own JSON.
    """

    # the network
    model: Literal["fast", "simple", "vgg11", "vgg16", "resnet18"]
    widths: tuple[int, int, int]  # channels of fast's three conv groups (the others ignore it)
    tta: bool  # mirror test-time augmentation, inside the model (and so the ONNX graph)
    tta_translate: bool  # one-pixel translation test-time augmentation, likewise
    identity_init: bool  # fast: Dirac-initialised 3x3 convs
    # optimisation
    epochs: int  # passes over the training split
    budget_s: float | None  # seconds of training job on this machine: as many epochs as fit, at most epochs
    batch_size: int  # images per optimiser step
    optimizer: Literal["sgd", "adamw"]
    lr: float  # peak learning rate, per mean-reduced loss
    momentum: float  # SGD momentum, or AdamW's beta1
    nesterov: bool  # Nesterov momentum (sgd only)
    weight_decay: float  # coupled (sgd) or decoupled (adamw); not on biases and norms
    schedule: Literal["onecycle", "cosine", "constant"]  # after the warm-up
    warmup: float  # fraction of all steps, linear from lr/10 to lr
    label_smoothing: float  # of the cross-entropy targets
    ema: float  # per-step decay of the evaluated and exported weight average; 0 = off
    lookahead: bool  # airbench94's lookahead: the weights pulled to their average every 5 steps
    whiten_bias_epochs: int  # fast: epochs before the whitening layer's bias is frozen
    # augmentation
    flip: bool  # random horizontal flips
    translate: int  # random shift, pixels (reflect padding)
    alternate_flip: bool  # flip each image in every other epoch rather than at random
    early_crop: int  # progressive resizing: crop size (pixels) of the first early_crop_epochs
    early_crop_epochs: int
    # where and how
    precision: Literal["auto", "bf16", "fp32"]  # of training; auto = bf16 where the hardware is fast at it
    device: Literal["auto", "cpu", "cuda"]  # auto = cuda when available
    seed: int  # of initialisation, shuffling, augmentation and dropout

    @classmethod
    def from_config(cls, values: Mapping[str, Any]) -> Recipe:
        """The recipe of a plain mapping (the config's `train` with overrides, the rule's JSON, a
        checkpoint's dict); PipelineError names any unknown, missing or mistyped key."""
        hints = get_type_hints(cls)
        unknown = sorted(set(values) - set(hints))
        if unknown:
            raise PipelineError(
                f"unknown recipe {_keys(unknown)}; known keys: {', '.join(sorted(hints))}. "
                "Remove or rename it (config/schema.yaml describes each key)."
            )
        missing = [name for name in hints if name not in values]
        if missing:
            raise PipelineError(
                f"the recipe lacks {_keys(missing)}: give every key of config/schema.yaml's `train` "
                "(a config that validate_config() checked has them all, from the schema's defaults)."
            )
        for name, hint in hints.items():
            if not _has_type(values[name], hint):
                raise PipelineError(
                    f"recipe key {name!r} = {values[name]!r} is invalid: expected {_type_name(hint)}."
                )
        return cls(**{name: tuple(values["widths"]) if name == "widths" else values[name] for name in hints})

    def asdict(self) -> dict[str, Any]:
        """Plain values, keys sorted (widths a list, as in the config): the form that checkpoints
        store and that from_config() reads back to an equal recipe."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return dict(sorted((values | {"widths": list(self.widths)}).items()))

    def to_json(self) -> str:
        """The canonical JSON: what the rule receives (a change to it retrains) and what is hashed."""
        return json.dumps(self.asdict(), sort_keys=True)

    def sha256(self) -> str:
        """What a checkpoint and an ONNX graph were made with (their `recipe_sha256`)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()


def _keys(names: list[str]) -> str:
    return f"key{'s' if len(names) > 1 else ''} {', '.join(map(repr, names))}"


def _has_type(value: Any, hint: Any) -> bool:
    if get_origin(hint) in (Union, UnionType):  # e.g. float | None
        return any(_has_type(value, option) for option in get_args(hint))
    if hint is type(None):
        return value is None
    if get_origin(hint) is Literal:
        return isinstance(value, str) and value in get_args(hint)
    if get_origin(hint) is tuple:
        items = get_args(hint)
        return (
            isinstance(value, list | tuple)
            and len(value) == len(items)
            and all(_has_type(v, t) for v, t in zip(value, items, strict=True))
        )
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # an int is a number too (as for type checkers); JSON and YAML write 1, not 1.0
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    if get_origin(hint) in (Union, UnionType):
        return " or ".join(_type_name(option) for option in get_args(hint))
    if get_origin(hint) is Literal:
        return "one of " + ", ".join(map(repr, get_args(hint)))
    if get_origin(hint) is tuple:
        return f"a list of {len(get_args(hint))} integers"
    names = {bool: "true or false", int: "an integer", float: "a number", type(None): "null"}
    return names.get(hint, hint.__name__)


def recipe(config: dict, experiment: str) -> Recipe:
    """The resolved training recipe of one experiment: `train` with the experiment's overrides."""
    if experiment not in config["experiments"]:
        known = ", ".join(sorted(config["experiments"]))
        raise PipelineError(f"unknown experiment {experiment!r}; config `experiments` has: {known}")
    return Recipe.from_config({**config["train"], **config["experiments"][experiment]})
