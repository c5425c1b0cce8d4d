# A sweep's trials train as ordinary train_model jobs (one Slurm job each: the fan-out is
# Snakemake's). rank_sweep ranks them by validation accuracy once all have a result, and is a
# checkpoint: which trials go on to export, serving and registration (rules/targets.smk,
# promoted()) is known only then, so a 40-trial sweep builds one image, not forty.
#
# Every trial has a result: a training that cannot finish (diverged) is recorded as its outcome and
# its job succeeds (train_model --on-failure record), so the ranking runs and lists it, with why. A
# job that fails otherwise (killed for memory or time after its retries, a lost node) is no result:
# under --keep-going the other trials still finish, and the ranking waits for the rerun (the killed
# trial resumes from its last epoch).
checkpoint rank_sweep:
    input:
        metrics=trial_metrics,
    output:
        ranking="results/sweep/{sweep}/ranking.json",
        metrics="results/sweep/{sweep}/metrics.json",
    log:
        "logs/rank_sweep/{sweep}.log",
    benchmark:
        "benchmarks/rank_sweep/{sweep}.tsv"
    localrule: True
    conda:
        "../envs/report.yaml"
    container:
        PIPELINE_IMAGE
    params:
        sweep=sweep_json,
    shell:
        "python scripts/rank_sweep.py --sweep {params.sweep:q} --metrics {input.metrics:q}"
        " --ranking {output.ranking:q} --summary {output.metrics:q} --log {log:q}"


# The report's sweep section; re-plotting never re-ranks. rungs.png (where each trial stopped) for
# successive halving only.
rule plot_sweep:
    input:
        ranking=rules.rank_sweep.output.ranking,
        metrics=trial_metrics,
    output:
        **(
            {
                "rungs": report(
                    "results/report/sweep/{sweep}/rungs.png",
                    caption="../report/sweep_rungs.rst",
                    category="Sweep",
                    labels={"experiment": "{sweep}", "figure": "rungs"},
                )
            }
            if DECIDED_RUNGS
            else {}
        ),
        table=report(
            "results/report/sweep/{sweep}/ranking.html",
            caption="../report/sweep_ranking.rst",
            category="Sweep",
            labels={"experiment": "{sweep}", "figure": "ranking"},
        ),
        parameters=report(
            "results/report/sweep/{sweep}/parameters.png",
            caption="../report/sweep_parameters.rst",
            category="Sweep",
            labels={"experiment": "{sweep}", "figure": "accuracy by setting"},
        ),
        curves=report(
            "results/report/sweep/{sweep}/curves.png",
            caption="../report/sweep_curves.rst",
            category="Sweep",
            labels={"experiment": "{sweep}", "figure": "learning curves"},
        ),
        coordinates=report(
            "results/report/sweep/{sweep}/coordinates.png",
            caption="../report/sweep_coordinates.rst",
            category="Sweep",
            labels={"experiment": "{sweep}", "figure": "every trial"},
        ),
    log:
        "logs/plot_sweep/{sweep}.log",
    benchmark:
        "benchmarks/plot_sweep/{sweep}.tsv"
    localrule: True
    conda:
        "../envs/report.yaml"
    container:
        PIPELINE_IMAGE
    params:
        trials=TRIALS,
        rungs=rungs_chart_arg,
    shell:
        "python scripts/plot_sweep.py --ranking {input.ranking:q} --trials {params.trials:q}"
        " --metrics {input.metrics:q} --table {output.table:q} --parameters {output.parameters:q}"
        " --curves {output.curves:q} --coordinates {output.coordinates:q} {params.rungs}"
        " --log {log:q}"
