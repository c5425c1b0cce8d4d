"""Writing the prepared dataset: stratified split, exact stats, checksums, all-or-nothing output."""

import hashlib
import json

import numpy as np
import pytest
from cifarflow import dataset, synthetic
from cifarflow.dataset import channel_stats, stratified_split, write_dataset
from cifarflow.errors import PipelineError

SETTINGS = {"source": "synthetic", "val_fraction": 0.2, "seed": 0}


def test_stratified_split_is_per_class_and_seeded():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    train, val = stratified_split(labels, 0.1, seed=0)
    assert np.bincount(labels[val]).tolist() == [1, 2, 3, 4]
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(labels)
    assert np.array_equal(val, stratified_split(labels, 0.1, seed=0)[1])
    assert not np.array_equal(val, stratified_split(labels, 0.1, seed=1)[1])
    assert len(stratified_split(labels, 0.0, seed=0)[1]) == 0


def test_channel_stats_match_numpy():
    images = np.random.default_rng(0).integers(0, 256, size=(50, 32, 32, 3), dtype=np.uint8)
    mean, std = channel_stats(images)
    as_float = images.astype(np.float64) / 255
    np.testing.assert_allclose(mean, as_float.mean(axis=(0, 1, 2)), atol=1e-6)
    np.testing.assert_allclose(std, as_float.std(axis=(0, 1, 2)), atol=1e-6)


def test_written_dataset_round_trips_with_checksums(tmp_path):
    raw = synthetic.generate(10, 3)
    meta = write_dataset(raw, tmp_path / "ds", dataset_id="synthetic-x", settings=SETTINGS)
    assert meta == json.loads((tmp_path / "ds" / "meta.json").read_text())
    assert meta["sizes"] == {"train": 80, "val": 20, "test": 30}
    assert meta["counts"]["val"] == {name: 2 for name in raw.class_names}
    for split in dataset.SPLITS:
        loaded = dataset.load_split(tmp_path / "ds", split)
        assert isinstance(loaded.images, np.memmap) and loaded.labels.dtype == np.int64
        files = meta["files"][split]
        digest = hashlib.sha256((tmp_path / "ds" / files["images"]).read_bytes()).hexdigest()
        assert digest == files["images_sha256"]
    assert meta["mean"] == channel_stats(np.asarray(dataset.load_split(tmp_path / "ds", "train").images))[0]


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    raw = synthetic.generate(10, 3)
    calls = []

    def failing_save(path, array):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        with open(path, "wb") as fh:
            np.lib.format.write_array(fh, array)

    monkeypatch.setattr(dataset.np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_dataset(raw, tmp_path / "ds", dataset_id="x", settings=SETTINGS)
    assert list(tmp_path.iterdir()) == []


def test_load_split_refuses_foreign_arrays(tmp_path):
    np.save(tmp_path / "train_images.npy", np.zeros((2, 28, 28), dtype=np.uint8))
    np.save(tmp_path / "train_labels.npy", np.zeros(2, dtype=np.int64))
    with pytest.raises(PipelineError, match="not a prepared split"):
        dataset.load_split(tmp_path, "train")
