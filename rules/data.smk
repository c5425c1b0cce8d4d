# Only output: the archive. An archive placed there by hand is used as is (never re-downloaded).
# A local rule: on a cluster it runs in the main Snakemake process (login node), since compute
# nodes often have no internet.
rule download_cifar10:
    output:
        archive=str(cifar10_archive(DATASET)),
    log:
        "logs/download_cifar10/download_cifar10.log",
    benchmark:
        "benchmarks/download_cifar10/download_cifar10.tsv"
    localrule: True
    conda:
        "../envs/data.yaml"
    container:
        PIPELINE_IMAGE
    resources:
        mem_mb=1000,
        runtime=30,
    params:
        url=DATASET["cifar10"]["url"],
        md5=DATASET["cifar10"]["md5"],
    shell:
        "python scripts/download_cifar10.py --url {params.url:q} --md5 {params.md5}"
        " --archive {output.archive:q} --log {log:q}"


rule prepare_dataset:
    input:
        unpack(prepare_dataset_input),
    output:
        train_images="results/data/{dataset}/train_images.npy",
        train_labels="results/data/{dataset}/train_labels.npy",
        val_images="results/data/{dataset}/val_images.npy",
        val_labels="results/data/{dataset}/val_labels.npy",
        test_images="results/data/{dataset}/test_images.npy",
        test_labels="results/data/{dataset}/test_labels.npy",
        meta="results/data/{dataset}/meta.json",
        metrics="results/data/{dataset}/metrics.json",
    log:
        "logs/prepare_dataset/{dataset}.log",
    benchmark:
        "benchmarks/prepare_dataset/{dataset}.tsv"
    conda:
        "../envs/data.yaml"
    container:
        PIPELINE_IMAGE
    threads: 4
    # measured on the 50,000 real CIFAR-10 JPEGs: 15 s, 0.6 GB (docs/hpc-and-containers.md)
    resources:
        mem_mb=by_attempt(4000),
        runtime=by_attempt(15),
    params:
        settings=dataset_settings,
        outdir=subpath(output.meta, parent=True),
    shell:
        "python scripts/prepare_dataset.py --settings {params.settings:q} --dataset-id {wildcards.dataset}"
        " --outdir {params.outdir:q} --threads {threads} --log {log:q} {input:q}"
