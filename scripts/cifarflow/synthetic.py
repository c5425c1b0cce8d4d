"""Seeded, CIFAR-shaped stand-in data that a small CNN can learn and that needs no download.

Ten classes, each a shape or texture drawn at a random place and size, in a class-typical hue
(jittered so that hue alone overlaps between neighbours), on a random background, under Gaussian
noise. Same settings, same bytes, on every machine.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .dataset import RawDataset, Split

CLASS_NAMES = [
    "disk",
    "square",
    "ring",
    "triangle",
    "cross",
    "diamond",
    "hstripes",
    "vstripes",
    "checker",
    "diagonal",
]
_Y, _X = np.mgrid[0:32, 0:32].astype(np.float32) + 0.5


def _coverage(signed_distance: np.ndarray) -> np.ndarray:
    """Anti-aliased inside-ness from a signed distance in pixels (positive = inside)."""
    return np.clip(signed_distance + 0.5, 0.0, 1.0)


def _shape_mask(name: str, rng: np.random.Generator, n: int) -> np.ndarray:
    cx, cy = (rng.uniform(11, 21, size=(2, n, 1, 1))).astype(np.float32)
    r = rng.uniform(6, 10, size=(n, 1, 1)).astype(np.float32)
    period = rng.uniform(4.5, 7.0, size=(n, 1, 1)).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1)).astype(np.float32)
    dx, dy = _X - cx, _Y - cy
    adx, ady = np.abs(dx), np.abs(dy)
    box = _coverage(r - np.maximum(adx, ady))
    wave = 2 * np.pi / period

    def stripes(t: np.ndarray) -> np.ndarray:
        return box * np.clip(np.sin(t * wave + phase) * 2 + 0.5, 0, 1)

    if name == "disk":
        return _coverage(r - np.hypot(dx, dy))
    if name == "square":
        return box
    if name == "ring":
        return _coverage(r * 0.3 - np.abs(np.hypot(dx, dy) - r * 0.7))
    if name == "triangle":
        return _coverage(np.minimum(r * 0.8 - dy, (dy + r) * 0.55 - adx))
    if name == "cross":
        return _coverage(np.maximum(np.minimum(r / 3 - adx, r - ady), np.minimum(r / 3 - ady, r - adx)))
    if name == "diamond":
        return _coverage(r - (adx + ady))
    if name == "hstripes":
        return stripes(dy)
    if name == "vstripes":
        return stripes(dx)
    if name == "checker":
        return box * np.clip(np.sin(dx * wave + phase) * np.sin(dy * wave) * 4 + 0.5, 0, 1)
    if name == "diagonal":
        return stripes((dx + dy) / np.sqrt(2))
    raise ValueError(name)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB, all in 0..1; returns [n, 3]."""
    k = (np.array([5.0, 3.0, 1.0]) + h[:, None] * 6) % 6
    return v[:, None] - v[:, None] * s[:, None] * np.clip(np.minimum(k, 4 - k), 0, 1)


def _draw_class(label: int, n: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    mask = _shape_mask(CLASS_NAMES[label], rng, n)[..., None]  # [n, 32, 32, 1]
    hue = (label / len(CLASS_NAMES) + rng.normal(0, 0.06, n)) % 1.0
    fg = _hsv_to_rgb(hue, rng.uniform(0.55, 1.0, n), rng.uniform(0.65, 1.0, n)) * 255
    bg = rng.uniform(0, 140, size=(n, 3))
    image = bg[:, None, None, :] * (1 - mask) + fg[:, None, None, :] * mask
    image += rng.normal(0, noise, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _split(per_class: int, noise: float, seed: int, split_index: int) -> Split:
    images, labels = [], []
    for label in range(len(CLASS_NAMES)):
        # One independent stream per (seed, split, class): sizes of one part never shift another.
        rng = np.random.default_rng([seed, split_index, label])
        images.append(_draw_class(label, per_class, noise, rng))
        labels.append(np.full(per_class, label, dtype=np.int64))
    return Split(np.concatenate(images), np.concatenate(labels))


def generate(train_per_class: int, test_per_class: int, noise: float = 24.0, seed: int = 0) -> RawDataset:
    train = _split(train_per_class, noise, seed, 0)
    test = _split(test_per_class, noise, seed, 1)
    digest = hashlib.sha256(train.images.tobytes() + test.images.tobytes()).hexdigest()
    return RawDataset(train, test, list(CLASS_NAMES), f"sha256:{digest}")
