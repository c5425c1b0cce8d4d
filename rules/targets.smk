# What is asked for: the experiments that ship, the targets of `all`, and the jobs whose software
# versions the model card and the report's versions table read. All of it follows CHAIN, the one
# list of the jobs each shipped experiment runs. Functions only (snakemake --lint: no functions in a
# file of rules); they name other rules' files as rules.<name>.output, resolved when called, after
# every rule is defined.
import json
import shlex

# The jobs each shipped experiment runs after its training, in order, each with the output that
# `all` asks for (None: the registration needs it, which is enough). The one place that
# export.quantize decides whether there is an int8 copy.
CHAIN = {
    "export_onnx": "onnx",
    **({"quantize_onnx": "onnx"} if EXPORT["quantize"] == "int8" else {}),
    "evaluate_robustness": None,
    "build_serving_image": None,
    "evaluate_served_model": None,
    "register_model": "registration",
}
# The jobs that made the model the card describes, the served one: not the int8 copy (never served)
# nor the registration (the card's own job).
CARD_JOBS = (
    "prepare_dataset",
    "train_model",
    *(job for job in CHAIN if job not in ("quantize_onnx", "register_model")),
)


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


def final_targets(wildcards):
    """The targets (Snakefile, `all`) that do not wait for a sweep's ranking. The data and every
    hand-written experiment through registration, with their report items, and the sweep's report
    section. Called when the DAG is built, after every include, so rules.<name> exist for all rules.
    """
    targets = expand(rules.prepare_dataset.output.meta, dataset=DATASET_ID)
    targets += [audit_output("metrics")]  # rules/audit.smk
    targets += (
        label_issue_outputs()
    )  # rules/audit.smk: with audit.label_issues.folds only
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
    """The chain's targets (the ONNX files, the registration) and the report items of the
    experiments `names`. Every report item is named among the targets: --report needs them all, and a
    job whose other outputs exist is not rerun for one that is missing.
    """
    chain = [
        getattr(getattr(rules, job).output, out) for job, out in CHAIN.items() if out
    ]
    report_items = [
        *rules.plot_training.output,
        *rules.tabulate_export.output,
        *rules.tabulate_manifest.output,
        *rules.plot_evaluation.output,
        *rules.plot_robustness.output,
        rules.register_model.output.card_html,
    ]
    return expand([*chain, *report_items], experiment=names)


def report_targets():
    """The data's report items and the software versions table (each experiment's:
    shipped_targets; the comparison's: promoted_targets).
    """
    return [
        *rules.tabulate_versions.output,
        *expand(rules.plot_dataset.output, dataset=DATASET_ID),
    ]


def sweep_targets():
    """The sweep's report section, after its ranking (none without a sweep)."""
    return expand(rules.plot_sweep.output, sweep=SWEEP.name) if SWEEP else []


# Each job's log records the software versions it ran with (cifarflow.runtime.run_cli). The model card
# and the report's versions table read them from the logs: named as params, not inputs, because a
# missing log would make Snakemake rerun its job (retrain, for a log deleted by hand); the jobs
# themselves are inputs through their outputs, so their logs are written before they are read.
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
    """(job name, rule, wildcards) of every job that computes (the report's own jobs aside): the
    data's, every training (a sweep's trials too) and the chain of every shipped experiment. With a
    sweep, it waits for the ranking (shipped())."""
    jobs = [
        ("prepare_dataset", "prepare_dataset", {}),
        ("audit_dataset", "audit_dataset", {}),
    ]
    jobs += [
        (f"train_model/{e}", "train_model", {"experiment": e}) for e in EXPERIMENTS
    ]
    jobs += [(f"label_fold/{f}", "label_fold", {"fold": f}) for f in range(LABEL_FOLDS)]
    if LABEL_FOLDS:
        jobs.append(("find_label_issues", "find_label_issues", {}))
    for experiment in shipped():
        jobs += [
            (f"{job}/{experiment}", job, {"experiment": experiment}) for job in CHAIN
        ]
    return jobs


def versions_inputs(wildcards):
    """One output of every such job: the table is made after them, and again when one reruns."""
    return [job_file(rule, "output", **w) for _, rule, w in versioned_jobs()]


def versions_logs(wildcards):
    return job_logs(
        {name: job_file(rule, "log", **w) for name, rule, w in versioned_jobs()}
    )
