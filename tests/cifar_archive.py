"""Builds archives in the genuine format of cifar-10-python.tar.gz, for tests and benchmarks.

The official batches were pickled by Python 2 with numpy: protocol 2, `str` as BINSTRING opcodes
(bytes under `encoding="bytes"`), arrays rebuilt through numpy.core.multiarray._reconstruct. This
pickler writes exactly those opcodes, so the reader is tested on what it will really meet.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
import tarfile
import time
from pathlib import Path

import numpy as np

LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class Py2Pickler(pickle._Pickler):
    """Pickles bytes and str the way Python 2 pickled its `str`, and numpy under its 1.x names."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def py2_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def make_batch(rng: np.random.Generator, n: int, label: str) -> tuple[dict, np.ndarray, np.ndarray]:
    """A batch dict like the official one; returns (batch, images NHWC, labels)."""
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    # Make each class a little different so that stats differ per class, like real data.
    images[..., 0] = np.clip(images[..., 0] // 2 + labels[:, None, None] * 12, 0, 255).astype(np.uint8)
    batch = {
        b"batch_label": label.encode(),
        b"labels": [int(x) for x in labels],
        b"data": np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(n, 3072)),
        b"filenames": [f"img_{label.replace(' ', '_')}_{i}.png".encode() for i in range(n)],
    }
    return batch, images, labels


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
    info.size, info.mtime = len(data), int(time.time())
    tar.addfile(info, io.BytesIO(data))


def make_archive(
    path: str | Path, per_batch: int = 50, seed: int = 0, members: dict[str, bytes] | None = None
):
    """Write a genuine-format archive; returns (md5, train images, train labels, test images, test labels).

    `members` replaces or adds raw member contents (to build malicious or broken archives).
    """
    rng = np.random.default_rng(seed)
    blobs, train_x, train_y = {}, [], []
    for i in range(1, 6):
        batch, x, y = make_batch(rng, per_batch, f"training batch {i} of 5")
        blobs[f"data_batch_{i}"] = py2_pickle(batch)
        train_x.append(x)
        train_y.append(y)
    test, test_x, test_y = make_batch(rng, per_batch, "testing batch 1 of 1")
    blobs["test_batch"] = py2_pickle(test)
    blobs["batches.meta"] = py2_pickle(
        {
            b"num_cases_per_batch": per_batch,
            b"label_names": [n.encode() for n in LABEL_NAMES],
            b"num_vis": 3072,
        }
    )
    blobs["readme.html"] = b"<html>CIFAR-10 test fixture</html>"
    blobs.update(members or {})
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, data in blobs.items():
            _add(tar, name, data)
    md5 = hashlib.md5(Path(path).read_bytes(), usedforsecurity=False).hexdigest()
    return md5, np.concatenate(train_x), np.concatenate(train_y), test_x, test_y
