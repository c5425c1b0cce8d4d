# Config lookups and paths shared by the rules. No logic beyond wiring: the library decides.
import json
import re
import sys

sys.path.insert(0, str(Path(workflow.basedir) / "scripts"))

from cifarflow.config import (
    cifar10_archive,
    dataset_id,
    prepare_settings,
    recipe,
    validate_config,
)
from cifarflow.dataset import SPLITS, array_files
from cifarflow.errors import PipelineError

try:
    validate_config(config, Path(workflow.basedir) / "config" / "schema.yaml")
except PipelineError as err:
    raise WorkflowError(str(err)) from None

DATASET = config["dataset"]
DATASET_ID = dataset_id(DATASET)
DATA_DIR = f"results/data/{DATASET_ID}"
EXPERIMENTS = sorted(config["experiments"])
EXPORT = config["export"]


wildcard_constraints:
    dataset=re.escape(DATASET_ID),
    experiment="|".join(re.escape(name) for name in EXPERIMENTS),


def dataset_settings(wildcards):
    """The settings that define the dataset, as JSON (a change reruns prepare_dataset)."""
    return json.dumps(prepare_settings(DATASET), sort_keys=True)


def prepare_dataset_input(wildcards):
    if DATASET["source"] == "cifar10":
        return {"archive": str(cifar10_archive(DATASET))}
    return {}


def dataset_files(wildcards):
    """The prepared dataset a training or export job reads (every array and meta.json)."""
    files = {"meta": f"{DATA_DIR}/meta.json"}
    for split in SPLITS:
        images, labels = array_files(split)
        files[f"{split}_images"] = f"{DATA_DIR}/{images}"
        files[f"{split}_labels"] = f"{DATA_DIR}/{labels}"
    return files


def recipe_json(wildcards):
    """The experiment's resolved recipe; only a change to it retrains."""
    return json.dumps(recipe(config, wildcards.experiment), sort_keys=True)


def export_settings(wildcards):
    """What export_onnx reads; quantisation settings are not among them, so they never re-export."""
    return json.dumps(
        {"opset": EXPORT["opset"], "parity": EXPORT["parity"]}, sort_keys=True
    )


def final_targets():
    targets = [f"{DATA_DIR}/meta.json"]
    targets += expand("results/export/{experiment}/model.onnx", experiment=EXPERIMENTS)
    if EXPORT["quantize"] == "int8":
        targets += expand(
            "results/quantize/{experiment}/model.int8.onnx", experiment=EXPERIMENTS
        )
    return targets
