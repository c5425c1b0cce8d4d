"""Rule find_label_issues: join the folds' held-out probabilities, flag train's and val's suspected
label errors by confident learning."""

import argparse
from pathlib import Path

from cifarflow.label_folds import gather
from cifarflow.runtime import run_cli, write_metrics


def main(args: argparse.Namespace) -> None:
    outdir = Path(args.outdir)
    write_metrics(outdir / "metrics.json", gather(Path(args.data), args.folds, outdir))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, help="results/data/<dataset-id>")
    parser.add_argument("--folds", nargs="+", required=True, help="every fold's held_out.parquet")
    parser.add_argument("--outdir", required=True, help="results/audit/<dataset-id>/label_issues")
    run_cli(main, parser)
