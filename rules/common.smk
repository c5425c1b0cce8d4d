# Config lookups and paths shared by the rules. No logic beyond wiring: the library decides.
import json
import re
import shlex
import sys

sys.path.insert(0, str(Path(workflow.basedir) / "scripts"))

from cifarflow.config import (
    cifar10_archive,
    dataset_id,
    load_schema,
    prepare_settings,
    recipe,
    validate_config,
)
from cifarflow.dataset import SPLITS, array_files
from cifarflow.engines import serving_sources
from cifarflow.errors import PipelineError
from cifarflow.sweep import experiments, plan
from snakemake.logging import logger
from snakemake_interface_executor_plugins.settings import DeploymentMethod

SCHEMA = Path(workflow.basedir) / "config" / "schema.yaml"
try:
    validate_config(config, SCHEMA)
    SWEEP = plan(config, load_schema(SCHEMA))  # None without sweep.parameters
    # name -> overrides of `train`: every experiment, the sweep's trials included
    TRAINED = experiments(config, SWEEP)
except PipelineError as err:
    raise WorkflowError(str(err)) from None

DATASET = config["dataset"]
DATASET_ID = dataset_id(DATASET)
DATA_DIR = f"results/data/{DATASET_ID}"
EXPERIMENTS = sorted(TRAINED)  # every training, the sweep's trials included
TRIALS = list(SWEEP.trials) if SWEEP else []
# Exported, served, evaluated and registered: every hand-written experiment (and the sweep's
# promoted trials, known once the sweep is ranked: promoted()).
WRITTEN = sorted(set(TRAINED) - set(TRIALS))
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
    sweep=re.escape(SWEEP.name) if SWEEP else "(?!)",  # no sweep: no sweep rule matches


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


def experiment_recipe(name):
    """The resolved recipe of an experiment or a sweep trial."""
    return recipe({"train": config["train"], "experiments": TRAINED}, name)


def recipe_json(wildcards):
    """The experiment's resolved recipe; only a change to it retrains."""
    return experiment_recipe(wildcards.experiment).to_json()


def on_failure(wildcards):
    """A sweep trial whose training cannot finish (diverges) records that as its outcome, so the
    other trials and the ranking go on; an experiment's job fails."""
    return "record" if wildcards.experiment in TRIALS else "fail"


def mlflow_tags(wildcards):
    """Tags of the job's MLflow run (the hook reads this param): a trial's sweep and settings."""
    trial = wildcards.experiment
    return json.dumps(SWEEP.tags(trial) if trial in TRIALS else {}, sort_keys=True)


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
    return 1 if experiment_recipe(wildcards.experiment).device == "cuda" else 0


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


def final_targets(wildcards):
    """What `all` asks for without waiting for a sweep's ranking: the data and every hand-written
    experiment through registration, with their report items, and the sweep's report section.
    """
    targets = [f"{DATA_DIR}/meta.json", *shipped_targets(WRITTEN)]
    return targets + report_targets() + sweep_targets()


def promoted_targets(wildcards):
    """What waits for the sweep's ranking (a checkpoint): its promoted trials through registration
    with their report items, and the comparison of everything shipped.
    """
    comparison = expand("results/report/compare/{file}", file=COMPARISON_FILES)
    return shipped_targets(promoted()) + comparison


def shipped_targets(names):
    """Export, serving image, evaluation, registration and the report items of `names`."""
    targets = expand("results/export/{experiment}/model.onnx", experiment=names)
    if EXPORT["quantize"] == "int8":
        targets += expand(
            "results/quantize/{experiment}/model.int8.onnx", experiment=names
        )
    targets += expand(
        "results/register/{experiment}/registration.json", experiment=names
    )
    return targets + expand(PER_EXPERIMENT_REPORT, experiment=names)


# The report (rules/report.smk): its targets and its rules' inputs and arguments.
SERVED_FILES = {
    "evaluate": "results/evaluate/{experiment}/metrics.json",
    "manifest": "results/image/{experiment}/manifest.json",
    "registration": "results/register/{experiment}/registration.json",
}
COMPARISON_FILES = ["comparison.html", "comparison.png", "recipes.html"]


# Every report item is named among the targets (the data's here, each shipped experiment's in
# shipped_targets, the comparison's in promoted_targets): --report needs them all, and a job whose
# other outputs exist is not rerun for one that is missing.
PER_EXPERIMENT_REPORT = [
    "results/report/train/{experiment}/curves.png",
    "results/report/train/{experiment}/history.html",
    "results/report/export/{experiment}/export.html",
    "results/report/serve/{experiment}/manifest.html",
    "results/report/evaluate/{experiment}/per_class.html",
    "results/report/evaluate/{experiment}/confidently_wrong.png",
]


def report_targets():
    """The data's report items."""
    return [
        f"results/report/data/{DATASET_ID}/samples.png",
        f"results/report/data/{DATASET_ID}/class_counts.html",
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
    """Every shipped experiment's metrics of each stage, in shipped() order (compare_experiments);
    with a sweep, its ranking too, which decides which trials are among them."""
    files = {
        "train": rules.train_model.output.metrics,
        "export": rules.export_onnx.output.metrics,
        **SERVED_FILES,
    }
    inputs = {part: expand(path, experiment=shipped()) for part, path in files.items()}
    if SWEEP:
        inputs["ranking"] = expand(rules.rank_sweep.output.ranking, sweep=SWEEP.name)
    return inputs


def compared(wildcards):
    """The experiments compare_experiments shows: the shipped ones (rank_sweep is among its inputs)."""
    return shipped()


def recipes_json(wildcards):
    """Every shipped experiment's resolved recipe (compare_experiments shows them side by side)."""
    recipes = {name: experiment_recipe(name).asdict() for name in shipped()}
    return json.dumps(recipes, sort_keys=True)


# Sweeps (rules/sweep.smk)
def promoted():
    """The sweep's trials that go on to export, serving and registration: the best by validation
    accuracy, as rank_sweep (a checkpoint: the DAG after it depends on its result) wrote them.
    """
    if SWEEP is None:
        return []
    ranking = checkpoints.rank_sweep.get(sweep=SWEEP.name).output.ranking
    return json.loads(Path(ranking).read_text())["promoted"]


def shipped():
    """Every experiment that is exported, served, evaluated and registered."""
    return sorted([*WRITTEN, *promoted()])


def sweep_targets():
    """The sweep's ranking and its report section (none without a sweep)."""
    if SWEEP is None:
        return []
    return expand(
        "results/report/sweep/{sweep}/{file}", sweep=SWEEP.name, file=SWEEP_REPORT
    )


SWEEP_REPORT = ["ranking.html", "parameters.png", "curves.png"]


def trial_metrics(wildcards):
    """Every trial's training metrics, in trial order (rank_sweep, plot_sweep)."""
    return expand(rules.train_model.output.metrics, experiment=TRIALS)


def sweep_json(wildcards):
    """The expanded sweep: its trials and their settings (a change re-ranks), what it promotes."""
    return SWEEP.to_json()
