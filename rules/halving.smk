# Successive halving (sweep.method halving, docs/sweeps.md): the rung jobs and the checkpoint that
# decides after each rung. Their input functions, and those of each trial's train_model, are in
# rules/common.smk (Snakemake's lint wants functions and rules in separate files).


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
        previous=previous_arg,
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
        previous=previous_arg,
    shell:
        "python scripts/promote_rung.py --sweep {params.sweep:q} --rung {wildcards.rung}"
        " {params.previous} --metrics {input.metrics:q} --decision {output.decision:q}"
        " --summary {output.metrics:q} --log {log:q}"
