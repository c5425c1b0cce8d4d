# Accuracy of the exported graph under CIFAR-10-C-style corruptions, in ONNX Runtime: of test images
# (the report, the model card) and of validation images (the champion decision).
# Needs only the export: it runs while the serving image builds and the served model is evaluated.
rule evaluate_robustness:
    input:
        unpack(corrupted_split_files),
        model=rules.export_onnx.output.onnx,
    output:
        metrics="results/robustness/{experiment}/metrics.json",
        table="results/robustness/{experiment}/robustness.json",
    log:
        "logs/evaluate_robustness/{experiment}.log",
    benchmark:
        "benchmarks/evaluate_robustness/{experiment}.tsv"
    conda:
        "../envs/serve.yaml"
    container:
        PIPELINE_IMAGE
    threads: 2
    # the drawn test and validation images, one corrupted copy at a time, ONNX Runtime at batch 256
    resources:
        mem_mb=by_attempt(4000),
        runtime=by_attempt(30),
    params:
        settings=robustness_settings,
        data=DATA_DIR,
    shell:
        "python scripts/evaluate_robustness.py --model {input.model:q} --data {params.data:q}"
        " --settings {params.settings:q} --metrics {output.metrics:q} --table {output.table:q}"
        " --threads {threads} --log {log:q}"
