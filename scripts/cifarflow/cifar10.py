"""The official CIFAR-10 python archive: download once, verify its MD5, read it safely.

The archive's batches are pickles. Pickles can run arbitrary code, so they are read only after
the archive's checksum matched, and then through an unpickler that allows only the globals the
format needs to rebuild numpy arrays.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import pickle
import tarfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from .dataset import RawDataset, Split
from .errors import PipelineError
from .runtime import atomic_path, progress

log = logging.getLogger("cifarflow")

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
OFFICIAL_SIZE = 170_498_071  # bytes
MEMBER_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
META = "batches.meta"
MIB = 1 << 20

OFFLINE_HINT = (
    "Download {url} on a machine with internet access and place it at {dest} "
    "(MD5 {md5}), then rerun; or run the offline demo instead: "
    "snakemake --cores 4 --configfile config/demo.yaml"
)


def md5_file(path: str | Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path: str | Path, expected: str) -> str:
    """Return the MD5 if it matches; raise a PipelineError that says what to do if not."""
    actual = md5_file(path)
    if actual != expected:
        size = Path(path).stat().st_size
        truncated = (
            f" It is {size:,} bytes; the official archive is {OFFICIAL_SIZE:,}: an interrupted download?"
            if expected == OFFICIAL_MD5 and size != OFFICIAL_SIZE
            else ""
        )
        raise PipelineError(
            f"checksum mismatch for {path}: MD5 is {actual}, expected {expected}.{truncated} "
            f"Delete the file and rerun to download it again (or set dataset.cifar10.md5 if you "
            f"use a different archive on purpose)."
        )
    return actual


def download(url: str, dest: str | Path, md5: str, timeout: float = 30.0) -> int:
    """Download `url` to `dest` once: verified before it appears at `dest`. Returns its size."""
    dest = Path(dest)
    if dest.exists():
        verify_md5(dest, md5)
        log.info("%s is already here and verified; not downloading", dest)
        return dest.stat().st_size
    hint = OFFLINE_HINT.format(url=url, dest=dest, md5=md5)
    log.info("downloading %s -> %s", url, dest)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, atomic_path(dest) as tmp:
            size = int(response.headers.get("Content-Length") or 0)
            with open(tmp, "wb") as out:
                chunks = iter(lambda: response.read(MIB), b"")
                for chunk in progress(
                    chunks, total=math.ceil(size / MIB) or None, desc="download", unit="MiB"
                ):
                    out.write(chunk)
            verify_md5(tmp, md5)
    except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise PipelineError(f"could not download the CIFAR-10 archive ({reason}). {hint}") from err
    return dest.stat().st_size


class RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds the batches' dicts, lists, bytes and numpy arrays; refuses every other global."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"forbidden global {module}.{name}")


def _load_pickle(data: bytes, member: str) -> dict:
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise PipelineError(
            f"{member}: not a CIFAR-10 batch ({err}); the archive is not the official one"
        ) from err
    if not isinstance(obj, dict):
        raise PipelineError(f"{member}: expected a dict, found {type(obj).__name__}")
    return obj


def _read_batch(data: bytes, member: str) -> Split:
    batch = _load_pickle(data, member)
    pixels, labels = batch.get(b"data"), batch.get(b"labels")
    if (
        not isinstance(pixels, np.ndarray)
        or pixels.dtype != np.uint8
        or pixels.ndim != 2
        or pixels.shape[1] != 3072
    ):
        raise PipelineError(f"{member}: b'data' is not a uint8 [N, 3072] array")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(pixels),) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise PipelineError(f"{member}: b'labels' must be {len(pixels)} integers in 0..9")
    # Stored as [N, 3 (RGB planes), 32, 32]; the pipeline works in NHWC.
    images = np.ascontiguousarray(pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return Split(images, labels)


def read_archive(path: str | Path, md5: str = OFFICIAL_MD5) -> RawDataset:
    """Verify the archive's MD5, then read its train and test batches (nothing is extracted to disk)."""
    path = Path(path)
    checksum = verify_md5(path, md5)
    wanted = [*TRAIN_BATCHES, TEST_BATCH, META]
    blobs: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for name in wanted:
                try:
                    member = tar.getmember(f"{MEMBER_DIR}/{name}")
                except KeyError:
                    raise PipelineError(
                        f"{path} has no {MEMBER_DIR}/{name}: not the CIFAR-10 python archive"
                    ) from None
                handle = tar.extractfile(member)
                if handle is None:
                    raise PipelineError(f"{path}: {MEMBER_DIR}/{name} is not a regular file")
                blobs[name] = handle.read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise PipelineError(
            f"{path} is truncated or corrupt ({err}). Delete it and rerun to download it again."
        ) from err

    meta = _load_pickle(blobs[META], META)
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(b"label_names", [])]
    if len(names) != 10:
        raise PipelineError(f"{META}: expected 10 label names, found {len(names)}")
    parts = [_read_batch(blobs[name], name) for name in TRAIN_BATCHES]
    train = Split(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]))
    return RawDataset(train, _read_batch(blobs[TEST_BATCH], TEST_BATCH), names, f"md5:{checksum}")
