"""Config validation against config/schema.yaml (defaults filled in) and the dataset id.

Imported by the Snakefile at parse time, so it stays light: no numpy, no torch.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

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


def recipe(config: dict, experiment: str) -> dict:
    """The resolved training recipe of one experiment: `train` with the experiment's overrides."""
    if experiment not in config["experiments"]:
        known = ", ".join(sorted(config["experiments"]))
        raise PipelineError(f"unknown experiment {experiment!r}; config `experiments` has: {known}")
    return {**config["train"], **config["experiments"][experiment]}


def recipe_hash(recipe: dict) -> str:
    """sha256 of the recipe's canonical JSON: what a checkpoint and an ONNX graph were made with."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
