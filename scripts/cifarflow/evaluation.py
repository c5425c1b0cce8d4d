"""Evaluate the model as served: the test split over v2 gRPC, checked against offline ONNX Runtime.

The client is tritonclient (an implementation of the protocol independent of the server). Images
travel as raw binary tensors; a batch is sent by one of `concurrency` threads, each with its own
channel. Every served prediction must equal the offline one; the figures and plots follow.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .errors import PipelineError
from .runtime import progress
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
