"""Rule train_model: train one experiment's recipe on the prepared dataset."""

import argparse
import json
from pathlib import Path

from cifarflow.config import Recipe
from cifarflow.runtime import run_cli, write_metrics
from cifarflow.training import train


def main(args: argparse.Namespace) -> None:
    outdir = Path(args.outdir)
    recipe = Recipe.from_config(json.loads(args.recipe))
    metrics = train(Path(args.data), recipe, outdir, threads=args.threads)
    write_metrics(outdir / "metrics.json", metrics)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, help="results/data/<dataset-id>")
    parser.add_argument("--recipe", required=True, help="the resolved recipe, JSON (cifarflow.config.recipe)")
    parser.add_argument("--outdir", required=True, help="results/train/<experiment>")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    run_cli(main, parser)
