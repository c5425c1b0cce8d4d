# One training job per experiment, and per sweep trial. A killed or crashed job resumes from its last
# completed epoch (results/train/<experiment>/resume.pt, deliberately not an output, so Snakemake
# keeps it). A trial that diverges records that as its outcome and succeeds (rules/sweep.smk).
rule train_model:
    input:
        unpack(dataset_files),
        unpack(audit_gate),  # rules/audit.smk: with audit.max_test_leakage set, the audit first
        unpack(halving_inputs),  # a halving sweep's trial: its rungs (rules/sweep.smk)
    output:
        checkpoint="results/train/{experiment}/model.pt",
        history="results/train/{experiment}/history.csv",
        metrics="results/train/{experiment}/metrics.json",
        tensorboard=directory("results/train/{experiment}/tensorboard"),
    log:
        "logs/train_model/{experiment}.log",
    benchmark:
        "benchmarks/train_model/{experiment}.tsv"
    conda:
        "../envs/train.yaml"
    container:
        PIPELINE_IMAGE
    threads: 2
    # measured on real CIFAR-10, CPU: 1.9 GB, 66 s per epoch (12 epochs ~ 10 min). gpu: 1 for a CUDA
    # recipe only; on Slurm it decides the partition (profiles/slurm/partitions.yaml), so no profile sets it.
    resources:
        mem_mb=by_attempt(8000),
        runtime=by_attempt(120),
        gpu=train_gpus,
    params:
        recipe=recipe_json,
        data=DATA_DIR,
        outdir=subpath(output.checkpoint, parent=True),
        on_failure=on_failure,
        mlflow_tags=mlflow_tags,
        halving=halving_args,
    shell:
        "python scripts/train_model.py --data {params.data:q} --recipe {params.recipe:q}"
        " --outdir {params.outdir:q} --threads {threads} --on-failure {params.on_failure}{params.halving}"
        " --log {log:q}"
