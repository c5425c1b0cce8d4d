"""A model's predictions on the validation split, stored with its registered version, and the exact
McNemar test that compares two models on the same images (the registry's champion rule).

`val_predictions.npz` (export_onnx writes it, register_model logs it into the version's files):

- `index`: int32, each image's position in the validation split (`val_images.npy`);
- `label`: int16, its label; `predicted`: int16, the exported graph's top class;
- `ece`: the graph's top-label ECE (15 bins) on these images, as it ships (its temperature included);
- `images_sha256`, `labels_sha256`: of the split's arrays (meta.json), so that two files are known
  to hold predictions on the same images before they are compared.

numpy and the standard library only: it runs in every image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from .errors import PipelineError
from .runtime import atomic_path

FILE = "val_predictions.npz"


@dataclass(frozen=True)
class ValPredictions:
    index: np.ndarray
    label: np.ndarray
    predicted: np.ndarray
    ece: float
    images_sha256: str
    labels_sha256: str

    @property
    def correct(self) -> np.ndarray:
        return self.predicted == self.label

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if len(self.label) else float("nan")

    def save(self, path: Path) -> None:
        """To `path` (an .npz), written whole or not at all."""
        with atomic_path(Path(path)) as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh,
                index=self.index.astype(np.int32),
                label=self.label.astype(np.int16),
                predicted=self.predicted.astype(np.int16),
                ece=np.float64(self.ece),
                images_sha256=np.str_(self.images_sha256),
                labels_sha256=np.str_(self.labels_sha256),
            )

    @classmethod
    def load(cls, path: Path) -> ValPredictions:
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                return cls(
                    index=data["index"],
                    label=data["label"],
                    predicted=data["predicted"],
                    ece=float(data["ece"]),
                    images_sha256=str(data["images_sha256"]),
                    labels_sha256=str(data["labels_sha256"]),
                )
        except (OSError, KeyError, ValueError) as exc:
            raise PipelineError(
                f"{path} is not a validation predictions file ({exc}); rerun export_onnx to write it"
            ) from None

    def same_images(self, other: ValPredictions) -> str | None:
        """None when both hold predictions on the same validation images in the same order, else
        what differs."""
        if (self.images_sha256, self.labels_sha256) != (other.images_sha256, other.labels_sha256):
            return (
                f"other validation images (val_images.npy sha256 {self.images_sha256[:12]} against "
                f"{other.images_sha256[:12]})"
            )
        if not np.array_equal(self.index, other.index) or not np.array_equal(self.label, other.label):
            return (
                f"other validation images ({len(self.index)} against {len(other.index)}, or in another order)"
            )
        return None


@dataclass(frozen=True)
class McNemar:
    """The paired comparison of a challenger with a holder on the same images. `better`: images the
    challenger gets right and the holder wrong; `worse`: the other way round (the discordant pairs).
    `p_value`: one-sided exact McNemar, P(X >= better) for X ~ Binomial(better + worse, 1/2), the
    chance of the challenger winning at least this many of the discordant images if the two models
    were equally good."""

    images: int
    better: int
    worse: int
    p_value: float


def binomial_upper_tail(successes: int, trials: int) -> float:
    """P(X >= successes) for X ~ Binomial(trials, 1/2), exactly (integer sums; 1.0 for no trials)."""
    if trials < 0 or not 0 <= successes <= trials + 1:
        raise ValueError(f"need 0 <= successes <= trials + 1, got {successes} of {trials}")
    tail = sum(math.comb(trials, k) for k in range(successes, trials + 1))
    return float(Fraction(tail, 2**trials))


def mcnemar(challenger: np.ndarray, holder: np.ndarray) -> McNemar:
    """The exact one-sided McNemar test of `challenger` beating `holder`, from their per-image
    correct (True) / incorrect (False) on the same images."""
    challenger, holder = np.asarray(challenger, dtype=bool), np.asarray(holder, dtype=bool)
    if challenger.shape != holder.shape or challenger.ndim != 1:
        raise ValueError(
            f"paired predictions must be two equal 1-d arrays, got {challenger.shape} and {holder.shape}"
        )
    better = int((challenger & ~holder).sum())
    worse = int((~challenger & holder).sum())
    return McNemar(len(challenger), better, worse, binomial_upper_tail(better, better + worse))
