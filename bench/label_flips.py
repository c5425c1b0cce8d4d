"""Planted label flips on real images: does K-fold confident learning find them?

    python bench/label_flips.py --archive cifar10-train-jpeg.tar.gz     # or $CIFARFLOW_JPEG_ARCHIVE
    python bench/label_flips.py --synthetic --epochs 3                  # a tiny smoke run, no archive

The real CIFAR-10 training JPEGs (train/<class>/<n>.jpg; not in the repository; the official test
split is not used) are read (all 50,000, or --per-class of each class, the first by file name), a
fraction of their labels (--flip, default 2%) is moved to another class at random (seeded, --seed),
and they are prepared as the workflow prepares a dataset (10% of each class held out as val). Then
exactly what audit.label_issues.folds runs: K folds (--folds, default 4; stratified, seeded with the
dataset's seed) of train+val, each trained by label_folds.train_fold (training.train on a Subset)
with the default recipe and --epochs, and label_folds.gather (confident learning on train and on
val). It prints the precision and recall of the flipped images among the flagged ones, the time of
each fold and in all, and the CPU.

The test split that write_dataset requires is the first 10 images of each class, copied: no fold
reads it (a fold trains and validates on train+val only).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "bench")]

from carves import cpu_name  # noqa: E402
from cifarflow.config import Recipe, validate_config  # noqa: E402
from cifarflow.dataset import RawDataset, Split, stratified_split, write_dataset  # noqa: E402
from cifarflow.label_folds import gather, train_fold  # noqa: E402
from cifarflow.runtime import setup_logging  # noqa: E402
from cifarflow.synthetic import generate  # noqa: E402
from prepare_speed import ARCHIVE_ENV, jpeg_archive  # noqa: E402

VAL_FRACTION = 0.1  # the schema's default, as users prepare CIFAR-10
DATASET_SEED = 0  # the schema's default dataset.seed: the val split and the folds


def load_archive(archive: Path, per_class: int | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images, labels, class names) of train/<class>/*.jpg, each class's files sorted by name."""
    files: dict[str, dict[str, bytes]] = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if member.isfile() and member.name.endswith(".jpg") and len(parts) >= 3 and parts[-3] == "train":
                files.setdefault(parts[-2], {})[member.name] = tar.extractfile(member).read()
    names = sorted(files)
    if len(names) != 10:
        sys.exit(f"{archive}: expected train/<class>/ for CIFAR-10's 10 classes, found {names}")
    images, labels = [], []
    for label, name in enumerate(names):
        chosen = sorted(files[name])[:per_class]
        images += [np.asarray(Image.open(io.BytesIO(files[name][f])).convert("RGB")) for f in chosen]
        labels += [label] * len(chosen)
    return np.stack(images), np.array(labels, dtype=np.int64), names


def flip_labels(labels: np.ndarray, fraction: float, seed: int, classes: int) -> np.ndarray:
    """A copy of `labels` with round(fraction * N) of them, drawn at random, moved to another class
    (uniformly among the other classes)."""
    rng = np.random.default_rng(seed)
    flipped = labels.copy()
    which = rng.choice(len(labels), size=int(round(fraction * len(labels))), replace=False)
    flipped[which] = (labels[which] + rng.integers(1, classes, size=which.size)) % classes
    return flipped


def prepare(images: np.ndarray, given: np.ndarray, names: list[str], data: Path) -> tuple[np.ndarray, int]:
    """Write the prepared dataset (given labels) to `data`; return, for each row of train+val pooled
    (train first, as the folds pool them), its row in `images`, and the number of train images."""
    train_idx, val_idx = stratified_split(given, VAL_FRACTION, DATASET_SEED)
    test = np.concatenate([np.flatnonzero(given == c)[:10] for c in range(len(names))])
    raw = RawDataset(Split(images, given), Split(images[test], given[test]), names, "bench:label_flips")
    settings = {"source": "bench", "val_fraction": VAL_FRACTION, "seed": DATASET_SEED}
    write_dataset(raw, data, dataset_id="bench-label-flips", settings=settings)
    return np.concatenate([train_idx, val_idx]), len(train_idx)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--archive", type=Path, default=os.environ.get(ARCHIVE_ENV), help=f"or ${ARCHIVE_ENV}"
    )
    parser.add_argument("--synthetic", action="store_true", help="the synthetic generator's images instead")
    parser.add_argument("--per-class", type=int, help="images of each class (default: all)")
    parser.add_argument("--flip", type=float, default=0.02, help="fraction of labels flipped")
    parser.add_argument("--seed", type=int, default=1, help="seed of the flips")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument(
        "--epochs", type=int, default=4, help="the folds' recipe: the default with these epochs"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, help="keep the prepared data and the folds here")
    args = parser.parse_args()
    setup_logging(None)

    start = time.perf_counter()
    if args.synthetic:
        raw = generate(train_per_class=args.per_class or 100, test_per_class=1, seed=5)
        images, labels, names = raw.train.images, raw.train.labels, raw.class_names
        source = f"synthetic generator (seed 5), {len(labels):,} images"
    else:
        archive = jpeg_archive(Path(args.archive) if args.archive else None, "--archive")
        images, labels, names = load_archive(archive, args.per_class)
        source = f"{archive.name}, {len(labels):,} training JPEGs"
    given = flip_labels(labels, args.flip, args.seed, len(names))
    loaded = time.perf_counter() - start

    config = validate_config({"train": {"epochs": args.epochs}}, ROOT / "config" / "schema.yaml")
    recipe = Recipe.from_config(config["train"])
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        data = work / "data"
        pool_rows, n_train = prepare(images, given, names, data)
        flipped = given[pool_rows] != labels[pool_rows]  # [train+val pooled]
        seconds, fold_files, accuracy = [], [], []
        for fold in range(args.folds):
            began = time.perf_counter()
            out = work / "folds" / str(fold)
            metrics = train_fold(
                data, recipe, out, fold=fold, folds=args.folds, seed=DATASET_SEED, threads=args.threads
            )
            seconds.append(time.perf_counter() - began)
            accuracy.append(metrics["val_accuracy"])
            fold_files.append(out / "held_out.parquet")
            print(
                f"fold {fold}: {metrics['train_images']:,} trained, {metrics['held_out_images']:,} held out, "
                f"held-out accuracy {metrics['val_accuracy']:.4f}, {seconds[-1]:.1f} s "
                f"({metrics['images_per_second']:,.0f} images/s training)",
                flush=True,
            )
        began = time.perf_counter()
        figures = gather(data, fold_files, work / "issues")
        gathered = time.perf_counter() - began
        issues = pd.read_parquet(work / "issues" / "label_issues.parquet")

    rows = np.where(issues["split"] == "train", issues["index"], issues["index"] + n_train).astype(int)
    flagged = np.zeros(len(flipped), dtype=bool)
    flagged[rows] = True
    found = int((flagged & flipped).sum())
    recall = found / max(int(flipped.sum()), 1)
    precision = found / max(int(flagged.sum()), 1)
    total = time.perf_counter() - start
    print(
        json.dumps(
            {
                "source": source,
                "recipe": f"default train recipe, {args.epochs} epochs",
                "flipped": int(flipped.sum()),
                "flip_fraction": args.flip,
                "folds": args.folds,
                "flagged": int(flagged.sum()),
                "flagged_and_flipped": found,
                "recall": round(recall, 4),
                "precision": round(precision, 4),
                "out_of_fold_accuracy": figures["out_of_fold_accuracy"],
                "fold_seconds": [round(s, 1) for s in seconds],
                "gather_seconds": round(gathered, 1),
                "load_seconds": round(loaded, 1),
                "total_seconds": round(total, 1),
                "cpu": f"{cpu_name()}; torch threads {args.threads}",
            },
            indent=2,
        )
    )
    print(
        f"targets: recall >= 0.8 ({'met' if recall >= 0.8 else f'missed by {0.8 - recall:.3f}'}), "
        f"precision >= 0.7 ({'met' if precision >= 0.7 else f'missed by {0.7 - precision:.3f}'})"
    )


if __name__ == "__main__":
    main()
