"""Rule label_fold: train one cross-validation fold of train+val and score its held-out images."""

import argparse
import json
from pathlib import Path

from cifarflow.config import Recipe
from cifarflow.label_folds import train_fold
from cifarflow.runtime import run_cli, write_metrics


def main(args: argparse.Namespace) -> None:
    outdir = Path(args.outdir)
    recipe = Recipe.from_config(json.loads(args.recipe))
    metrics = train_fold(
        Path(args.data),
        recipe,
        outdir,
        fold=args.fold,
        folds=args.folds,
        seed=args.seed,
        threads=args.threads,
    )
    write_metrics(outdir / "metrics.json", metrics)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, help="results/data/<dataset-id>")
    parser.add_argument("--recipe", required=True, help="the folds' resolved recipe, JSON")
    parser.add_argument("--fold", type=int, required=True, help="which fold this job holds out (0..folds-1)")
    parser.add_argument("--folds", type=int, required=True, help="audit.label_issues.folds")
    parser.add_argument("--seed", type=int, required=True, help="the folds' seed (dataset.seed)")
    parser.add_argument(
        "--outdir", required=True, help="results/audit/<dataset-id>/label_issues/folds/<fold>"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    run_cli(main, parser)
