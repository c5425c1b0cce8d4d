rule export_onnx:
    input:
        unpack(dataset_files),
        checkpoint=rules.train_model.output.checkpoint,
    output:
        onnx="results/export/{experiment}/model.onnx",
        metrics="results/export/{experiment}/metrics.json",
        # the graph's predictions on the validation split: the registry's paired test reads them
        val_predictions="results/export/{experiment}/val_predictions.npz",
    log:
        "logs/export_onnx/{experiment}.log",
    benchmark:
        "benchmarks/export_onnx/{experiment}.tsv"
    conda:
        "../envs/export.yaml"
    container:
        PIPELINE_IMAGE
    threads: 2
    # measured on real CIFAR-10 (parity over the 10,000-image test split): 59 s, 1.3 GB
    resources:
        mem_mb=by_attempt(4000),
        runtime=by_attempt(30),
    params:
        settings=export_settings,
        data=DATA_DIR,
    shell:
        "python scripts/export_onnx.py --checkpoint {input.checkpoint:q} --data {params.data:q}"
        " --settings {params.settings:q} --onnx {output.onnx:q} --metrics {output.metrics:q}"
        " --val-predictions {output.val_predictions:q} --threads {threads} --log {log:q}"


rule quantize_onnx:
    input:
        unpack(dataset_files),
        onnx=rules.export_onnx.output.onnx,
    output:
        onnx="results/quantize/{experiment}/model.int8.onnx",
        metrics="results/quantize/{experiment}/metrics.json",
    log:
        "logs/quantize_onnx/{experiment}.log",
    benchmark:
        "benchmarks/quantize_onnx/{experiment}.tsv"
    conda:
        "../envs/export.yaml"
    container:
        PIPELINE_IMAGE
    threads: 2
    resources:
        mem_mb=by_attempt(4000),
        runtime=by_attempt(30),
    params:
        calibration_images=EXPORT["calibration_images"],
        data=DATA_DIR,
    shell:
        "python scripts/quantize_onnx.py --onnx {input.onnx:q} --data {params.data:q} --out {output.onnx:q}"
        " --metrics {output.metrics:q} --calibration-images {params.calibration_images}"
        " --threads {threads} --log {log:q}"
