# The report's figures and tables (snakemake --report): plotting rules of their own, so re-plotting
# never retrains. Every item: a caption in report/, a category, labels {experiment, figure}.
# Each job takes about a second and little memory: local rules, never a cluster job of their own.


rule plot_dataset:
    input:
        meta=rules.prepare_dataset.output.meta,
        train_images=rules.prepare_dataset.output.train_images,
        train_labels=rules.prepare_dataset.output.train_labels,
    output:
        samples=report(
            "results/report/data/{dataset}/samples.png",
            caption="../report/samples.rst",
            category="Data",
            labels={"experiment": "all", "figure": "sample images"},
        ),
        counts=report(
            "results/report/data/{dataset}/class_counts.html",
            caption="../report/class_counts.rst",
            category="Data",
            labels={"experiment": "all", "figure": "class counts"},
        ),
    log:
        "logs/plot_dataset/{dataset}.log",
    benchmark:
        "benchmarks/plot_dataset/{dataset}.tsv"
    localrule: True
    conda:
        "../envs/report.yaml"
    container:
        PIPELINE_IMAGE
    params:
        data=subpath(input.meta, parent=True),
    shell:
        "python scripts/plot_dataset.py --data {params.data:q} --samples {output.samples:q}"
        " --counts {output.counts:q} --log {log:q}"


rule plot_training:
    input:
        history=rules.train_model.output.history,
    output:
        curves=report(
            "results/report/train/{experiment}/curves.png",
            caption="../report/training_curves.rst",
            category="Training",
            labels={"experiment": "{experiment}", "figure": "loss and accuracy"},
        ),
        history=report(
            "results/report/train/{experiment}/history.html",
            caption="../report/training_history.rst",
            category="Training",
            labels={"experiment": "{experiment}", "figure": "history"},
        ),
    log:
        "logs/plot_training/{experiment}.log",
    benchmark:
        "benchmarks/plot_training/{experiment}.tsv"
    localrule: True
    conda:
        "../envs/report.yaml"
    container:
        PIPELINE_IMAGE
    shell:
        "python scripts/plot_training.py --history {input.history:q} --experiment {wildcards.experiment}"
        " --curves {output.curves:q} --table {output.history:q} --log {log:q}"


rule tabulate_export:
    input:
        unpack(export_table_inputs),
    output:
        table=report(
            "results/report/export/{experiment}/export.html",
            caption="../report/export.rst",
            category="Export",
            labels={"experiment": "{experiment}", "figure": "parity and speed"},
        ),
    log:
        "logs/tabulate_export/{experiment}.log",
    benchmark:
        "benchmarks/tabulate_export/{experiment}.tsv"
    localrule: True
    conda:
        "../envs/report.yaml"
    container:
        PIPELINE_IMAGE
    params:
        parity=parity_settings,
        quantize=quantize_arg,
    shell:
        "python scripts/tabulate_export.py --metrics {input.metrics:q} {params.quantize}"
        " --parity {params.parity:q} --experiment {wildcards.experiment} --out {output.table:q} --log {log:q}"


rule tabulate_manifest:
    input:
        manifest=rules.build_serving_image.output.manifest,
    output:
        table=report(
            "results/report/serve/{experiment}/manifest.html",
            caption="../report/manifest.rst",
            category="Serving",
            labels={"experiment": "{experiment}", "figure": "image manifest"},
        ),
    log:
        "logs/tabulate_manifest/{experiment}.log",
    benchmark:
        "benchmarks/tabulate_manifest/{experiment}.tsv"
    localrule: True
    conda:
        "../envs/report.yaml"
    container:
        PIPELINE_IMAGE
    shell:
        "python scripts/tabulate_manifest.py --manifest {input.manifest:q} --experiment {wildcards.experiment}"
        " --out {output.table:q} --log {log:q}"


rule plot_evaluation:
    input:
        unpack(test_split_files),
        metrics=rules.evaluate_served_model.output.metrics,
        predictions=rules.evaluate_served_model.output.predictions,
    output:
        per_class=report(
            "results/report/evaluate/{experiment}/per_class.html",
            caption="../report/per_class.rst",
            category="Evaluation",
            labels={
                "experiment": "{experiment}",
                "figure": "per-class precision and recall",
            },
        ),
        wrong=report(
            "results/report/evaluate/{experiment}/confidently_wrong.png",
            caption="../report/confidently_wrong.rst",
            category="Evaluation",
            labels={"experiment": "{experiment}", "figure": "most confidently wrong"},
        ),
        reliability=report(
            "results/report/evaluate/{experiment}/reliability.png",
            caption="../report/reliability.rst",
            category="Evaluation",
            labels={"experiment": "{experiment}", "figure": "reliability diagram"},
        ),
    log:
        "logs/plot_evaluation/{experiment}.log",
    benchmark:
        "benchmarks/plot_evaluation/{experiment}.tsv"
    localrule: True
    conda:
        "../envs/report.yaml"
    container:
        PIPELINE_IMAGE
    params:
        data=DATA_DIR,
    shell:
        "python scripts/plot_evaluation.py --metrics {input.metrics:q} --predictions {input.predictions:q}"
        " --data {params.data:q} --experiment {wildcards.experiment} --per-class {output.per_class:q}"
        " --wrong {output.wrong:q} --reliability {output.reliability:q} --log {log:q}"


rule plot_robustness:
    input:
        table=rules.evaluate_robustness.output.table,
    output:
        table=report(
            "results/report/robustness/{experiment}/corruption_accuracy.html",
            caption="../report/corruption_accuracy.rst",
            category="Robustness",
            labels={"experiment": "{experiment}", "figure": "accuracy table"},
        ),
        heatmap=report(
            "results/report/robustness/{experiment}/corruption_heatmap.png",
            caption="../report/corruption_heatmap.rst",
            category="Robustness",
            labels={"experiment": "{experiment}", "figure": "heat map"},
        ),
    log:
        "logs/plot_robustness/{experiment}.log",
    benchmark:
        "benchmarks/plot_robustness/{experiment}.tsv"
    localrule: True
    conda:
        "../envs/report.yaml"
    container:
        PIPELINE_IMAGE
    shell:
        "python scripts/plot_robustness.py --table {input.table:q} --experiment {wildcards.experiment}"
        " --html {output.table:q} --heatmap {output.heatmap:q} --log {log:q}"


rule tabulate_versions:
    input:
        versions_inputs,
    output:
        report(
            "results/report/versions/software_versions.html",
            caption="../report/software_versions.rst",
            category="Software versions",
            labels={"experiment": "all", "figure": "every job"},
        ),
    log:
        "logs/tabulate_versions/tabulate_versions.log",
    benchmark:
        "benchmarks/tabulate_versions/tabulate_versions.tsv"
    localrule: True
    conda:
        "../envs/report.yaml"
    container:
        PIPELINE_IMAGE
    params:
        logs=versions_logs,
    shell:
        "python scripts/tabulate_versions.py --logs {params.logs} --out {output:q} --log {log:q}"


rule compare_experiments:
    input:
        unpack(comparison_inputs),
    output:
        table=report(
            "results/report/compare/comparison.html",
            caption="../report/comparison_table.rst",
            category="Comparison",
            labels={"experiment": "all", "figure": "table"},
        ),
        chart=report(
            "results/report/compare/comparison.png",
            caption="../report/comparison_chart.rst",
            category="Comparison",
            labels={"experiment": "all", "figure": "bar chart"},
        ),
        recipes=report(
            "results/report/compare/recipes.html",
            caption="../report/recipes.rst",
            category="Comparison",
            labels={"experiment": "all", "figure": "recipes"},
        ),
        summary="results/report/compare/summary.rst",
        metrics="results/report/compare/metrics.json",
    log:
        "logs/compare_experiments/compare_experiments.log",
    benchmark:
        "benchmarks/compare_experiments/compare_experiments.tsv"
    localrule: True
    conda:
        "../envs/report.yaml"
    container:
        PIPELINE_IMAGE
    params:
        experiments=compared,
        recipes=recipes_json,
    shell:
        "python scripts/compare_experiments.py --experiments {params.experiments:q} --recipes {params.recipes:q}"
        " --train {input.train:q} --export {input.export:q} --evaluate {input.evaluate:q}"
        " --manifest {input.manifest:q} --registration {input.registration:q}"
        " --table {output.table:q} --chart {output.chart:q} --recipes-table {output.recipes:q}"
        " --summary {output.summary:q}"
        " --metrics {output.metrics:q} --log {log:q}"
