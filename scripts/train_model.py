"""Rule train_model: train one experiment's recipe on the prepared dataset. A halving sweep's trial
(--rungs) continues from its last rung to the end of the schedule when every rung promoted it, and
otherwise records where it stopped and why, training nothing."""

import time

STARTED = time.time()  # train.budget_s counts from the job's start: the imports below take seconds

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from cifarflow.config import Recipe  # noqa: E402
from cifarflow.dataset import load_meta  # noqa: E402
from cifarflow.errors import PipelineError, TrainingFailed  # noqa: E402
from cifarflow.runtime import run_cli, write_metrics  # noqa: E402
from cifarflow.sweep import stop_reason, stopped_at  # noqa: E402
from cifarflow.training import record_failure, record_stop, train  # noqa: E402


def main(args: argparse.Namespace) -> None:
    outdir = Path(args.outdir)
    recipe = Recipe.from_config(json.loads(args.recipe))
    if args.rungs:
        decisions = [json.loads(Path(path).read_text()) for path in args.rungs]
        rung = stopped_at(args.trial, decisions)
        if rung is not None:
            if not (args.rung_metrics and args.rung_epochs):
                raise PipelineError(
                    f"{args.trial} stopped after rung {rung}: give --rung-metrics and --rung-epochs"
                )
            figures = json.loads(Path(args.rung_metrics).read_text())
            figures["epoch_history"] = json.loads(Path(args.rung_epochs).read_text())
            outcome = "stopped" if figures["outcome"] == "ok" else figures["outcome"]
            dataset_id = load_meta(Path(args.data))["dataset_id"]
            metrics = record_stop(
                outdir, recipe, dataset_id, figures, outcome, stop_reason(args.trial, decisions[-1])
            )
            write_metrics(outdir / "metrics.json", {**metrics, "stopped_at_rung": rung})
            return
    try:
        metrics = {"outcome": "ok", **train(Path(args.data), recipe, outdir, args.threads, STARTED)}
    except (TrainingFailed, torch.cuda.OutOfMemoryError) as err:
        if args.on_failure == "fail":
            raise
        if not isinstance(err, TrainingFailed):  # a setting (widths, batch) too large for the GPU
            err = TrainingFailed(f"out of GPU memory: {str(err).splitlines()[0] if str(err) else ''}")
        metrics = record_failure(outdir, recipe, load_meta(Path(args.data))["dataset_id"], err)
    write_metrics(outdir / "metrics.json", metrics)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, help="results/data/<dataset-id>")
    parser.add_argument("--recipe", required=True, help="the resolved recipe, JSON (cifarflow.config.recipe)")
    parser.add_argument("--outdir", required=True, help="results/train/<experiment>")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument(
        "--on-failure",
        choices=("fail", "record"),
        default="fail",
        help="when training cannot finish with this recipe (it diverges, the batch is larger than the data, "
        "the GPU runs out of memory): fail the job (an experiment), or record it as the outcome in "
        "the outputs and succeed (a sweep trial: its ranking lists it, the other trials carry on)",
    )
    parser.add_argument("--trial", help="halving: the trial's name")
    parser.add_argument(
        "--rungs",
        nargs="*",
        default=[],
        help="halving: the decision.json of each rung the trial entered, in order",
    )
    parser.add_argument("--rung-metrics", help="halving: the metrics.json of the rung after which it stopped")
    parser.add_argument("--rung-epochs", help="halving: that rung's epochs.json")
    run_cli(main, parser)
