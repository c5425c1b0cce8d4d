# The config, validated, and the paths, inputs and resources shared by the rules. No logic beyond
# wiring: the library decides. What jobs are told: rules/settings.smk; what is asked for:
# rules/targets.smk.
import json
import re
import shlex
import sys

sys.path.insert(0, str(Path(workflow.basedir) / "scripts"))

from cifarflow.config import (
    Recipe,
    cifar10_archive,
    dataset_id,
    load_schema,
    prepare_settings,
    recipe,
    validate_config,
)
from cifarflow.errors import PipelineError
from cifarflow.layout import SPLITS, array_files, serving_sources
from cifarflow.sweep import entering, experiments, plan
from snakemake.logging import logger
from snakemake_interface_executor_plugins.settings import DeploymentMethod

SCHEMA = Path(workflow.basedir) / "config" / "schema.yaml"
try:
    validate_config(config, SCHEMA)
    SWEEP = plan(config, load_schema(SCHEMA))  # None without sweep.parameters
    # name -> overrides of `train`: every experiment, the sweep's trials included
    TRAINED = experiments(config, SWEEP)
    # audit.label_issues: K cross-validation folds of train+val (0: off) and the recipe they train
    LABEL_FOLDS = config["audit"]["label_issues"]["folds"] or 0
    FOLD_RECIPE = Recipe.from_config(
        {**config["train"], **config["audit"]["label_issues"]["recipe"]}
    )
except PipelineError as err:
    raise WorkflowError(str(err)) from None

DATASET = config["dataset"]
DATASET_ID = dataset_id(DATASET)
DATA_DIR = f"results/data/{DATASET_ID}"
EXPERIMENTS = sorted(TRAINED)  # every training, the sweep's trials included
TRIALS = list(SWEEP.trials) if SWEEP else []
# Successive halving: the rungs after which promote_rung decides (all but the last, which is the
# trials' train_model job); none without a halving sweep.
DECIDED_RUNGS = list(range(len(SWEEP.rungs) - 1)) if SWEEP else []
# Exported, served, evaluated and registered: every hand-written experiment (and the sweep's
# promoted trials, known once the sweep is ranked: promoted()).
WRITTEN = sorted(set(TRAINED) - set(TRIALS))
EXPORT = config["export"]
AUDIT = config["audit"]
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
        "Set container.image (docs/hpc-and-containers.md) to run the rules in the image."
    )


wildcard_constraints:
    dataset=re.escape(DATASET_ID),
    experiment="|".join(re.escape(name) for name in EXPERIMENTS),
    sweep=re.escape(SWEEP.name) if SWEEP else "(?!)",  # no sweep: no sweep rule matches
    fold="|".join(map(str, range(LABEL_FOLDS))) or "(?!)",  # folds off: no fold rule matches


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


def pool_files(wildcards):
    """What a cross-validation fold reads of the dataset: meta.json, train and val (never test)."""
    files = dataset_files(wildcards)
    return {name: path for name, path in files.items() if not name.startswith("test_")}


def test_split_files(wildcards):
    """What plot_evaluation reads of the dataset: class names (meta.json) and the test split."""
    files = dataset_files(wildcards)
    return {name: files[name] for name in ("meta", "test_images", "test_labels")}


def corrupted_split_files(wildcards):
    """What evaluate_robustness reads of the dataset: the test split (the figures the report shows)
    and the validation split (the figure the champion decision compares)."""
    files = dataset_files(wildcards)
    return {
        name: files[name]
        for name in ("test_images", "test_labels", "val_images", "val_labels")
    }


def experiment_recipe(name):
    """The resolved recipe of an experiment or a sweep trial."""
    return recipe({"train": config["train"], "experiments": TRAINED}, name)


def on_failure(wildcards):
    """A sweep trial whose training cannot finish (diverges) records that as its outcome, so the
    other trials and the ranking go on; an experiment's job fails."""
    return "record" if wildcards.experiment in TRIALS else "fail"


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


# The dataset audit's gate and outputs (rules/audit.smk).
def audit_gate(wildcards):
    """train_model's extra input when the leakage gate is on: the audit's metrics. ancient(): a
    rerun of the audit (other settings) does not retrain; it only has to have passed."""
    if AUDIT["max_test_leakage"] is None:
        return {}
    return {"audit": ancient(audit_output("metrics"))}


def fold_gpus(wildcards):
    """GPUs a fold's training asks for, as train_gpus decides for an experiment's."""
    return 1 if FOLD_RECIPE.device == "cuda" else 0


def fold_outputs(wildcards):
    """Every fold's held-out probabilities (find_label_issues joins them), in fold order."""
    return expand(
        rules.label_fold.output.held_out, dataset=DATASET_ID, fold=range(LABEL_FOLDS)
    )


def label_issue_outputs():
    """find_label_issues' outputs that are asked for (rules/targets.smk); none with folds off."""
    if not LABEL_FOLDS:
        return []
    out = rules.find_label_issues.output
    return expand([out.metrics, out.issues, out.grid], dataset=DATASET_ID)


def audit_output(name):
    """This dataset's path of one of audit_dataset's outputs (called once every rule exists)."""
    return expand(getattr(rules.audit_dataset.output, name), dataset=DATASET_ID)[0]


def trial_metrics(wildcards):
    """Every trial's training metrics, in trial order (rank_sweep, plot_sweep)."""
    return expand(rules.train_model.output.metrics, experiment=TRIALS)


# Successive halving (rules/halving.smk): the rungs' inputs, and what each trial's train_model reads.
def rung_decision(rung):
    """The decision after rung `rung` (promote_rung, a checkpoint: it must have run): its path and
    its content."""
    path = checkpoints.promote_rung.get(sweep=SWEEP.name, rung=rung).output.decision
    return path, json.loads(Path(path).read_text())


def rung_file(name, trial, rung):
    """train_rung's output `name` (metrics, epochs) of one trial and rung."""
    return expand(getattr(rules.train_rung.output, name), experiment=trial, rung=rung)[
        0
    ]


def rung_epochs(wildcards):
    return SWEEP.rungs[int(wildcards.rung)]


def previous_rung(wildcards):
    """A rung after the first resumes the trial from the rung before (its state is resume.pt) and
    waits for the decision that promoted it."""
    rung = int(wildcards.rung)
    if rung == 0:
        return {}
    return {
        "previous": rung_file("metrics", wildcards.experiment, rung - 1),
        "promoted_by": expand(
            rules.promote_rung.output.decision, sweep=SWEEP.name, rung=rung - 1
        ),
    }


def previous_arg(wildcards, input):
    """`--previous <input.previous>` where the job has that input (a rung after the first)."""
    return (
        f"--previous {shlex.quote(input.previous)}"
        if "previous" in input.keys()
        else ""
    )


def rung_inputs(wildcards):
    """The rung's metrics of the trials that entered it (all at rung 0; else those the rung
    before promoted, once its checkpoint has run), and that decision."""
    rung = int(wildcards.rung)
    inputs = {}
    before = None
    if rung > 0:
        inputs["previous"], before = rung_decision(rung - 1)
    trials = entering(SWEEP, rung, before)
    inputs["metrics"] = [rung_file("metrics", trial, rung) for trial in trials]
    return inputs


def halving_inputs(wildcards):
    """A halving trial's train_model reads the decision of every rung it entered; when one stopped
    it, that rung's figures (it records them), else the last rung's (it resumes from its state).
    """
    trial = wildcards.experiment
    if not DECIDED_RUNGS or trial not in TRIALS:
        return {}
    decisions = []
    for rung in DECIDED_RUNGS:
        path, decision = rung_decision(rung)
        decisions.append(path)
        if trial not in decision["promoted"]:
            break
    return {
        "rungs": decisions,
        "rung_metrics": rung_file("metrics", trial, rung),
        "rung_epochs": rung_file("epochs", trial, rung),
    }


def halving_args(wildcards, input):
    """train_model's arguments for a halving trial, after a space; none otherwise (so that the
    command of every other training stays as it was: a changed command reruns a job)."""
    if "rungs" not in input.keys():
        return ""
    return " " + " ".join(
        [
            f"--trial {shlex.quote(wildcards.experiment)} --rungs",
            *map(shlex.quote, input.rungs),
            f"--rung-metrics {shlex.quote(input.rung_metrics)}",
            f"--rung-epochs {shlex.quote(input.rung_epochs)}",
        ]
    )


def rungs_chart_arg(wildcards, output):
    return f"--rungs {shlex.quote(output.rungs)}" if "rungs" in output.keys() else ""


# Inputs and arguments of the registration and the report's rules. They name other rules' files as
# rules.<name>.output: resolved when called, after every rule is defined.
def card_inputs(wildcards):
    """What register_model's model card reads besides the model, the manifest and the evaluation."""
    return {
        "export": rules.export_onnx.output.metrics,
        "train": rules.train_model.output.metrics,
        "meta": f"{DATA_DIR}/meta.json",
        "robustness": rules.evaluate_robustness.output.table,
        "audit": audit_output("metrics"),
        **({"label_issues": label_issue_outputs()[0]} if LABEL_FOLDS else {}),
    }


def export_table_inputs(wildcards):
    """export_onnx's metrics, and quantize_onnx's when it is in the chain (export.quantize int8)."""
    files = {"metrics": rules.export_onnx.output.metrics}
    if "quantize_onnx" in CHAIN:  # rules/targets.smk
        files["quantize"] = rules.quantize_onnx.output.metrics
    return {
        name: path.format(experiment=wildcards.experiment)
        for name, path in files.items()
    }


def label_issues_arg(wildcards, input):
    """register_model's train/val label issues (find_label_issues' metrics), when folds are on."""
    if "label_issues" not in input.keys():
        return ""
    return f"--label-issues {shlex.quote(input.label_issues)}"


def quantize_arg(wildcards, input):
    if "quantize" not in input.keys():
        return ""
    return f"--quantize {shlex.quote(input.quantize)}"


def comparison_inputs(wildcards):
    """Every shipped experiment's metrics of each stage, in shipped() order (compare_experiments);
    with a sweep, its ranking too, which decides which trials are among them.
    """
    names = shipped()
    inputs = {
        "train": expand(rules.train_model.output.metrics, experiment=names),
        "export": expand(rules.export_onnx.output.metrics, experiment=names),
        "evaluate": expand(
            rules.evaluate_served_model.output.metrics, experiment=names
        ),
        "manifest": expand(rules.build_serving_image.output.manifest, experiment=names),
        "registration": expand(
            rules.register_model.output.registration, experiment=names
        ),
    }
    if SWEEP:
        inputs["ranking"] = expand(rules.rank_sweep.output.ranking, sweep=SWEEP.name)
    return inputs


def compared(wildcards):
    """The experiments compare_experiments shows: the shipped ones (rank_sweep is among its inputs)."""
    return shipped()
