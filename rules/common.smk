# Config lookups and paths shared by the rules. No logic beyond wiring: the library decides.
import json
import re
import shlex
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
from cifarflow.engines import serving_sources
from cifarflow.errors import PipelineError
from snakemake.logging import logger
from snakemake_interface_executor_plugins.settings import DeploymentMethod

try:
    validate_config(config, Path(workflow.basedir) / "config" / "schema.yaml")
except PipelineError as err:
    raise WorkflowError(str(err)) from None

DATASET = config["dataset"]
DATASET_ID = dataset_id(DATASET)
DATA_DIR = f"results/data/{DATASET_ID}"
EXPERIMENTS = sorted(config["experiments"])
EXPORT = config["export"]
# The pipeline image (containers/pipeline) every rule runs in under --use-singularity (= --sdm
# apptainer; profiles/slurm), except the two serving rules that drive a container engine themselves
# (rules/serve.smk). None = the environment the job inherits (the venv). One image for CPU and GPU
# rules: its CUDA variant runs on CPUs too, and `--apptainer-args="--nv"` brings in the node's driver.
PIPELINE_IMAGE = config["container"]["image"] or None

if (
    DeploymentMethod.APPTAINER in workflow.deployment_settings.deployment_method
    and PIPELINE_IMAGE is None
):
    logger.warning(
        "software-deployment-method apptainer is on, but config container.image is empty: every "
        "rule runs in the environment its job inherits (the venv on PATH), not in a container. "
        "Set container.image (README, 'Every rule in a container') to run the rules in the image."
    )


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
    return recipe(config, wildcards.experiment).to_json()


def export_settings(wildcards):
    """What export_onnx reads; quantisation settings are not among them, so they never re-export."""
    return json.dumps(
        {"opset": EXPORT["opset"], "parity": EXPORT["parity"]}, sort_keys=True
    )


def by_attempt(amount):
    """A resource (mem_mb, runtime) that grows with each try: a job killed for memory or time gets
    twice as much on its first retry (profiles/slurm sets retries), three times on the second.
    """

    def scaled(wildcards, attempt):
        return amount * attempt

    return scaled


def train_gpus(wildcards):
    """GPUs a training job asks for: one when its recipe trains on CUDA (training uses one device),
    none for cpu or auto (auto trains on whatever the node has: on Slurm, no GPU is waited for).
    """
    return 1 if recipe(config, wildcards.experiment).device == "cuda" else 0


def serving_settings(wildcards):
    """What the image is built from; a change rebuilds it (as do the model and the serving code)."""
    keys = ("engine", "model_name", "image", "base_image", "build_options")
    return json.dumps({key: config["serving"][key] for key in keys}, sort_keys=True)


def evaluation_settings(wildcards):
    return json.dumps(
        {"serving": config["serving"], "evaluate": config["evaluate"]}, sort_keys=True
    )


def registry_settings(wildcards):
    return json.dumps(
        {"register": config["register"], "mlflow": config["mlflow"]}, sort_keys=True
    )


def final_targets():
    targets = [f"{DATA_DIR}/meta.json"]
    targets += expand("results/export/{experiment}/model.onnx", experiment=EXPERIMENTS)
    if EXPORT["quantize"] == "int8":
        targets += expand(
            "results/quantize/{experiment}/model.int8.onnx", experiment=EXPERIMENTS
        )
    targets += expand(
        "results/register/{experiment}/registration.json", experiment=EXPERIMENTS
    )
    targets += report_targets()  # rules/report.smk
    return targets


# The report (rules/report.smk): its targets and its rules' inputs and arguments.
SERVED_FILES = {
    "evaluate": "results/evaluate/{experiment}/metrics.json",
    "manifest": "results/image/{experiment}/manifest.json",
    "registration": "results/register/{experiment}/registration.json",
}
COMPARISON_FILES = ["comparison.html", "comparison.png", "recipes.html"]


def report_targets():
    """Every report item of this config, each named (appended to final_targets): --report needs
    them all, and a job whose other outputs exist is not rerun for one that is missing.
    """
    per_experiment = [
        "results/report/train/{experiment}/curves.png",
        "results/report/train/{experiment}/history.html",
        "results/report/export/{experiment}/export.html",
        "results/report/serve/{experiment}/manifest.html",
        "results/report/evaluate/{experiment}/per_class.html",
        "results/report/evaluate/{experiment}/confidently_wrong.png",
    ]
    return [
        f"results/report/data/{DATASET_ID}/samples.png",
        f"results/report/data/{DATASET_ID}/class_counts.html",
        *expand(per_experiment, experiment=EXPERIMENTS),
        *expand("results/report/compare/{file}", file=COMPARISON_FILES),
    ]


def export_table_inputs(wildcards):
    files = {"metrics": f"results/export/{wildcards.experiment}/metrics.json"}
    if EXPORT["quantize"] == "int8":
        files["quantize"] = f"results/quantize/{wildcards.experiment}/metrics.json"
    return files


def quantize_arg(wildcards, input):
    if "quantize" not in input.keys():
        return ""
    return f"--quantize {shlex.quote(input.quantize)}"


def test_split_files(wildcards):
    """What plot_evaluation reads of the dataset: class names and the test images."""
    return {
        "meta": f"{DATA_DIR}/meta.json",
        "test_images": f"{DATA_DIR}/test_images.npy",
        "test_labels": f"{DATA_DIR}/test_labels.npy",
    }


def comparison_inputs(wildcards):
    """Every experiment's metrics of each stage, in EXPERIMENTS order (compare_experiments)."""
    files = {
        "train": rules.train_model.output.metrics,
        "export": rules.export_onnx.output.metrics,
        **SERVED_FILES,
    }
    return {part: expand(path, experiment=EXPERIMENTS) for part, path in files.items()}


def recipes_json(wildcards):
    """Every experiment's resolved recipe (compare_experiments shows them side by side)."""
    recipes = {name: recipe(config, name).asdict() for name in EXPERIMENTS}
    return json.dumps(recipes, sort_keys=True)
