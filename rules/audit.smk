# The dataset audit: exact and near-duplicates within and across splits, anomalies, class balance
# (scripts/cifarflow/audit.py). It runs beside training; with audit.max_test_leakage set, training
# waits for it (train_model's input), so that a leaky dataset stops the run before any training.
rule audit_dataset:
    input:
        unpack(dataset_files),
    output:
        metrics="results/audit/{dataset}/metrics.json",
        duplicates="results/audit/{dataset}/duplicates.parquet",
        anomalies="results/audit/{dataset}/anomalies.parquet",
        pairs=report(
            "results/audit/{dataset}/closest_pairs.png",
            caption="../report/audit_pairs.rst",
            category="Data",
            labels={"experiment": "all", "figure": "closest cross-split pairs"},
        ),
        balance=report(
            "results/audit/{dataset}/class_balance.png",
            caption="../report/audit_balance.rst",
            category="Data",
            labels={"experiment": "all", "figure": "class balance per split"},
        ),
    log:
        "logs/audit_dataset/{dataset}.log",
    benchmark:
        "benchmarks/audit_dataset/{dataset}.tsv"
    conda:
        "../envs/audit.yaml"
    container:
        PIPELINE_IMAGE
    threads: 2
    # measured on 60,000 CIFAR-sized images: docs/audit.md, "Speed"
    resources:
        mem_mb=by_attempt(4000),
        runtime=by_attempt(15),
    params:
        settings=audit_settings,
        data=DATA_DIR,
        outdir=subpath(output.metrics, parent=True),
        # written only when the gate fails (outputs of a failed job are removed): beside the log
        failed_grid="logs/audit_dataset/{dataset}.closest_pairs.png",
    shell:
        "python scripts/audit_dataset.py --data {params.data:q} --settings {params.settings:q}"
        " --outdir {params.outdir:q} --failed-grid {params.failed_grid:q} --threads {threads} --log {log:q}"


# Suspected label errors in train and val (audit.label_issues.folds = K; off by default, and then
# nothing asks for these rules): train+val split into K stratified folds, each fold's training its
# own job, like a sweep trial's (on Slurm one sbatch each, placed by its resources), then confident
# learning on the K folds' held-out probabilities. The test split's label issues need no training:
# evaluate_served_model (rules/serve.smk).
rule label_fold:
    input:
        unpack(pool_files),
    output:
        held_out="results/audit/{dataset}/label_issues/folds/{fold}/held_out.parquet",
        metrics="results/audit/{dataset}/label_issues/folds/{fold}/metrics.json",
        # the fold's learning curves, as train_model's
        history="results/audit/{dataset}/label_issues/folds/{fold}/history.csv",
        tensorboard=directory(
            "results/audit/{dataset}/label_issues/folds/{fold}/tensorboard"
        ),
    log:
        "logs/label_fold/{dataset}/{fold}.log",
    benchmark:
        "benchmarks/label_fold/{dataset}/{fold}.tsv"
    conda:
        "../envs/train.yaml"
    container:
        PIPELINE_IMAGE
    threads: 2
    # a training on (K-1)/K of train+val: train_model's resources (rules/train.smk)
    resources:
        mem_mb=by_attempt(8000),
        runtime=by_attempt(120),
        gpu=fold_gpus,
    params:
        recipe=fold_recipe_json,
        folds=LABEL_FOLDS,
        seed=DATASET["seed"],
        data=DATA_DIR,
        outdir=subpath(output.metrics, parent=True),
    shell:
        "python scripts/train_label_fold.py --data {params.data:q} --recipe {params.recipe:q}"
        " --fold {wildcards.fold} --folds {params.folds} --seed {params.seed}"
        " --outdir {params.outdir:q} --threads {threads} --log {log:q}"


rule find_label_issues:
    input:
        unpack(pool_files),
        folds=fold_outputs,
    output:
        metrics="results/audit/{dataset}/label_issues/metrics.json",
        issues="results/audit/{dataset}/label_issues/label_issues.parquet",
        grid=report(
            "results/audit/{dataset}/label_issues/label_issues.png",
            caption="../report/train_label_issues.rst",
            category="Data",
            labels={
                "experiment": "all",
                "figure": "suspected label errors, train and val",
            },
        ),
    log:
        "logs/find_label_issues/{dataset}.log",
    benchmark:
        "benchmarks/find_label_issues/{dataset}.tsv"
    conda:
        "../envs/audit.yaml"
    container:
        PIPELINE_IMAGE
    threads: 1
    resources:
        mem_mb=by_attempt(4000),
        runtime=by_attempt(15),
    params:
        data=DATA_DIR,
        outdir=subpath(output.metrics, parent=True),
    shell:
        "python scripts/find_label_issues.py --data {params.data:q} --folds {input.folds:q}"
        " --outdir {params.outdir:q} --log {log:q}"
