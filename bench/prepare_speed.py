"""Benchmark: prepare_dataset on a full-size (60,000-image) CIFAR-10 archive in the genuine format.

    python bench/prepare_speed.py [--jpeg-archive cifar10-train-jpeg.tar.gz]

Times the rule's own command (process start, imports, MD5, unpickling, split, stats, writing and
hashing the arrays) on a generated archive, three runs, and prints the median. With
--jpeg-archive (or $CIFARFLOW_JPEG_ARCHIVE) it also times the folder source on real JPEGs: a
tarball of the CIFAR-10 training images as JPEGs, train/<class>/<nnnn>.jpg, whose last 1,000 files
per class are set aside as test/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "scripts")]

from cifar_archive import make_archive  # noqa: E402
from cifarflow.config import prepare_settings, validate_config  # noqa: E402

# The real CIFAR-10 training images as JPEGs (this benchmark's --jpeg-archive, train_cifar10.py's
# --archive): not in the repository, and not what the workflow downloads (the official archive holds
# pickled arrays), so each benchmark takes it as an argument or from this variable.
ARCHIVE_ENV = "CIFARFLOW_JPEG_ARCHIVE"
ARCHIVE_FORMAT = "a tarball of the CIFAR-10 training images as JPEGs, train/<class>/<nnnn>.jpg"


def jpeg_archive(path: Path | None, option: str) -> Path:
    """`path` (the option's value, else $CIFARFLOW_JPEG_ARCHIVE) if it is a file; else exit naming
    what is missing and how to pass it."""
    if path is None:
        sys.exit(
            f"{Path(sys.argv[0]).name}: no JPEG archive given. It needs {ARCHIVE_FORMAT} "
            f"(50,000 files): pass {option} PATH or set {ARCHIVE_ENV}=PATH."
        )
    if not path.is_file():
        sys.exit(
            f"{Path(sys.argv[0]).name}: {option} {path}: no such file. Pass {ARCHIVE_FORMAT} "
            f"(or set {ARCHIVE_ENV} to its path)."
        )
    return path


def run_prepare(settings: dict, outdir: Path, archive: Path | None, threads: int) -> float:
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "prepare_dataset.py"),
        "--settings",
        json.dumps(settings),
        "--dataset-id",
        "bench",
        "--outdir",
        str(outdir),
        "--threads",
        str(threads),
    ]
    cmd += [str(archive)] if archive else []
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def folder_settings(path: Path) -> dict:
    """prepare_dataset's settings for a folder source, as the workflow passes them (the schema's
    defaults: val_fraction 0.1, seed 0, no resize, the pixel limit)."""
    dataset = {"source": "folder", "path": str(path)}
    return prepare_settings(validate_config({"dataset": dataset}, ROOT / "config" / "schema.yaml")["dataset"])


def split_jpeg_archive(archive: Path, root: Path, test_per_class: int = 1000) -> None:
    """train/<class>/<n>.jpg -> root/train/<class>/ and root/test/<class>/ (last files of each class)."""
    with tarfile.open(archive) as tar:
        tar.extractall(root / "all", filter="data")
    source = next(p for p in (root / "all").rglob("train") if p.is_dir())
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        files = sorted(class_dir.iterdir())
        for split, chunk in (("train", files[:-test_per_class]), ("test", files[-test_per_class:])):
            target = root / split / class_dir.name
            target.mkdir(parents=True, exist_ok=True)
            for path in chunk:
                os.replace(path, target / path.name)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--jpeg-archive",
        type=Path,
        default=os.environ.get(ARCHIVE_ENV) or None,
        help=f"{ARCHIVE_FORMAT} (default: ${ARCHIVE_ENV}; neither: the folder source is not timed)",
    )
    args = parser.parse_args()
    if args.jpeg_archive is not None:
        jpeg_archive(args.jpeg_archive, "--jpeg-archive")
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        md5, *_ = make_archive(tmp / "cifar-10-python.tar.gz", per_batch=10_000)
        size = (tmp / "cifar-10-python.tar.gz").stat().st_size
        print(
            f"generated a genuine-format archive: 60,000 images, {size / 2**20:.0f} MiB "
            f"in {time.perf_counter() - start:.1f} s"
        )
        settings = {"source": "cifar10", "md5": md5, "val_fraction": 0.1, "seed": 0}
        times = [
            run_prepare(settings, tmp / f"out{i}", tmp / "cifar-10-python.tar.gz", args.threads)
            for i in range(args.runs)
        ]
        print(
            f"cifar10 archive -> arrays (60,000 images): median {statistics.median(times):.2f} s "
            f"over {args.runs} runs {[round(t, 2) for t in times]}; target <= 10 s"
        )
        if args.jpeg_archive:
            split_jpeg_archive(args.jpeg_archive, tmp / "jpeg")
            settings = folder_settings(tmp / "jpeg")
            times = [
                run_prepare(settings, tmp / f"jpeg_out{i}", None, args.threads) for i in range(args.runs)
            ]
            meta = json.loads((tmp / "jpeg_out0" / "meta.json").read_text())
            print(
                f"folder of real JPEGs -> arrays ({sum(meta['sizes'].values()):,} images, "
                f"{args.threads} processes): median {statistics.median(times):.2f} s "
                f"{[round(t, 2) for t in times]}; sizes {meta['sizes']}"
                f"; mean {meta['mean']} std {meta['std']}"
            )
        else:
            print(f"folder of real JPEGs: not timed (no --jpeg-archive, ${ARCHIVE_ENV} unset)")


if __name__ == "__main__":
    main()
