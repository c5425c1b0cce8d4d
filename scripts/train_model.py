"""Rule train_model: train one experiment's recipe on the prepared dataset."""

import time

STARTED = time.time()  # train.budget_s counts from the job's start: the imports below take seconds

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from cifarflow.config import Recipe  # noqa: E402
from cifarflow.dataset import load_meta  # noqa: E402
from cifarflow.errors import TrainingFailed  # noqa: E402
from cifarflow.runtime import run_cli, write_metrics  # noqa: E402
from cifarflow.training import record_failure, train  # noqa: E402


def main(args: argparse.Namespace) -> None:
    outdir = Path(args.outdir)
    recipe = Recipe.from_config(json.loads(args.recipe))
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
    run_cli(main, parser)
