# Config lookups and paths shared by the rules. No logic beyond wiring: the library decides.
import hashlib
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
from cifarflow.errors import PipelineError
from cifarflow.layout import SPLITS, array_files, serving_sources
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
    """What export_onnx reads; quantisation settings are not among them, so they never re-export.
    calibrate only when on: an export made before the setting existed is not redone for it.
    """
    settings = {"opset": EXPORT["opset"], "parity": EXPORT["parity"]}
    if EXPORT["calibrate"] != "none":
        settings["calibrate"] = EXPORT["calibrate"]
    return json.dumps(settings, sort_keys=True)


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


def model_config_sha256(wildcards):
    """sha256 of the settings that made this experiment's model, as the model card shows it: the
    dataset's, the recipe, export, serving, evaluation and robustness (each already reruns its step).
    """
    made_by = {
        "dataset": prepare_settings(DATASET),
        "recipe": experiment_recipe(wildcards.experiment).asdict(),
        "export": json.loads(export_settings(wildcards)),
        "serving": json.loads(serving_settings(wildcards)),
        "evaluate": config["evaluate"],
        "robustness": config["robustness"],
    }
    return hashlib.sha256(json.dumps(made_by, sort_keys=True).encode()).hexdigest()


def card_inputs(wildcards):
    """What register_model's model card reads besides the model, the manifest and the evaluation."""
    return {
        "export": rules.export_onnx.output.metrics,
        "train": rules.train_model.output.metrics,
        "meta": f"{DATA_DIR}/meta.json",
        "robustness": rules.evaluate_robustness.output.table,
        "audit": audit_output("metrics"),
    }


# Each job's log records the software versions it ran with (cifarflow.runtime.run_cli). The model card
# and the report's versions table read them from the logs: named as params, not inputs, because a
# missing log would make Snakemake rerun its job (retrain, for a log deleted by hand); the jobs
# themselves are inputs through their outputs, so their logs are written before they are read.
CARD_JOBS = (
    "prepare_dataset",
    "train_model",
    "export_onnx",
    "evaluate_robustness",
    "build_serving_image",
    "evaluate_served_model",
)


def job_file(name, kind, **wildcards):
    """The first log (kind "log") or output (kind "output") of rule `name`, for these wildcards."""
    return str(getattr(getattr(rules, name), kind)[0]).format(
        dataset=DATASET_ID, **wildcards
    )


def job_logs(jobs):
    """JOB=LOG arguments (--logs) of the scripts that read the versions."""
    return " ".join(shlex.quote(f"{job}={log}") for job, log in jobs.items())


def card_logs(wildcards):
    return job_logs(
        {
            job: job_file(job, "log", experiment=wildcards.experiment)
            for job in CARD_JOBS
        }
    )


def versioned_jobs():
    """(job name, rule, wildcards) of every job that computes (the report's own jobs aside). With a
    sweep, it waits for the ranking (shipped())."""
    jobs = [
        ("prepare_dataset", "prepare_dataset", {}),
        ("audit_dataset", "audit_dataset", {}),
    ]
    per_experiment = ["export_onnx"]
    per_experiment += ["quantize_onnx"] if EXPORT["quantize"] == "int8" else []
    per_experiment += [
        "evaluate_robustness",
        "build_serving_image",
        "evaluate_served_model",
        "register_model",
    ]
    # every training (a sweep's trials too); the rest for the shipped experiments only
    jobs += [
        (f"train_model/{e}", "train_model", {"experiment": e}) for e in EXPERIMENTS
    ]
    for experiment in shipped():
        jobs += [
            (f"{rule}/{experiment}", rule, {"experiment": experiment})
            for rule in per_experiment
        ]
    return jobs


def versions_inputs(wildcards):
    """One output of every such job: the table is made after them, and again when one reruns."""
    return [job_file(rule, "output", **w) for _, rule, w in versioned_jobs()]


def versions_logs(wildcards):
    return job_logs(
        {name: job_file(rule, "log", **w) for name, rule, w in versioned_jobs()}
    )


def final_targets(wildcards):
    """The targets (Snakefile, `all`) that do not wait for a sweep's ranking. The data and every
    hand-written experiment through registration, with their report items, and the sweep's report
    section. Called when the DAG is built, after every include, so rules.<name> exist for all rules.
    """
    targets = expand(rules.prepare_dataset.output.meta, dataset=DATASET_ID)
    targets += audit_targets()  # rules/audit.smk
    targets += shipped_targets(WRITTEN)
    return targets + report_targets() + sweep_targets()


def promoted_targets(wildcards):
    """The targets (Snakefile, `all`) that wait for the sweep's ranking, a checkpoint. The promoted
    trials through registration with their report items, and the comparison of everything shipped.
    """
    # compare_experiments' report items; its summary.rst and metrics.json come with them
    compare = rules.compare_experiments.output
    return shipped_targets(promoted()) + [compare.table, compare.chart, compare.recipes]


def shipped_targets(names):
    """Export, registration (which needs the serving image and the evaluation) and the report
    items of the experiments `names`. Every report item is named among the targets: --report needs
    them all, and a job whose other outputs exist is not rerun for one that is missing.
    """
    targets = expand(rules.export_onnx.output.onnx, experiment=names)
    if EXPORT["quantize"] == "int8":
        targets += expand(rules.quantize_onnx.output.onnx, experiment=names)
    targets += expand(rules.register_model.output.registration, experiment=names)
    per_experiment = [
        *rules.plot_training.output,
        *rules.tabulate_export.output,
        *rules.tabulate_manifest.output,
        *rules.plot_evaluation.output,
        *rules.plot_robustness.output,
        rules.register_model.output.card_html,
    ]
    return targets + expand(per_experiment, experiment=names)


# The report (rules/report.smk): its targets and its rules' inputs and arguments. They live here,
# not beside its rules (snakemake --lint: no functions in a file of rules), and name other rules'
# files as rules.<name>.output: resolved when called, after every rule is defined.
def report_targets():
    """The data's report items and the software versions table (each experiment's:
    shipped_targets; the comparison's: promoted_targets).
    """
    return [
        *rules.tabulate_versions.output,
        *expand(rules.plot_dataset.output, dataset=DATASET_ID),
    ]


def export_table_inputs(wildcards):
    """export_onnx's metrics, and quantize_onnx's when export.quantize is int8."""
    files = {"metrics": rules.export_onnx.output.metrics}
    if EXPORT["quantize"] == "int8":
        files["quantize"] = rules.quantize_onnx.output.metrics
    return {
        name: path.format(experiment=wildcards.experiment)
        for name, path in files.items()
    }


def quantize_arg(wildcards, input):
    if "quantize" not in input.keys():
        return ""
    return f"--quantize {shlex.quote(input.quantize)}"


def test_split_files(wildcards):
    """What plot_evaluation reads of the dataset: class names (meta.json) and the test split."""
    files = dataset_files(wildcards)
    return {name: files[name] for name in ("meta", "test_images", "test_labels")}


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


def recipes_json(wildcards):
    """Every shipped experiment's resolved recipe (compare_experiments shows them side by side)."""
    recipes = {name: experiment_recipe(name).asdict() for name in shipped()}
    return json.dumps(recipes, sort_keys=True)


# The dataset audit's settings, gate and outputs (rules/audit.smk).
def audit_settings(wildcards):
    """What audit_dataset decides with; a change reruns the audit (and the evaluation reading it)."""
    return json.dumps(AUDIT, sort_keys=True)


def audit_gate(wildcards):
    """train_model's extra input when the leakage gate is on: the audit's metrics. ancient(): a
    rerun of the audit (other settings) does not retrain; it only has to have passed."""
    if AUDIT["max_test_leakage"] is None:
        return {}
    return {"audit": ancient(audit_output("metrics"))}


def audit_output(name):
    """This dataset's path of one of audit_dataset's outputs (called once every rule exists)."""
    return expand(getattr(rules.audit_dataset.output, name), dataset=DATASET_ID)[0]


def audit_targets():
    return [audit_output("metrics")]


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
    """The sweep's report section, after its ranking (none without a sweep)."""
    return expand(rules.plot_sweep.output, sweep=SWEEP.name) if SWEEP else []


def trial_metrics(wildcards):
    """Every trial's training metrics, in trial order (rank_sweep, plot_sweep)."""
    return expand(rules.train_model.output.metrics, experiment=TRIALS)


def sweep_json(wildcards):
    """The expanded sweep: its trials and their settings (a change re-ranks), what it promotes."""
    return SWEEP.to_json()
