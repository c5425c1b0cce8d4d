# Successive halving (sweep.method halving, docs/sweeps.md): the rung jobs, the checkpoint that
# decides after each rung, and the inputs they and each trial's train_model (rules/train.smk) read.
# Included before train.smk, whose train_model names halving_inputs and halving_args.

import json


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


def previous_rung_arg(wildcards, input):
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


def previous_decision_arg(wildcards, input):
    return (
        f"--previous {shlex.quote(input.previous)}"
        if "previous" in input.keys()
        else ""
    )


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


# Successive halving (sweep.method halving): each trial is a chain of train_rung jobs, one per rung
# but the last (one Slurm job each), every one resuming from the one before through the trial's
# resume.pt and stopping after the rung's epoch of the full schedule. After each rung, promote_rung
# (a checkpoint, like rank_sweep) keeps the best 1/eta by validation accuracy; the trial's
# train_model job then either finishes the schedule (promoted by every rung) or records where the
# trial stopped (rules/train.smk, halving_inputs). A missing resume.pt costs a retraining from epoch
# 0, never a different result: everything random in epoch e is seeded from (seed, e).
rule train_rung:
    input:
        unpack(dataset_files),
        unpack(audit_gate),
        unpack(previous_rung),
    output:
        metrics="results/train/{experiment}/rung{rung}/metrics.json",
        epochs="results/train/{experiment}/rung{rung}/epochs.json",
    log:
        "logs/train_rung/{experiment}-rung{rung}.log",
    benchmark:
        "benchmarks/train_rung/{experiment}-rung{rung}.tsv"
    wildcard_constraints:
        experiment="|".join(re.escape(name) for name in TRIALS) or "(?!)",
        rung="|".join(str(rung) for rung in DECIDED_RUNGS) or "(?!)",
    conda:
        "../envs/train.yaml"
    container:
        PIPELINE_IMAGE
    threads: 2
    resources:  # as train_model's (a rung is a part of its training)
        mem_mb=by_attempt(8000),
        runtime=by_attempt(120),
        gpu=train_gpus,
    params:
        recipe=recipe_json,
        data=DATA_DIR,
        outdir="results/train/{experiment}",
        epochs=rung_epochs,
        previous=previous_rung_arg,
        mlflow_tags=mlflow_tags,
    shell:
        "python scripts/train_rung.py --data {params.data:q} --recipe {params.recipe:q}"
        " --outdir {params.outdir:q} --rung {wildcards.rung} --epochs {params.epochs}"
        " {params.previous} --metrics {output.metrics:q} --epochs-out {output.epochs:q}"
        " --threads {threads} --log {log:q}"


checkpoint promote_rung:
    input:
        unpack(rung_inputs),
    output:
        decision="results/sweep/{sweep}/rung{rung}/decision.json",
        metrics="results/sweep/{sweep}/rung{rung}/metrics.json",
    log:
        "logs/promote_rung/{sweep}-rung{rung}.log",
    benchmark:
        "benchmarks/promote_rung/{sweep}-rung{rung}.tsv"
    wildcard_constraints:
        rung="|".join(str(rung) for rung in DECIDED_RUNGS) or "(?!)",
    localrule: True
    conda:
        "../envs/report.yaml"
    container:
        PIPELINE_IMAGE
    params:
        sweep=sweep_json,
        previous=previous_decision_arg,
    shell:
        "python scripts/promote_rung.py --sweep {params.sweep:q} --rung {wildcards.rung}"
        " {params.previous} --metrics {input.metrics:q} --decision {output.decision:q}"
        " --summary {output.metrics:q} --log {log:q}"
