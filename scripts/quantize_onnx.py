"""Rule quantize_onnx: static int8 quantisation of an exported model, with its accuracy and speed."""

import argparse
from pathlib import Path

from cifarflow.export import quantize
from cifarflow.runtime import run_cli, write_metrics


def main(args: argparse.Namespace) -> None:
    figures = quantize(
        Path(args.onnx), Path(args.data), Path(args.out), args.calibration_images, args.threads
    )
    write_metrics(args.metrics, figures)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--onnx", required=True, help="results/export/<experiment>/model.onnx")
    parser.add_argument("--data", required=True, help="results/data/<dataset-id>")
    parser.add_argument("--out", required=True, help="where to write model.int8.onnx")
    parser.add_argument("--metrics", required=True, help="where to write metrics.json")
    parser.add_argument("--calibration-images", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=0)
    run_cli(main, parser)
