"""Rule evaluate_robustness: accuracy of the exported graph (ONNX Runtime) under CIFAR-10-C-style
corruptions of the test split, per corruption and severity."""

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from cifarflow.dataset import load_split
from cifarflow.robustness import evaluate, stratified_subset
from cifarflow.runtime import run_cli, write_json, write_metrics
from cifarflow.serving.inference import load_session, ort_runner

log = logging.getLogger("cifarflow")


def main(args: argparse.Namespace) -> None:
    settings = json.loads(args.settings)
    test = load_split(args.data, "test")
    chosen = stratified_subset(np.asarray(test.labels), settings["images"], settings["seed"])
    images, labels = np.asarray(test.images[chosen]), np.asarray(test.labels[chosen])
    log.info(
        "%d of %d test images, %d corruptions x %d severities, seed %d",
        len(labels),
        len(test.labels),
        len(settings["corruptions"]),
        len(settings["severities"]),
        settings["seed"],
    )
    run = ort_runner(load_session(Path(args.model), args.threads))
    result = evaluate(run, images, labels, settings["corruptions"], settings["severities"], settings["seed"])
    log.info(
        "uncorrupted %.4f, mean under corruption %.4f, relative drop %.4f (%.0f s)",
        result.uncorrupted_accuracy,
        result.mean_corruption_accuracy,
        result.relative_drop,
        result.seconds,
    )
    write_json(args.table, result.to_json())
    write_metrics(args.metrics, result.metrics())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="results/export/<experiment>/model.onnx")
    parser.add_argument("--data", required=True, help="results/data/<dataset-id> (its test split)")
    parser.add_argument("--settings", required=True, help="the `robustness` config section, JSON")
    parser.add_argument("--metrics", required=True, help="where to write metrics.json")
    parser.add_argument("--table", required=True, help="where to write robustness.json (the whole table)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0 = one per core)")
    run_cli(main, parser)
