"""Accuracy under common corruptions (corruptions.py), through the exported graph in ONNX Runtime.

Figures (CIFAR-10-C's usage, without its AlexNet-normalised mCE, which needs AlexNet's errors):
- accuracy per corruption and severity, on the same test images as the uncorrupted accuracy;
- mean corruption accuracy: the mean over every corruption and severity run;
- relative drop: 1 - mean corruption accuracy / uncorrupted accuracy (0 = unaffected, 1 = nothing right).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from .corruptions import check, corrupt
from .serving.inference import Runner

log = logging.getLogger("cifarflow")


@dataclass
class Robustness:
    uncorrupted_accuracy: float
    accuracy: dict[str, dict[int, float]]  # corruption -> severity -> accuracy
    images: int
    seed: int
    seconds: float = 0.0
    confidence: dict[str, dict[int, float]] = field(default_factory=dict)  # mean top probability

    @property
    def severities(self) -> list[int]:
        return sorted({s for row in self.accuracy.values() for s in row})

    @property
    def mean_corruption_accuracy(self) -> float:
        return float(np.mean([a for row in self.accuracy.values() for a in row.values()]))

    @property
    def relative_drop(self) -> float:
        return (
            1.0 - self.mean_corruption_accuracy / self.uncorrupted_accuracy
            if self.uncorrupted_accuracy
            else 0.0
        )

    def by_corruption(self) -> dict[str, float]:
        return {name: float(np.mean(list(row.values()))) for name, row in self.accuracy.items()}

    def by_severity(self) -> dict[int, float]:
        return {s: float(np.mean([row[s] for row in self.accuracy.values()])) for s in self.severities}

    def to_json(self) -> dict:
        """The whole table (robustness.json): what the report's table and the model card read."""
        return {
            "uncorrupted_accuracy": self.uncorrupted_accuracy,
            "images": self.images,
            "seed": self.seed,
            "seconds": round(self.seconds, 2),
            "corruptions": list(self.accuracy),  # the configured order (JSON files sort their keys)
            "severities": self.severities,
            "accuracy": {name: {str(s): a for s, a in row.items()} for name, row in self.accuracy.items()},
            "confidence": {
                name: {str(s): c for s, c in row.items()} for name, row in self.confidence.items()
            },
        }

    @classmethod
    def from_json(cls, data: dict) -> Robustness:
        order = data.get("corruptions") or list(data["accuracy"])

        def table(section: dict) -> dict[str, dict[int, float]]:
            return {n: {int(s): float(v) for s, v in section[n].items()} for n in order if n in section}

        return cls(
            uncorrupted_accuracy=float(data["uncorrupted_accuracy"]),
            accuracy=table(data["accuracy"]),
            images=int(data["images"]),
            seed=int(data["seed"]),
            seconds=float(data.get("seconds", 0.0)),
            confidence=table(data.get("confidence", {})),
        )

    def metrics(self) -> dict[str, float]:
        """metrics.json: flat names, as the MLflow hook logs them."""
        figures: dict[str, float] = {
            "uncorrupted_accuracy": round(self.uncorrupted_accuracy, 6),
            "mean_corruption_accuracy": round(self.mean_corruption_accuracy, 6),
            "relative_drop": round(self.relative_drop, 6),
            "images": self.images,
            "seed": self.seed,
            "seconds": round(self.seconds, 2),
        }
        for name, mean in self.by_corruption().items():
            figures[f"accuracy_{name}"] = round(mean, 6)
            for severity, accuracy in self.accuracy[name].items():
                figures[f"accuracy_{name}_s{severity}"] = round(accuracy, 6)
        for severity, mean in self.by_severity().items():
            figures[f"accuracy_severity_{severity}"] = round(mean, 6)
        return figures


def evaluate(
    run: Runner,
    images: np.ndarray,
    labels: np.ndarray,
    corruptions: list[str],
    severities: list[int],
    seed: int = 0,
    batch: int = 256,
) -> Robustness:
    """Accuracy of `run(uint8 batch) -> (logits, probabilities)` on `images` as they are and under
    each corruption at each severity (corrupted one block at a time, scored in batches of `batch`)."""
    check(corruptions, severities)
    if not corruptions or not severities:
        raise ValueError("robustness needs at least one corruption and one severity")
    labels = np.asarray(labels)
    start = time.perf_counter()

    def score(x: np.ndarray) -> tuple[int, float]:
        correct, confidence = 0, 0.0
        for i in range(0, len(x), batch):
            _, probabilities = run(np.ascontiguousarray(x[i : i + batch]))
            correct += int((probabilities.argmax(1) == labels[i : i + len(probabilities)]).sum())
            confidence += float(probabilities.max(1).sum())
        return correct, confidence

    correct, _ = score(images)
    clean = correct / len(labels)
    log.info("uncorrupted accuracy %.4f on %d test images", clean, len(labels))
    accuracy: dict[str, dict[int, float]] = {}
    confidence: dict[str, dict[int, float]] = {}
    for name in corruptions:
        accuracy[name], confidence[name] = {}, {}
        for severity in severities:
            correct, total_confidence = score(corrupt(images, name, severity, seed))
            accuracy[name][severity] = correct / len(labels)
            confidence[name][severity] = total_confidence / len(labels)
        log.info(
            "%s: accuracy %s (severities %s)",
            name,
            " ".join(f"{accuracy[name][s]:.4f}" for s in severities),
            ",".join(map(str, severities)),
        )
    return Robustness(clean, accuracy, len(labels), seed, time.perf_counter() - start, confidence)


def stratified_subset(labels: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of `count` images, as equal a share of each class as the classes allow, drawn
    with `seed`; every index when `count` is 0 or at least the number of images."""
    labels = np.asarray(labels)
    if count <= 0 or count >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    members = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    chosen: list[int] = []
    for rank in range(max(len(m) for m in members)):  # round robin over the classes
        chosen += [int(m[rank]) for m in members if rank < len(m)]
        if len(chosen) >= count:
            break
    return np.sort(np.array(chosen[:count]))


def worst(robustness: Robustness, count: int = 3) -> list[tuple[str, float]]:
    """The `count` corruptions with the lowest mean accuracy over severities, lowest first."""
    return sorted(robustness.by_corruption().items(), key=lambda item: (item[1], item[0]))[:count]
