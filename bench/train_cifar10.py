"""Benchmark: train_model on real CIFAR-10 images, wall time and test accuracy.

    python bench/train_cifar10.py --archive cifar10-train-jpeg.tar.gz [--set epochs=15 ...]

Needs the real CIFAR-10 training images: a tarball of the CIFAR-10 training images as JPEGs,
train/<class>/<nnnn>.jpg (50,000 files), given as --archive or $CIFARFLOW_JPEG_ARCHIVE. The first
4,000 per class become train (10% of them held out as val), the last 1,000 per class the test split.
Prepares that once (cached under --cache; later runs need no archive), then times the rule's own
command (`python scripts/train_model.py ...`, process start to exit) with the default recipe from
config/config.yaml, overridden by any --set key=value (YAML values).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "bench")]

from cifarflow.config import Recipe, validate_config  # noqa: E402
from prepare_speed import (  # noqa: E402
    ARCHIVE_ENV,
    ARCHIVE_FORMAT,
    folder_settings,
    jpeg_archive,
    run_prepare,
    split_jpeg_archive,
)


def prepare(archive: Path | None, cache: Path) -> Path:
    data = cache / "data"
    if not (data / "meta.json").exists():
        if not (cache / "jpeg" / "test").exists():
            split_jpeg_archive(jpeg_archive(archive, "--archive"), cache / "jpeg")
        run_prepare(folder_settings(cache / "jpeg"), data, None, threads=2)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--archive",
        type=Path,
        default=os.environ.get(ARCHIVE_ENV) or None,
        help=f"{ARCHIVE_FORMAT} (default: ${ARCHIVE_ENV}); not needed once --cache holds the prepared data",
    )
    parser.add_argument("--cache", type=Path, default=Path("/tmp/cifarflow-bench"))
    parser.add_argument("--configfile", type=Path, help="a config overlay whose train keys apply")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a train key"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="default")
    args = parser.parse_args()
    data = prepare(args.archive, args.cache)
    config = validate_config(
        yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), ROOT / "config" / "schema.yaml"
    )
    train = dict(config["train"])
    if args.configfile:
        train |= yaml.safe_load(args.configfile.read_text()).get("train", {})
    for item in args.set:
        key, _, value = item.partition("=")
        train[key] = yaml.safe_load(value)
    recipe = Recipe.from_config(validate_config({"train": train}, ROOT / "config" / "schema.yaml")["train"])
    outdir = args.cache / "runs" / args.name
    (outdir / "resume.pt").unlink(missing_ok=True)
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            ROOT / "scripts" / "train_model.py",
            "--data",
            data,
            "--recipe",
            recipe.to_json(),
            "--outdir",
            outdir,
            "--threads",
            str(args.threads),
            "--log",
            outdir / "train.log",
        ],
        check=True,
    )
    wall = time.perf_counter() - start
    metrics = json.loads((outdir / "metrics.json").read_text())
    print(
        json.dumps(
            {
                "recipe": recipe.asdict(),
                "wall_seconds": round(wall, 1),
                "train_seconds": metrics["train_seconds"],
                "test_accuracy": metrics["test_accuracy"],
                "val_accuracy": metrics["val_accuracy"],
                "images_per_second": metrics["images_per_second"],
                "parameters": metrics["parameters"],
            }
        )
    )


if __name__ == "__main__":
    main()
