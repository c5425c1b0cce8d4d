"""Rule train_rung: one rung of a halving sweep's trial: train up to the rung's epoch of the full
schedule, resuming from the previous rung's state (results/train/<trial>/resume.pt), and write the
validation figures there (the rung's metrics.json, which promote_rung ranks, with the rungs so far
as its `history`: MLflow's steps), and the rows of the epochs trained so far (epochs.json)."""

import argparse
import json
from pathlib import Path

import torch
from cifarflow.config import Recipe
from cifarflow.dataset import load_meta
from cifarflow.errors import TrainingFailed
from cifarflow.runtime import log, run_cli, write_json, write_metrics
from cifarflow.training import Resume, train


def main(args: argparse.Namespace) -> None:
    outdir = Path(args.outdir)
    recipe = Recipe.from_config(json.loads(args.recipe))
    try:
        figures = {
            "outcome": "ok",
            **train(Path(args.data), recipe, outdir, args.threads, stop_after=args.epochs),
        }
    except (TrainingFailed, torch.cuda.OutOfMemoryError) as err:
        # a result of the rung, as for a sweep's trial (train_model --on-failure record): it is not
        # promoted, and its final job records why (rules/sweep.smk)
        reason = (
            str(err) if isinstance(err, TrainingFailed) else f"out of GPU memory: {str(err).splitlines()[0]}"
        )
        outcome = err.outcome if isinstance(err, TrainingFailed) else "failed"
        state = Resume(
            outdir / "resume.pt", recipe.sha256(), load_meta(Path(args.data))["dataset_id"]
        ).completed()
        log.warning("rung %d stopped (%s): %s", args.rung, outcome, reason)
        figures = {
            "outcome": outcome,
            "reason": reason,
            "epochs": state.epoch,
            "epoch_history": state.history,
        }
    # the rungs so far as steps (MLflow: the trial's val_accuracy at rung 0, 1, ...)
    history = [*json.loads(Path(args.previous).read_text())["history"]] if args.previous else []
    if figures["outcome"] == "ok":
        history.append({"step": args.rung, **{k: figures[k] for k in ("val_accuracy", "val_loss", "epochs")}})
    write_json(args.epochs_out, figures.pop("epoch_history"))  # the epochs trained so far, one row each
    write_metrics(args.metrics, {"rung": args.rung, **figures, "history": history})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, help="results/data/<dataset-id>")
    parser.add_argument("--recipe", required=True, help="the trial's resolved recipe, JSON")
    parser.add_argument("--outdir", required=True, help="results/train/<trial> (where resume.pt lives)")
    parser.add_argument("--rung", type=int, required=True, help="the rung's number, from 0")
    parser.add_argument(
        "--epochs", type=int, required=True, help="stop after this epoch of the full schedule"
    )
    parser.add_argument("--previous", help="the trial's metrics.json of the rung before (none at rung 0)")
    parser.add_argument("--metrics", required=True, help="where to write the rung's metrics.json")
    parser.add_argument("--epochs-out", required=True, help="where to write the epochs' rows (JSON)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    run_cli(main, parser)
