"""Rule export_onnx: checkpoint -> ONNX (uint8 images in, preprocessing inside), parity-gated."""

import argparse
import json
from pathlib import Path

from cifarflow.export import export
from cifarflow.runtime import run_cli, write_metrics


def main(args: argparse.Namespace) -> None:
    figures = export(
        Path(args.checkpoint),
        Path(args.data),
        Path(args.onnx),
        json.loads(args.settings),
        args.threads,
        val_predictions=Path(args.val_predictions),
    )
    write_metrics(args.metrics, figures)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="results/train/<experiment>/model.pt")
    parser.add_argument(
        "--data", required=True, help="results/data/<dataset-id> (its test split is the gate)"
    )
    parser.add_argument("--settings", required=True, help="the `export` config section, JSON")
    parser.add_argument("--onnx", required=True, help="where to write model.onnx")
    parser.add_argument("--metrics", required=True, help="where to write metrics.json")
    parser.add_argument(
        "--val-predictions",
        required=True,
        help="where to write val_predictions.npz (the graph's predictions on the validation split)",
    )
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime / torch threads (0 = default)")
    run_cli(main, parser)
