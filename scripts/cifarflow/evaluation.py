"""Evaluate the model as served: the test split over v2 gRPC, checked against offline ONNX Runtime.

The client is tritonclient (an implementation of the protocol independent of the server). Images
travel as raw binary tensors; a batch is sent by one of `concurrency` threads, each with its own
channel. Every served prediction must equal the offline one; the figures and plots follow (the
suspected label errors of the test split among them: label_issues.py), and the quality gate
(evaluate.min_accuracy) decides whether the model may be registered.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from .audit import clean_accuracy, clean_mask
from .calibration import calibration_metrics
from .dataset import load_meta, load_split
from .engines import ServerSpec, container_name, running
from .errors import PipelineError
from .label_issues import label_issue_figures
from .plots import confusion_matrix, label_issue_grid, latency_histogram, save_png
from .runtime import atomic_path, progress
from .serving.inference import INPUT, OUTPUTS, load_session, ort_runner, predict

log = logging.getLogger("cifarflow")
WARMUP = 20


class Client:
    """One gRPC channel per thread (tritonclient's client is not shared across threads)."""

    def __init__(self, url: str, model_name: str, max_message_bytes: int):
        self.url, self.model_name, self.max_message_bytes = url, model_name, max_message_bytes
        self._local = threading.local()
        self._all = []

    def _client(self):
        import tritonclient.grpc as grpcclient

        if not hasattr(self._local, "client"):
            options = [
                ("grpc.max_send_message_length", self.max_message_bytes),
                ("grpc.max_receive_message_length", self.max_message_bytes),
            ]
            self._local.client = grpcclient.InferenceServerClient(self.url, channel_args=options)
            self._all.append(self._local.client)
        return self._local.client

    def infer(self, images: np.ndarray) -> np.ndarray:
        """Served probabilities for uint8 [N, 32, 32, 3] images."""
        import tritonclient.grpc as grpcclient

        tensor = grpcclient.InferInput(INPUT, list(images.shape), "UINT8")
        tensor.set_data_from_numpy(np.ascontiguousarray(images))
        wanted = [grpcclient.InferRequestedOutput(OUTPUTS[1])]
        return self._client().infer(self.model_name, [tensor], outputs=wanted).as_numpy(OUTPUTS[1])

    def close(self) -> None:
        for client in self._all:
            client.close()


def served_predictions(
    client: Client, images: np.ndarray, batch: int, concurrency: int
) -> tuple[np.ndarray, float]:
    """(probabilities, wall seconds) for all images, `concurrency` batches in flight."""
    starts = range(0, len(images), batch)
    client.infer(images[:batch])  # connect and warm up outside the timing
    begin = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(client.infer, images[i : i + batch]) for i in starts]
        parts = [
            f.result() for f in progress(futures, total=len(futures), desc="served batches", unit="batch")
        ]
    return np.concatenate(parts), time.perf_counter() - begin


def offline_predictions(
    model: Path, images: np.ndarray, batch: int, threads: int
) -> tuple[np.ndarray, float]:
    """(probabilities, wall seconds) from in-process ONNX Runtime, same batches, same threads."""
    run = ort_runner(load_session(model, threads))
    run(np.ascontiguousarray(images[:batch]))  # warm up outside the timing
    begin = time.perf_counter()
    _, probabilities = predict(run, images, batch)
    return probabilities, time.perf_counter() - begin


def latencies_ms(client: Client, images: np.ndarray, requests: int) -> np.ndarray:
    """Batch-1 round trips, one after another, after a warm-up."""
    for i in range(WARMUP):
        client.infer(images[i % len(images)][None])
    times = []
    for i in range(requests):
        start = time.perf_counter()
        client.infer(images[i % len(images)][None])
        times.append(time.perf_counter() - start)
    return np.array(times) * 1e3


def confusion(labels: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """[true, predicted] counts."""
    return np.bincount(labels * classes + predicted, minlength=classes * classes).reshape(classes, classes)


def classification_metrics(matrix: np.ndarray, class_names: list[str]) -> dict[str, float]:
    """accuracy, macro_f1, precision_<class>, recall_<class>, from a confusion matrix."""
    true_positive = np.diag(matrix).astype(float)
    predicted = matrix.sum(axis=0)
    actual = matrix.sum(axis=1)
    precision = np.divide(true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0)
    recall = np.divide(true_positive, actual, out=np.zeros_like(true_positive), where=actual > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    metrics = {
        "accuracy": round(float(true_positive.sum() / matrix.sum()), 6),
        "macro_f1": round(float(f1.mean()), 6),
    }
    for name, p, r in zip(class_names, precision, recall, strict=True):
        metrics[f"precision_{name}"] = round(float(p), 6)
        metrics[f"recall_{name}"] = round(float(r), 6)
    return metrics


def check_agreement(served: np.ndarray, offline: np.ndarray, tolerance: float) -> dict[str, float]:
    """Served vs offline: every argmax equal, probabilities within `tolerance`; else fail naming rows."""
    mismatched = np.flatnonzero(served.argmax(1) != offline.argmax(1))
    max_diff = float(np.abs(served - offline).max())
    if len(mismatched) or max_diff > tolerance:
        rows = ", ".join(str(i) for i in mismatched[:10])
        raise PipelineError(
            f"the served model disagrees with offline ONNX Runtime: {len(mismatched)} of {len(served)} "
            f"predictions differ (test rows {rows or 'none'}), largest probability difference {max_diff:.3g} "
            f"(allowed {tolerance:g}). The image serves a different model or runtime than the one exported: "
            "rebuild it (snakemake --forcerun build_serving_image) and compare the ONNX Runtime versions"
        )
    return {"mismatches": 0, "max_probability_diff": max_diff}


def request_limit(batch: int, image_bytes: int, max_request_mb: float) -> int:
    """The largest gRPC message in bytes (serving.max_request_mb); fail if a batch would not fit."""
    max_bytes = int(max_request_mb * 2**20)
    if batch * image_bytes > max_bytes:
        raise PipelineError(
            f"evaluate.batch_size {batch} makes requests of {batch * image_bytes} bytes, over "
            f"serving.max_request_mb ({max_request_mb}): lower one or raise the other"
        )
    return max_bytes


def served_figures(
    served: np.ndarray,
    offline: np.ndarray,
    labels: np.ndarray,
    clean: np.ndarray,
    latency: np.ndarray,
    seconds: tuple[float, float],
    class_names: list[str],
    evaluate: dict,
) -> dict:
    """metrics.json's figures: `served` probabilities checked against the `offline` ones (else fail),
    their classification and calibration figures, accuracy on the `clean` test images (no
    near-duplicate in train or val), batch-1 `latency` (ms) and the throughput of both (`seconds`:
    served, offline). `evaluate`: the config section (batch_size, concurrency, max_probability_diff)."""
    figures = check_agreement(served, offline, evaluate["max_probability_diff"])
    predicted = served.argmax(1)
    figures |= classification_metrics(confusion(labels, predicted, len(class_names)), class_names)
    figures |= calibration_metrics(served, labels)  # of the served probabilities: ece, nll, brier
    figures |= clean_accuracy(labels, predicted, clean)
    served_ips, offline_ips = len(labels) / seconds[0], len(labels) / seconds[1]
    return figures | {
        "images": len(labels),
        "latency_ms_p50": round(float(np.percentile(latency, 50)), 3),
        "latency_ms_p95": round(float(np.percentile(latency, 95)), 3),
        "latency_ms_p99": round(float(np.percentile(latency, 99)), 3),
        "throughput_images_per_second": round(served_ips, 1),
        "inprocess_images_per_second": round(offline_ips, 1),
        "throughput_ratio": round(served_ips / offline_ips, 3),
        "batch_size": evaluate["batch_size"],
        "concurrency": evaluate["concurrency"],
    }


def quality_gate(figures: dict, min_accuracy: float) -> None:
    """Fail, with the figures, when the accuracy as served is below `min_accuracy`: nothing is registered."""
    if figures["accuracy"] < min_accuracy:
        raise PipelineError(
            f"quality gate: accuracy as served is {figures['accuracy']:.4f}, below evaluate.min_accuracy "
            f"{min_accuracy} (macro F1 {figures['macro_f1']:.4f}, {figures['images']} test images). "
            "The model is not registered; train longer or lower the gate deliberately"
        )


def evaluate_served(
    *,
    manifest: dict,
    model: Path,
    data: Path,
    experiment: str,
    settings: dict,
    duplicates: Path,
    server_log: Path,
    out: Path,
) -> dict:
    """Run the image of `manifest`, send it the test split of `data` over gRPC, compare with `model`
    in process, apply the gate; write the plots, predictions.parquet and label_issues.parquet (the
    test images whose given label is suspect, by confident learning on the served probabilities) to
    `out` and return the figures. `settings`: the `serving` and `evaluate` config sections."""
    serving, evaluate = settings["serving"], settings["evaluate"]
    class_names = load_meta(data)["class_names"]
    test = load_split(data, "test", mmap=False)
    images, labels = test.images, test.labels
    batch, threads = evaluate["batch_size"], serving["threads"]
    max_bytes = request_limit(batch, images[0].nbytes, serving["max_request_mb"])

    spec = ServerSpec(
        engine=manifest["engine"],
        image=manifest["image"],
        name=container_name(experiment, Path.cwd()),
        model_name=manifest["model_name"],
        threads=threads,
        max_request_mb=serving["max_request_mb"],
        host=serving["host"],
        network=serving["network"],
    )
    with running(spec, log_file=server_log, ready_timeout_s=evaluate["ready_timeout_s"]) as server:
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
    offline, offline_s = offline_predictions(model, images, batch, threads)

    clean = clean_mask(pd.read_parquet(duplicates), len(labels))  # the audit's pairs
    figures = served_figures(
        served, offline, labels, clean, latency, (served_s, offline_s), class_names, evaluate
    )
    # The prepared dataset keeps no image file names, so the table's `file` is null.
    issues, issue_figures = label_issue_figures(served, labels, clean)
    figures |= issue_figures
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
        len(images) / served_s,
        100 * figures["throughput_ratio"],
        len(images) / offline_s,
    )
    log.info(
        "suspected label errors (confident learning on the served probabilities): %d of %d test images; "
        "accuracy without them %.4f, without them and the near-duplicates %.4f",
        figures["test_label_issue_count"],
        len(labels),
        figures["accuracy_without_label_issues"],
        figures["accuracy_without_both"],
    )
    quality_gate(figures, evaluate["min_accuracy"])

    predicted = served.argmax(1)
    title = f"{experiment}: {manifest['model_name']} as served ({manifest['engine']})"
    matrix = confusion(labels, predicted, len(class_names))
    save_png(confusion_matrix(matrix, class_names, title), out / "confusion_matrix.png")
    save_png(latency_histogram(latency, title), out / "latency_histogram.png")
    save_png(label_issue_grid(images, issues, class_names, len(labels)), out / "label_issues.png")
    with atomic_path(out / "label_issues.parquet") as tmp:
        issues.to_parquet(tmp, index=False)
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
    return figures
