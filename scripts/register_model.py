"""Rule register_model: after the quality gate, the ONNX model goes to the MLflow Model Registry."""

import argparse
import json
from pathlib import Path

from cifarflow.registry import register, tracking_uri
from cifarflow.runtime import run_cli, write_json


def main(args: argparse.Namespace) -> None:
    settings = json.loads(args.settings)
    manifest = json.loads(Path(args.manifest).read_text())
    figures = json.loads(Path(args.evaluation).read_text())
    training = json.loads(Path(args.training).read_text())
    tags = {
        "image": manifest["image"],
        "image_id": manifest["image_id"],
        "engine": manifest["engine"],
        "dataset_id": manifest["dataset_id"],
        "experiment": manifest["experiment"],
        "model_sha256": manifest["model_sha256"],
        "macro_f1": f"{figures['macro_f1']:.6f}",
        "clean_accuracy": f"{figures['clean_accuracy']:.6f}",  # test images without a train/val duplicate
        "latency_ms_p50": str(figures["latency_ms_p50"]),
        "throughput_images_per_second": str(figures["throughput_images_per_second"]),
    }
    record = register(
        model_path=Path(args.model),
        name=settings["register"]["model_name"],
        alias=settings["register"]["alias"],
        tags=tags,
        accuracy=figures["accuracy"],
        val_accuracy=training["val_accuracy"],  # what decides the alias
        uri=tracking_uri(settings["mlflow"]["tracking_uri"]),
        lock_file=Path(args.output).parent.parent / ".registry.lock",
    )
    write_json(args.output, record)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="results/export/<experiment>/model.onnx")
    parser.add_argument("--manifest", required=True, help="results/image/<experiment>/manifest.json")
    parser.add_argument("--evaluation", required=True, help="results/evaluate/<experiment>/metrics.json")
    parser.add_argument("--training", required=True, help="results/train/<experiment>/metrics.json")
    parser.add_argument("--settings", required=True, help="the `register` and `mlflow` config, JSON")
    parser.add_argument("--output", required=True, help="where to write registration.json")
    run_cli(main, parser)
