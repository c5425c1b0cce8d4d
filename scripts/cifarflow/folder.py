"""A directory of PNG/JPEG images: train/<class>/* and test/<class>/*; class = folder name."""

from __future__ import annotations

import hashlib
import io
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import UnidentifiedImageError

from .dataset import RawDataset, Split
from .errors import PipelineError
from .runtime import progress
from .serving.images import MAX_PIXELS, TooLarge, WrongSize, open_limited, to_rgb32

log = logging.getLogger("cifarflow")

EXTENSIONS = {".png", ".jpg", ".jpeg"}
PARALLEL_FROM = 2000  # below this many files, worker start-up costs more than it saves


def _visible(entries) -> list[Path]:
    return sorted(p for p in entries if not p.name.startswith("."))


def _list_split(root: Path, split: str) -> dict[str, list[Path]]:
    split_dir = root / split
    if not split_dir.is_dir():
        raise PipelineError(
            f"{split_dir} does not exist: dataset.source 'folder' needs {root}/train/<class>/* and "
            f"{root}/test/<class>/* (set dataset.path to such a directory)"
        )
    classes = {d.name: d for d in _visible(split_dir.iterdir()) if d.is_dir()}
    if not classes:
        raise PipelineError(f"{split_dir} has no class folders; expected {split_dir}/<class>/<image>")
    files = {}
    for name, class_dir in sorted(classes.items()):
        images = _visible(p for p in class_dir.iterdir() if p.is_file())
        for path in images:
            if path.suffix.lower() not in EXTENSIONS:
                raise PipelineError(f"{path} is not a PNG or JPEG file; remove it from the dataset folder")
        if not images:
            raise PipelineError(f"{class_dir} holds no images")
        files[name] = images
    return files


def _decode(job: tuple[str, bool, int]) -> tuple[np.ndarray, str, bool]:
    path, resize, max_pixels = job
    data = Path(path).read_bytes()
    try:
        with open_limited(io.BytesIO(data), max_pixels) as image:
            pixels, resized = to_rgb32(image, resize)
    except WrongSize as err:
        raise PipelineError(
            f"{path} {err}. Set dataset.resize: true to resize such images, or replace the file."
        ) from None
    except TooLarge as err:
        raise PipelineError(
            f"{path} {err} (dataset.max_image_pixels). Shrink or remove the file, or raise the limit."
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise PipelineError(f"{path} cannot be read as an image ({err}); fix or remove it") from None
    return pixels, hashlib.sha256(data).hexdigest(), resized


def _read_split(
    files: dict[str, list[Path]],
    class_names: list[str],
    resize: bool,
    threads: int,
    split: str,
    max_pixels: int,
) -> tuple[Split, list[str], int]:
    jobs = [(str(path), resize, max_pixels) for name in class_names for path in files[name]]
    labels = np.concatenate(
        [np.full(len(files[name]), i, dtype=np.int64) for i, name in enumerate(class_names)]
    )
    images = np.empty((len(jobs), 32, 32, 3), dtype=np.uint8)
    digests, n_resized = [], 0
    if threads > 1 and len(jobs) >= PARALLEL_FROM:
        pool = ProcessPoolExecutor(max_workers=threads)
        results = pool.map(_decode, jobs, chunksize=256)
    else:
        pool, results = None, map(_decode, jobs)
    try:
        for i, (pixels, digest, resized) in enumerate(
            progress(results, total=len(jobs), desc=f"decode {split}", unit="img")
        ):
            images[i] = pixels
            digests.append(digest)
            n_resized += resized
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return Split(images, labels), digests, n_resized


def read_folder(
    root: str | Path, resize: bool = False, threads: int = 1, max_pixels: int = MAX_PIXELS
) -> RawDataset:
    """Read train/ and test/ (same class set in both), every image converted to RGB 32x32.

    An image whose header declares more than `max_pixels` (width x height) is an error naming the
    file, before it is decoded.
    """
    root = Path(root)
    if not root.is_dir():
        raise PipelineError(f"dataset.path {root} is not a directory (dataset.source is 'folder')")
    train_files, test_files = _list_split(root, "train"), _list_split(root, "test")
    if set(train_files) != set(test_files):
        missing = sorted(set(train_files) - set(test_files))
        extra = sorted(set(test_files) - set(train_files))
        detail = "; ".join(
            part
            for part in (
                f"missing from test: {', '.join(missing)}" if missing else "",
                f"missing from train: {', '.join(extra)}" if extra else "",
            )
            if part
        )
        raise PipelineError(f"train and test in {root} must hold the same classes ({detail})")
    class_names = sorted(train_files)
    source = hashlib.sha256()
    splits = {}
    for split, files in (("train", train_files), ("test", test_files)):
        data, digests, n_resized = _read_split(files, class_names, resize, threads, split, max_pixels)
        names = [os.path.relpath(p, root) for name in class_names for p in files[name]]
        for name, digest in zip(names, digests, strict=True):
            source.update(f"{name}\0{digest}\n".encode())
        if n_resized:
            log.info("%s: resized %d of %d images to 32x32", split, n_resized, len(names))
        splits[split] = data
    return RawDataset(splits["train"], splits["test"], class_names, f"sha256:{source.hexdigest()}")
