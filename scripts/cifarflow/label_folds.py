"""Label issues of train and val from K-fold cross-validated probabilities (audit.label_issues.folds).

train+val are pooled (train's rows first, then val's) and split into K stratified folds seeded with
the dataset's seed (label_issues.stratified_folds). `train_fold` is one fold's job: training.train on
the other folds' images (a Subset: the same loop, recipe and resume as train_model), validated on the
held-out images, whose class probabilities it writes (held_out.parquet). `gather` is the last job: it
joins the K folds' probabilities, runs confident learning on train and on val
(label_issues.train_val_issues) and writes the table, the report grid and the figures.

Layout of results/audit/<dataset-id>/label_issues/:
    folds/<f>/held_out.parquet   row (of the pool), split, index (in the split), given_label,
                                 prob_0..prob_<classes-1> (float32)
    folds/<f>/metrics.json       the fold's training figures (val_* = on its held-out images)
    label_issues.parquet         split, index, file, given_label, suggested_label, self_confidence, rank
    label_issues.png             the most likely suspects of both splits
    metrics.json                 train_/val_label_issue_count and _fraction, folds, out-of-fold accuracy
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .dataset import load_meta, load_split
from .errors import PipelineError
from .label_issues import join_folds, stratified_folds, train_val_issues
from .plots import label_issue_grid, save_png
from .runtime import atomic_path

if TYPE_CHECKING:
    from .config import Recipe

log = logging.getLogger("cifarflow")

GRID_LIMIT = 24


def pooled_labels(data_dir: str | Path) -> tuple[np.ndarray, int]:
    """Labels of train+val pooled (train's first) and the number of train images."""
    train, val = (np.asarray(load_split(data_dir, s).labels) for s in ("train", "val"))
    return np.concatenate([train, val]), len(train)


def fold_subset(data_dir: str | Path, fold: int, folds: int, seed: int):
    """The training.Subset of fold `fold` of `folds`: train on the other folds, hold out this one."""
    from .training import Subset  # torch: only the fold's job needs it

    if not 0 <= fold < folds:
        raise PipelineError(
            f"fold {fold} does not exist: audit.label_issues.folds is {folds} (folds 0..{folds - 1})"
        )
    labels, _ = pooled_labels(data_dir)
    try:
        which = stratified_folds(labels, folds, seed)
    except ValueError as err:
        raise PipelineError(str(err)) from None
    return Subset(train=np.flatnonzero(which != fold), held_out=np.flatnonzero(which == fold))


def train_fold(
    data_dir: Path, recipe: Recipe, outdir: Path, *, fold: int, folds: int, seed: int, threads: int = 0
) -> dict:
    """Train fold `fold` (training.train on its Subset); write held_out.parquet; return the metrics."""
    from .training import train  # torch: only the fold's job needs it

    subset = fold_subset(data_dir, fold, folds, seed)
    labels, n_train = pooled_labels(data_dir)
    log.info(
        "fold %d of %d: training on %s images of train+val, holding out %s",
        fold, folds, f"{len(subset.train):,}", f"{len(subset.held_out):,}",
    )  # fmt: skip
    outdir.mkdir(parents=True, exist_ok=True)
    metrics = train(data_dir, recipe, outdir, threads=threads, subset=subset)
    probs = metrics.pop("held_out_probabilities")
    rows = subset.held_out
    table = pd.DataFrame(
        {
            "row": rows.astype(np.int64),
            "split": np.where(rows < n_train, "train", "val"),
            "index": np.where(rows < n_train, rows, rows - n_train).astype(np.int64),
            "given_label": labels[rows].astype(np.int64),
        }
    )
    for c in range(probs.shape[1]):
        table[f"prob_{c}"] = probs[:, c]
    with atomic_path(outdir / "held_out.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    return {"fold": fold, "folds": folds, **metrics}


def read_fold(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(rows of the pool, probabilities) of one fold's held_out.parquet."""
    table = pd.read_parquet(path)
    columns = sorted((c for c in table.columns if c.startswith("prob_")), key=lambda c: int(c[5:]))
    return table["row"].to_numpy(), table[columns].to_numpy(dtype=np.float64)


def gather(data_dir: Path, fold_files: list[str | Path], outdir: Path) -> dict:
    """Join the folds, flag train's and val's suspected label errors; write label_issues.parquet and
    label_issues.png to `outdir`; return the figures (metrics.json)."""
    meta = load_meta(data_dir)
    splits = {s: load_split(data_dir, s) for s in ("train", "val")}
    train_labels, val_labels = (np.asarray(splits[s].labels) for s in ("train", "val"))
    n = len(train_labels) + len(val_labels)
    try:
        probs = join_folds([read_fold(f) for f in fold_files], n)
    except ValueError as err:
        raise PipelineError(str(err)) from None
    if probs.shape[1] != meta["num_classes"]:
        raise PipelineError(
            f"the folds' probabilities have {probs.shape[1]} classes, the dataset {meta['num_classes']}: "
            "they were made for another dataset; rerun them"
        )
    issues, figures = train_val_issues(probs, train_labels, val_labels)
    pooled = np.concatenate([train_labels, val_labels])
    out_of_fold_accuracy = float((probs.argmax(axis=1) == pooled).mean())
    log.info(
        "label issues from %d folds: train %d (%.2f%%), val %d (%.2f%%); out-of-fold accuracy %.4f",
        len(fold_files),
        figures["train_label_issue_count"],
        100 * figures["train_label_issue_fraction"],
        figures["val_label_issue_count"],
        100 * figures["val_label_issue_fraction"],
        out_of_fold_accuracy,
    )
    outdir.mkdir(parents=True, exist_ok=True)
    with atomic_path(outdir / "label_issues.parquet") as tmp:
        issues.to_parquet(tmp, index=False)
    shown = issues.sort_values(["self_confidence", "split", "index"], kind="stable")
    grid = label_issue_grid(
        {s: np.asarray(splits[s].images) for s in splits},
        shown,
        meta["class_names"],
        n,
        limit=GRID_LIMIT,
        population="train and val images",
        source=f"{len(fold_files)}-fold cross-validated probabilities",
    )
    save_png(grid, outdir / "label_issues.png")
    return {
        **figures,
        "label_issue_folds": len(fold_files),
        "out_of_fold_accuracy": round(out_of_fold_accuracy, 6),
    }
