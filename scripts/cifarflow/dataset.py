"""The prepared dataset on disk: uint8 NHWC arrays per split, int64 labels, and meta.json.

Layout of results/data/<dataset-id>/:
    {train,val,test}_images.npy   uint8 [N, 32, 32, 3], RGB, memory-mappable
    {train,val,test}_labels.npy   int64 [N]
    meta.json                     source, classes, counts, train mean/std, sha256 of each array
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import PipelineError
from .layout import SPLITS, array_files
from .runtime import sha256_file


@dataclass
class Split:
    images: np.ndarray  # uint8 [N, 32, 32, 3]
    labels: np.ndarray  # int64 [N]


@dataclass
class RawDataset:
    """What a source reader returns: the source's own train and test splits."""

    train: Split
    test: Split
    class_names: list[str]
    source_checksum: str  # "<algorithm>:<hex>" of what was read


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): `fraction` of every class to val, chosen with `seed`; both sorted."""
    rng = np.random.default_rng(seed)
    val = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        val.append(rng.permutation(members)[: int(round(len(members) * fraction))])
    val_idx = np.sort(np.concatenate(val)) if val else np.empty(0, dtype=np.int64)
    train_mask = np.ones(len(labels), dtype=bool)
    train_mask[val_idx] = False
    return np.flatnonzero(train_mask), val_idx


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Exact per-channel mean and std in 0..1 units, from 256-bin histograms (no float copy)."""
    means, stds = [], []
    values = np.arange(256, dtype=np.float64)
    for c in range(images.shape[-1]):
        hist = np.bincount(images[..., c].ravel(), minlength=256).astype(np.float64)
        n = hist.sum()
        mean = (hist * values).sum() / n
        var = (hist * (values - mean) ** 2).sum() / n
        means.append(round(float(mean) / 255.0, 6))
        stds.append(round(float(np.sqrt(var)) / 255.0, 6))
    return means, stds


def _counts(labels: np.ndarray, class_names: list[str]) -> dict[str, int]:
    counts = np.bincount(labels, minlength=len(class_names))
    return {name: int(n) for name, n in zip(class_names, counts, strict=True)}


def write_dataset(raw: RawDataset, outdir: Path, *, dataset_id: str, settings: dict) -> dict:
    """Split off val, compute stats, write arrays and meta.json; all files appear or none do."""
    train_idx, val_idx = stratified_split(raw.train.labels, settings["val_fraction"], settings["seed"])
    splits = {
        "train": Split(raw.train.images[train_idx], raw.train.labels[train_idx]),
        "val": Split(raw.train.images[val_idx], raw.train.labels[val_idx]),
        "test": raw.test,
    }
    mean, std = channel_stats(splits["train"].images)
    outdir = Path(outdir)
    staging = outdir.parent / f".{outdir.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        files = {}
        for name, split in splits.items():
            images_file, labels_file = array_files(name)
            np.save(staging / images_file, np.ascontiguousarray(split.images, dtype=np.uint8))
            np.save(staging / labels_file, split.labels.astype(np.int64))
            files[name] = {
                "images": images_file,
                "labels": labels_file,
                "images_sha256": sha256_file(staging / images_file),
                "labels_sha256": sha256_file(staging / labels_file),
            }
        meta = {
            "dataset_id": dataset_id,
            "source": settings["source"],
            "source_checksum": raw.source_checksum,
            "settings": settings,
            "class_names": raw.class_names,
            "num_classes": len(raw.class_names),
            "image_shape": [32, 32, 3],
            "layout": "NHWC",
            "dtype": "uint8",
            "channel_order": "RGB",
            "mean": mean,
            "std": std,
            "sizes": {name: int(len(split.labels)) for name, split in splits.items()},
            "counts": {name: _counts(split.labels, raw.class_names) for name, split in splits.items()},
            "files": files,
        }
        (staging / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        outdir.mkdir(parents=True, exist_ok=True)
        for path in staging.iterdir():
            os.replace(path, outdir / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return meta


def load_meta(data_dir: str | Path) -> dict:
    return json.loads((Path(data_dir) / "meta.json").read_text())


def load_split(data_dir: str | Path, split: str, mmap: bool = True) -> Split:
    """Load one split (memory-mapped by default) and check it against meta.json's shapes."""
    if split not in SPLITS:
        raise PipelineError(f"unknown split {split!r}; expected one of {SPLITS}")
    images_file, labels_file = array_files(split)
    mode = "r" if mmap else None
    images = np.load(Path(data_dir) / images_file, mmap_mode=mode)
    labels = np.load(Path(data_dir) / labels_file, mmap_mode=mode)
    if images.dtype != np.uint8 or images.shape[1:] != (32, 32, 3) or len(images) != len(labels):
        raise PipelineError(f"{data_dir}/{images_file} is not a prepared split; rerun prepare_dataset")
    return Split(images, labels)
