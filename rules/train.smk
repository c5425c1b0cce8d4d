# One training job per experiment. A killed or crashed job resumes from its last completed epoch
# (results/train/<experiment>/resume.pt, deliberately not an output, so Snakemake keeps it).
rule train_model:
    input:
        unpack(dataset_files),
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
    threads: 2
    params:
        recipe=recipe_json,
        data=DATA_DIR,
        outdir=subpath(output.checkpoint, parent=True),
    shell:
        "python scripts/train_model.py --data {params.data:q} --recipe {params.recipe:q}"
        " --outdir {params.outdir:q} --threads {threads} --log {log:q}"
