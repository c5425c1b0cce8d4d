"""The two carves of the real CIFAR-10 training JPEGs (50,000 images, 5,000 per class) that the
training benchmarks use. Accuracy and time are measured on different carves, honestly:

- accuracy: 40,000 train / 5,000 val / 5,000 test. train/ holds the first 4,500 images of each
  class (a stratified ninth of them is held out as val by prepare_dataset), test/ the last 500.
  The test images are never trained on and never used for a choice; choices are made on val.
- timing: 45,000 train / 5,000 val, as users train on CIFAR-10 (all 50,000, a tenth held out),
  plus a 10,000-image test split (the last 1,000 of each class, copied) so that the run evaluates
  as many test images as CIFAR-10's own test split has. Its accuracies mean nothing.

Each carve is prepared once (prepare_dataset, the folder source) and cached.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "bench")]

from prepare_speed import ARCHIVE_ENV, folder_settings, jpeg_archive, run_prepare  # noqa: E402

# The real CIFAR-10 training JPEGs (not in the repository): --archive, or this variable's path.
ARCHIVE = Path(os.environ[ARCHIVE_ENV]) if os.environ.get(ARCHIVE_ENV) else None
# carve -> (train images per class, test images per class taken from the end, val fraction, copy)
CARVES = {
    "accuracy": (4500, 500, 1 / 9, False),
    "timing": (5000, 1000, 0.1, True),
}


def unpacked_train(archive: Path, every: Path) -> Path:
    """The archive's train/ folder (train/<class>/<n>.jpg), unpacked into `every` once."""
    if not every.exists():
        with tarfile.open(archive) as tar:
            tar.extractall(every, filter="data")
    return next(p for p in every.rglob("train") if p.is_dir())


def _carve_folder(archive: Path, root: Path, carve: str) -> None:
    train_n, test_n, _, overlap = CARVES[carve]
    source = unpacked_train(archive, root.parent / "all")
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        files = sorted(class_dir.iterdir())
        if len(files) != 5000:
            raise SystemExit(f"{class_dir} holds {len(files)} images, expected CIFAR-10's 5,000 per class")
        train, test = files[:train_n], files[-test_n:]
        if not overlap:
            assert not set(train) & set(test)
        for split, chunk in (("train", train), ("test", test)):
            target = root / split / class_dir.name
            target.mkdir(parents=True, exist_ok=True)
            for path in chunk:
                shutil.copyfile(path, target / path.name)


def prepare_carve(carve: str, cache: Path, archive: Path | None = ARCHIVE, threads: int = 2) -> Path:
    """results of prepare_dataset for `carve` under cache/<carve>/data (made once)."""
    data = cache / carve / "data"
    if not (data / "meta.json").exists():
        archive = jpeg_archive(archive, "--archive")  # exits naming what is missing
        jpeg = cache / carve / "jpeg"
        shutil.rmtree(jpeg, ignore_errors=True)
        _carve_folder(archive, jpeg, carve)
        settings = folder_settings(jpeg) | {"val_fraction": CARVES[carve][2]}
        run_prepare(settings, data, None, threads=threads)
    return data


def cpu_name() -> str:
    """The CPU as the docs name it: model, cores, and the bf16 instructions training could use."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    model = next(
        (ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?"
    )
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    bf16 = "avx512_bf16" if "avx512_bf16" in flags else "no avx512_bf16"
    amx = "AMX" if "amx_bf16" in flags else "no AMX"
    return f"{model}, {os.cpu_count()} cores, {bf16}, {amx}"
