# What each job is told: the settings it reads, as one JSON param (sorted keys), so that a change to
# them, and only to them, reruns it (docs/architecture.md, "How config reaches the rules").
# Functions only (snakemake --lint: no functions in a file of rules).
import hashlib
import json


def dataset_settings(wildcards):
    """The settings that define the dataset, as JSON (a change reruns prepare_dataset)."""
    return json.dumps(prepare_settings(DATASET), sort_keys=True)


def audit_settings(wildcards):
    """What audit_dataset decides with; a change reruns the audit (and the evaluation reading it).
    Not label_issues: the folds' settings are label_fold's (fold_recipe_json, its folds and seed).
    """
    return json.dumps(
        {key: value for key, value in AUDIT.items() if key != "label_issues"},
        sort_keys=True,
    )


def fold_recipe_json(wildcards):
    """The folds' resolved recipe (train with audit.label_issues.recipe); a change retrains the folds."""
    return FOLD_RECIPE.to_json()


def recipe_json(wildcards):
    """The experiment's resolved recipe; only a change to it retrains."""
    return experiment_recipe(wildcards.experiment).to_json()


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


def parity_settings(wildcards):
    """The parity gates tabulate_export marks the export's figures against."""
    return json.dumps(EXPORT["parity"], sort_keys=True)


def robustness_settings(wildcards):
    """What evaluate_robustness measures: the corruptions, their severities, how many images."""
    return json.dumps(config["robustness"], sort_keys=True)


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


def sweep_json(wildcards):
    """The expanded sweep: its trials and their settings (a change re-ranks), what it promotes."""
    return SWEEP.to_json()


def recipes_json(wildcards):
    """Every shipped experiment's resolved recipe (compare_experiments shows them side by side)."""
    recipes = {name: experiment_recipe(name).asdict() for name in shipped()}
    return json.dumps(recipes, sort_keys=True)
