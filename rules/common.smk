# Config lookups and paths shared by the rules. No logic beyond wiring: the library decides.
import json
import sys

sys.path.insert(0, str(Path(workflow.basedir) / "scripts"))

from cifarflow.config import (
    cifar10_archive,
    dataset_id,
    prepare_settings,
    validate_config,
)
from cifarflow.errors import PipelineError

try:
    validate_config(config, Path(workflow.basedir) / "config" / "schema.yaml")
except PipelineError as err:
    raise WorkflowError(str(err)) from None

DATASET = config["dataset"]
DATASET_ID = dataset_id(DATASET)
DATA_DIR = f"results/data/{DATASET_ID}"


wildcard_constraints:
    dataset=DATASET_ID,


def dataset_settings(wildcards):
    """The settings that define the dataset, as JSON (a change reruns prepare_dataset)."""
    return json.dumps(prepare_settings(DATASET), sort_keys=True)


def prepare_dataset_input(wildcards):
    if DATASET["source"] == "cifar10":
        return {"archive": str(cifar10_archive(DATASET))}
    return {}


def final_targets():
    return [f"{DATA_DIR}/meta.json"]
