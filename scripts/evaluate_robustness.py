"""Rule evaluate_robustness: accuracy of the exported graph (ONNX Runtime) under CIFAR-10-C-style
corruptions, per corruption and severity: on test images (what the report and the model card show)
and on validation images (what the champion decision compares: a test figure never decides)."""

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from cifarflow.dataset import load_split
from cifarflow.errors import PipelineError
from cifarflow.robustness import Robustness, evaluate, stratified_subset
from cifarflow.runtime import run_cli, write_json, write_metrics
from cifarflow.serving.inference import Runner, load_session, ort_runner

log = logging.getLogger("cifarflow")


def measure(run: Runner, data: str, split: str, settings: dict) -> Robustness | None:
    """The table on `settings["images"]` images of `split`, drawn per class (None when it has none)."""
    arrays = load_split(data, split)
    labels = np.asarray(arrays.labels)
    if not len(labels):
        log.info("no %s images: no corruption table on them", split)
        return None
    chosen = stratified_subset(labels, settings["images"], settings["seed"])
    log.info(
        "%d of %d %s images, %d corruptions x %d severities, seed %d",
        len(chosen),
        len(labels),
        split,
        len(settings["corruptions"]),
        len(settings["severities"]),
        settings["seed"],
    )
    images = np.asarray(arrays.images[chosen])
    corruptions, severities = settings["corruptions"], settings["severities"]
    result = evaluate(run, images, labels[chosen], corruptions, severities, settings["seed"])
    log.info(
        "%s: uncorrupted %.4f, mean under corruption %.4f, relative drop %.4f (%.0f s)",
        split,
        result.uncorrupted_accuracy,
        result.mean_corruption_accuracy,
        result.relative_drop,
        result.seconds,
    )
    return result


def main(args: argparse.Namespace) -> None:
    settings = json.loads(args.settings)
    run = ort_runner(load_session(Path(args.model), args.threads))
    test = measure(run, args.data, "test", settings)
    if test is None:
        raise PipelineError(f"{args.data} has no test images to corrupt: prepare it with a test split")
    table, metrics = test.to_json(), test.metrics()
    val = measure(run, args.data, "val", settings)
    if val is not None:
        table["validation"] = val.to_json()
        figures = val.metrics()
        for key in ("uncorrupted_accuracy", "mean_corruption_accuracy"):
            metrics[f"val_{key}"] = figures[key]
    write_json(args.table, table)
    write_metrics(args.metrics, metrics)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="results/export/<experiment>/model.onnx")
    parser.add_argument("--data", required=True, help="results/data/<dataset-id> (its test and val splits)")
    parser.add_argument("--settings", required=True, help="the `robustness` config section, JSON")
    parser.add_argument("--metrics", required=True, help="where to write metrics.json")
    parser.add_argument("--table", required=True, help="where to write robustness.json (the whole table)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0 = one per core)")
    run_cli(main, parser)
