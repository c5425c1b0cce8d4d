# Serving: the exported model in an image, evaluated as served over the network, then registered.
# build_serving_image and evaluate_served_model drive a container engine themselves (serving.engine),
# so they have no container: of their own and run where that engine is: on the host, even under
# --use-singularity (an engine inside the pipeline image could neither build nor start images there).
# register_model runs in the pipeline image like every other rule.


# Runs where Snakemake runs (localrule): that machine's engine builds and keeps the image.
rule build_serving_image:
    input:
        model=rules.export_onnx.output.onnx,
        code=serving_sources(),
    output:
        manifest="results/image/{experiment}/manifest.json",
        metrics="results/image/{experiment}/metrics.json",
    log:
        "logs/build_serving_image/{experiment}.log",
    benchmark:
        "benchmarks/build_serving_image/{experiment}.tsv"
    localrule: True
    conda:
        "../envs/serve.yaml"
    threads: 1
    params:
        settings=serving_settings,
    shell:
        "python scripts/build_serving_image.py --model {input.model:q}"
        " --experiment {wildcards.experiment} --settings {params.settings:q}"
        " --manifest {output.manifest:q} --metrics {output.metrics:q} --log {log:q}"


# Starts the image on free ports of serving.host, sends the test split, always stops it; fails below the gate.
rule evaluate_served_model:
    input:
        unpack(dataset_files),
        manifest=rules.build_serving_image.output.manifest,
        model=rules.export_onnx.output.onnx,
        duplicates=audit_output("duplicates"),  # rules/audit.smk: the accuracies without near-duplicates
    output:
        metrics="results/evaluate/{experiment}/metrics.json",
        predictions="results/evaluate/{experiment}/predictions.parquet",
        label_issues="results/evaluate/{experiment}/label_issues.parquet",
        confusion=report(
            "results/evaluate/{experiment}/confusion_matrix.png",
            caption="../report/confusion_matrix.rst",
            category="Evaluation",
            labels={"experiment": "{experiment}", "figure": "confusion matrix"},
        ),
        latency=report(
            "results/evaluate/{experiment}/latency_histogram.png",
            caption="../report/latency_histogram.rst",
            category="Serving",
            labels={"experiment": "{experiment}", "figure": "latency histogram"},
        ),
        label_issue_grid=report(
            "results/evaluate/{experiment}/label_issues.png",
            caption="../report/label_issues.rst",
            category="Evaluation",
            labels={"experiment": "{experiment}", "figure": "suspected label errors"},
        ),
    log:
        rule="logs/evaluate_served_model/{experiment}.log",
        server="logs/evaluate_served_model/{experiment}.server.log",
    benchmark:
        "benchmarks/evaluate_served_model/{experiment}.tsv"
    conda:
        "../envs/serve.yaml"
    threads: 2
    # the server (ONNX Runtime arenas at batch 256: ~0.9 GB RSS) plus the test split and the client
    resources:
        mem_mb=by_attempt(4000),
        runtime=by_attempt(30),
    params:
        settings=evaluation_settings,
        data=DATA_DIR,
        outdir=subpath(output.metrics, parent=True),
    shell:
        "python scripts/evaluate_served_model.py --manifest {input.manifest:q}"
        " --model {input.model:q} --data {params.data:q} --experiment {wildcards.experiment}"
        " --settings {params.settings:q} --outdir {params.outdir:q} --duplicates {input.duplicates:q}"
        " --server-log {log.server:q} --log {log.rule:q}"


# Only after the gate (its input is the evaluation). Runs where Snakemake runs, beside the MLflow store.
# The model card reads what the run measured (and the versions each job's log records).
rule register_model:
    input:
        unpack(card_inputs),
        model=rules.export_onnx.output.onnx,
        # the champion's paired test: stored in the version, compared with the holder's
        val_predictions=rules.export_onnx.output.val_predictions,
        manifest=rules.build_serving_image.output.manifest,
        evaluation=rules.evaluate_served_model.output.metrics,
    output:
        registration="results/register/{experiment}/registration.json",
        card="results/register/{experiment}/model_card.md",
        card_html=report(
            "results/register/{experiment}/model_card.html",
            caption="../report/model_card.rst",
            category="Model card",
            labels={"experiment": "{experiment}", "figure": "model card"},
        ),
    log:
        "logs/register_model/{experiment}.log",
    benchmark:
        "benchmarks/register_model/{experiment}.tsv"
    localrule: True
    conda:
        "../envs/serve.yaml"
    container:
        PIPELINE_IMAGE
    threads: 1
    params:
        settings=registry_settings,
        config_sha256=model_config_sha256,
        logs=card_logs,
        label_issues=label_issues_arg,
    shell:
        "python scripts/register_model.py --model {input.model:q} --manifest {input.manifest:q}"
        " --val-predictions {input.val_predictions:q}"
        " --evaluation {input.evaluation:q} --export {input.export:q} --train {input.train:q}"
        " --meta {input.meta:q} --robustness {input.robustness:q} --audit {input.audit:q} {params.label_issues}"
        " --logs {params.logs}"
        " --config-sha256 {params.config_sha256} --settings {params.settings:q}"
        " --output {output.registration:q} --card {output.card:q} --card-html {output.card_html:q}"
        " --log {log:q}"
