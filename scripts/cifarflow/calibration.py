"""How honest a classifier's probabilities are, and temperature scaling to make them more so.

Numpy only (the serving image and every rule can import it). Definitions:
- Expected calibration error (ECE), top-label, 15 equal-width bins (Guo et al., "On Calibration of
  Modern Neural Networks", 2017): each prediction falls in the bin ((m-1)/15, m/15] of its top
  probability (its confidence); ECE = sum over bins of |bin| / n * |accuracy(bin) - confidence(bin)|.
- Negative log likelihood (NLL): mean of -ln p(true class), natural log; a probability below 1e-12
  counts as 1e-12 (from logits, via log-softmax, nothing is clipped).
- Brier score, multi-class, Brier's original definition: mean over images of
  sum over classes of (p_k - [k == true class])^2, from 0 (perfect) to 2.
- Temperature scaling: probabilities = softmax(logits / T) with one T > 0 fitted to minimise NLL on
  held-out (validation) data. T > 1 softens an over-confident model, T < 1 sharpens an
  under-confident one; the argmax, so the accuracy, never changes.
"""

from __future__ import annotations

import logging
import math

import numpy as np

log = logging.getLogger("cifarflow")

BINS = 15
PROBABILITY_FLOOR = 1e-12
# The temperature search range: far beyond any useful scaling either way (a network trained with
# label smoothing lands around 0.5-0.9, an over-confident one around 1.5-3).
T_MIN, T_MAX = 0.05, 20.0
_GRID = 97  # log-spaced first pass over [T_MIN, T_MAX], then golden-section refinement
_GOLDEN = (math.sqrt(5) - 1) / 2


def _check(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] < 2:
        raise ValueError(f"probabilities must be [N, classes] with N >= 1 and classes >= 2, got {p.shape}")
    if y.shape != (p.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be {p.shape[0]} integers, got {y.dtype} {y.shape}")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"labels must lie in 0..{p.shape[1] - 1}, got {y.min()}..{y.max()}")
    if not np.isfinite(p).all():
        raise ValueError("probabilities hold NaN or inf")
    return p, y.astype(np.int64)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / temperature) over the last axis, in float64."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def bin_index(confidence: np.ndarray, bins: int = BINS) -> np.ndarray:
    """The bin ((m-1)/bins, m/bins] of each confidence, as 0..bins-1 (0 also takes a confidence of 0)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS) -> list[dict]:
    """The reliability diagram's data: per bin its bounds, count, mean confidence and accuracy of the
    top-label predictions in it (confidence and accuracy are None for an empty bin)."""
    p, y = _check(probabilities, labels)
    confidence, correct = p.max(axis=1), (p.argmax(axis=1) == y)
    index = bin_index(confidence, bins)
    rows = []
    for m in range(bins):
        members = index == m
        count = int(members.sum())
        rows.append(
            {
                "lower": m / bins,
                "upper": (m + 1) / bins,
                "count": count,
                "confidence": float(confidence[members].mean()) if count else None,
                "accuracy": float(correct[members].mean()) if count else None,
            }
        )
    return rows


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """Top-label ECE over `bins` equal-width confidence bins (see the module's docstring)."""
    rows = reliability(probabilities, labels, bins)
    n = sum(r["count"] for r in rows)
    return float(sum(r["count"] / n * abs(r["accuracy"] - r["confidence"]) for r in rows if r["count"]))


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean -ln p(true class); probabilities below 1e-12 count as 1e-12."""
    p, y = _check(probabilities, labels)
    return float(-np.log(np.maximum(p[np.arange(len(y)), y], PROBABILITY_FLOOR)).mean())


def brier_score(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Brier score: mean over images of the squared distance to the one-hot label (0..2)."""
    p, y = _check(probabilities, labels)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def calibration_metrics(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS) -> dict[str, float]:
    """ece, nll, brier, and the mean confidence beside the accuracy (their gap: over/under-confidence)."""
    p, y = _check(probabilities, labels)
    return {
        "ece": round(expected_calibration_error(p, y, bins), 6),
        "nll": round(negative_log_likelihood(p, y), 6),
        "brier": round(brier_score(p, y), 6),
        "mean_confidence": round(float(p.max(axis=1).mean()), 6),
    }


def nll_from_logits(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """NLL of softmax(logits / temperature), through a stable log-softmax (no clipping)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    y = np.asarray(labels, dtype=np.int64)
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float((log_norm - z[np.arange(len(y)), y]).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in [0.05, 20] that minimises the NLL of softmax(logits / T) on these (validation) data.

    NLL is convex in 1/T, so it has one minimum along log T: a log-spaced grid finds its bracket and a
    golden-section search narrows it to 1e-6 in log T. T = 1 is kept unless another T is strictly
    better (logits that carry no information leave the model as it is).
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] < 2:
        raise ValueError(f"logits must be [N, classes] with N >= 1 and classes >= 2, got {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("logits hold NaN or inf: temperature scaling needs finite logits")
    _check(np.full(z.shape, 1.0 / z.shape[1]), y)  # the labels' checks

    def nll(log_t: float) -> float:
        return nll_from_logits(z, y, math.exp(log_t))

    lo, hi = math.log(T_MIN), math.log(T_MAX)
    grid = np.linspace(lo, hi, _GRID)
    values = [nll(t) for t in grid]
    best = int(np.argmin(values))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, _GRID - 1)]
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = nll(c), nll(d)
    while b - a > 1e-6:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = nll(d)
    log_t = (a + b) / 2
    if not nll(log_t) < nll(0.0):
        return 1.0
    temperature = math.exp(log_t)
    if log_t - lo < 1e-3 or hi - log_t < 1e-3:
        log.warning(
            "temperature scaling: the best temperature %.4g lies at the edge of the search range [%g, %g]; "
            "the model's logits are extreme or carry almost no information",
            temperature,
            T_MIN,
            T_MAX,
        )
    return temperature
