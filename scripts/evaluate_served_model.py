"""Rule evaluate_served_model: run the image, send it the test split over the network, apply the gate."""

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from cifarflow.audit import clean_accuracy, clean_mask
from cifarflow.calibration import calibration_metrics
from cifarflow.dataset import load_meta, load_split
from cifarflow.engines import ServerSpec, container_name, running
from cifarflow.errors import PipelineError
from cifarflow.evaluation import (
    Client,
    check_agreement,
    classification_metrics,
    confusion,
    latencies_ms,
    offline_predictions,
    served_predictions,
)
from cifarflow.plots import confusion_matrix, latency_histogram, save_png
from cifarflow.runtime import atomic_path, run_cli, write_metrics

log = logging.getLogger("cifarflow")


def main(args: argparse.Namespace) -> None:
    settings = json.loads(args.settings)
    serving, evaluate = settings["serving"], settings["evaluate"]
    manifest = json.loads(Path(args.manifest).read_text())
    data, out = Path(args.data), Path(args.outdir)
    class_names = load_meta(data)["class_names"]
    test = load_split(data, "test", mmap=False)
    images, labels = test.images, test.labels
    batch, threads = evaluate["batch_size"], serving["threads"]
    max_bytes = int(serving["max_request_mb"] * 2**20)
    if batch * images[0].nbytes > max_bytes:
        raise PipelineError(
            f"evaluate.batch_size {batch} makes requests of {batch * images[0].nbytes} bytes, over "
            f"serving.max_request_mb ({serving['max_request_mb']}): lower one or raise the other"
        )

    spec = ServerSpec(
        engine=manifest["engine"],
        image=manifest["image"],
        name=container_name(args.experiment, Path.cwd()),
        model_name=manifest["model_name"],
        threads=threads,
        max_request_mb=serving["max_request_mb"],
        host=serving["host"],
        network=serving["network"],
    )
    with running(spec, log_file=Path(args.server_log), ready_timeout_s=evaluate["ready_timeout_s"]) as server:
        client = Client(server.grpc_url, manifest["model_name"], max_bytes)
        try:
            log.info(
                "sending %d test images in batches of %d, %d in flight",
                len(images),
                batch,
                evaluate["concurrency"],
            )
            served, served_s = served_predictions(client, images, batch, evaluate["concurrency"])
            log.info("latency: %d single-image requests", evaluate["latency_requests"])
            latency = latencies_ms(client, images, evaluate["latency_requests"])
        finally:
            client.close()
    # In-process reference after the server has stopped, so that the two never share the CPU.
    offline, offline_s = offline_predictions(Path(args.model), images, batch, threads)

    figures = check_agreement(served, offline, evaluate["max_probability_diff"])
    predicted = served.argmax(1)
    matrix = confusion(labels, predicted, len(class_names))
    figures |= classification_metrics(matrix, class_names)
    figures |= calibration_metrics(served, labels)  # of the served probabilities: ece, nll, brier
    # the test images without a near-duplicate in train or val (the audit's pairs)
    figures |= clean_accuracy(labels, predicted, clean_mask(pd.read_parquet(args.duplicates), len(labels)))
    served_ips, offline_ips = len(images) / served_s, len(images) / offline_s
    figures |= {
        "images": len(images),
        "latency_ms_p50": round(float(np.percentile(latency, 50)), 3),
        "latency_ms_p95": round(float(np.percentile(latency, 95)), 3),
        "latency_ms_p99": round(float(np.percentile(latency, 99)), 3),
        "throughput_images_per_second": round(served_ips, 1),
        "inprocess_images_per_second": round(offline_ips, 1),
        "throughput_ratio": round(served_ips / offline_ips, 3),
        "batch_size": batch,
        "concurrency": evaluate["concurrency"],
    }
    log.info(
        "calibration as served: ECE %.4f, NLL %.4f, Brier %.4f, mean confidence %.4f",
        figures["ece"],
        figures["nll"],
        figures["brier"],
        figures["mean_confidence"],
    )
    log.info(
        "as served: accuracy %.4f (clean test images: %.4f on %d), macro F1 %.4f; "
        "latency p50 %.2f / p95 %.2f / p99 %.2f ms; "
        "%.0f images/s = %.0f%% of in-process ONNX Runtime (%.0f images/s)",
        figures["accuracy"],
        figures["clean_accuracy"],
        figures["clean_images"],
        figures["macro_f1"],
        figures["latency_ms_p50"],
        figures["latency_ms_p95"],
        figures["latency_ms_p99"],
        served_ips,
        100 * figures["throughput_ratio"],
        offline_ips,
    )
    if figures["accuracy"] < evaluate["min_accuracy"]:
        raise PipelineError(
            f"quality gate: accuracy as served is {figures['accuracy']:.4f}, below evaluate.min_accuracy "
            f"{evaluate['min_accuracy']} (macro F1 {figures['macro_f1']:.4f}, {len(images)} test images). "
            "The model is not registered; train longer or lower the gate deliberately"
        )

    title = f"{args.experiment}: {manifest['model_name']} as served ({manifest['engine']})"
    save_png(confusion_matrix(matrix, class_names, title), out / "confusion_matrix.png")
    save_png(latency_histogram(latency, title), out / "latency_histogram.png")
    table = pd.DataFrame(
        {
            "index": np.arange(len(images)),
            "label": labels.astype(np.int64),
            "predicted": predicted.astype(np.int64),
            "probabilities": list(served.astype(np.float32)),
        }
    )
    with atomic_path(out / "predictions.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    write_metrics(out / "metrics.json", figures)


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
