"""Rule evaluate_served_model: run the image, send it the test split over the network, apply the gate."""

import argparse
import json
from pathlib import Path

from cifarflow.evaluation import evaluate_served
from cifarflow.runtime import run_cli, write_metrics


def main(args: argparse.Namespace) -> None:
    figures = evaluate_served(
        manifest=json.loads(Path(args.manifest).read_text()),
        model=Path(args.model),
        data=Path(args.data),
        experiment=args.experiment,
        settings=json.loads(args.settings),
        duplicates=Path(args.duplicates),
        server_log=Path(args.server_log),
        out=Path(args.outdir),
    )
    write_metrics(Path(args.outdir) / "metrics.json", figures)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", required=True, help="results/image/<experiment>/manifest.json")
    parser.add_argument("--model", required=True, help="the exported model.onnx (the offline reference)")
    parser.add_argument("--data", required=True, help="results/data/<dataset-id>")
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--settings", required=True, help="the `serving` and `evaluate` config, JSON")
    parser.add_argument("--outdir", required=True, help="results/evaluate/<experiment>")
    parser.add_argument("--duplicates", required=True, help="results/audit/<dataset-id>/duplicates.parquet")
    parser.add_argument("--server-log", required=True, help="where the server's own output goes")
    run_cli(main, parser)
