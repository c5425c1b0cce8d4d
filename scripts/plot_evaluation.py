"""Rule plot_evaluation: per-class precision/recall (HTML), a grid of the most confidently wrong
test images (PNG) and the reliability diagram (PNG) of the served model, from evaluate_served_model's
metrics and predictions."""

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from cifarflow.calibration import calibration_metrics, reliability
from cifarflow.dataset import load_meta, load_split
from cifarflow.errors import PipelineError
from cifarflow.plots import confidently_wrong_grid, most_confidently_wrong, reliability_diagram, save_png
from cifarflow.runtime import run_cli, write_text
from cifarflow.tables import per_class_html

log = logging.getLogger("cifarflow")


def main(args: argparse.Namespace) -> None:
    meta = load_meta(args.data)
    test = load_split(args.data, "test")
    metrics = json.loads(Path(args.metrics).read_text())
    predictions = pd.read_parquet(args.predictions, columns=["index", "label", "predicted", "probabilities"])
    if len(predictions) and int(predictions["index"].max()) >= len(test.labels):
        raise PipelineError(
            f"{args.predictions} refers to test image {int(predictions['index'].max())}, but the test split "
            f"of {meta['dataset_id']} holds {len(test.labels)}; rerun evaluate_served_model"
        )
    support = predictions["label"].value_counts().to_dict()
    write_text(args.per_class, per_class_html(metrics, meta["class_names"], support, args.experiment))
    wrong = most_confidently_wrong(predictions, args.limit)
    misclassified = int((predictions["predicted"] != predictions["label"]).sum())
    log.info("%d of %d test images misclassified", misclassified, len(predictions))
    grid = confidently_wrong_grid(test.images, wrong, meta["class_names"], misclassified, len(predictions))
    save_png(grid, args.wrong)
    probabilities = np.stack(predictions["probabilities"].to_numpy())
    labels = predictions["label"].to_numpy()
    title = f"{args.experiment}: reliability as served, {len(labels):,} test images"
    diagram = reliability_diagram(
        reliability(probabilities, labels), calibration_metrics(probabilities, labels), title
    )
    save_png(diagram, args.reliability)
    log.info("wrote %s, %s and %s", args.per_class, args.wrong, args.reliability)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--metrics", required=True, help="results/evaluate/<experiment>/metrics.json")
    parser.add_argument(
        "--predictions", required=True, help="results/evaluate/<experiment>/predictions.parquet"
    )
    parser.add_argument("--data", required=True, help="results/data/<dataset-id> (test images, class names)")
    parser.add_argument("--experiment", required=True, help="the experiment's name (titles)")
    parser.add_argument("--per-class", required=True, help="where to write the per-class table (HTML)")
    parser.add_argument("--wrong", required=True, help="where to write the confidently-wrong grid (PNG)")
    parser.add_argument("--reliability", required=True, help="where to write the reliability diagram (PNG)")
    parser.add_argument("--limit", type=int, default=24, help="images in the grid")
    run_cli(main, parser)
