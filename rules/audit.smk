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
