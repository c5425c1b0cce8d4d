"""The folder source: PNG and JPEG trees, RGB conversion, resize, and errors that name the file."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cifarflow import folder
from cifarflow.config import dataset_id, prepare_settings, validate_config
from cifarflow.errors import PipelineError
from conftest import ROOT, make_image_tree
from PIL import Image


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_reads_tree_with_sorted_class_names(tmp_path, fmt):
    pixels = make_image_tree(tmp_path, fmt, classes=("frog", "cat", "dog"))
    raw = folder.read_folder(tmp_path)
    assert raw.class_names == ["cat", "dog", "frog"]
    assert raw.train.images.shape == (18, 32, 32, 3) and raw.test.images.shape == (9, 32, 32, 3)
    np.testing.assert_array_equal(raw.train.labels, np.repeat([0, 1, 2], 6))
    # images in class order, then file-name order; pixels exactly as decoded by PIL
    np.testing.assert_array_equal(raw.train.images[6], pixels[tmp_path / "train" / "dog" / f"0000.{fmt}"])
    np.testing.assert_array_equal(raw.test.images[-1], pixels[tmp_path / "test" / "frog" / f"0002.{fmt}"])
    assert raw.source_checksum.startswith("sha256:")


def test_parallel_decoding_matches_serial(tmp_path, monkeypatch):
    make_image_tree(tmp_path, "png", per_class=(40, 4))
    serial = folder.read_folder(tmp_path, threads=1)
    monkeypatch.setattr(folder, "PARALLEL_FROM", 1)
    parallel = folder.read_folder(tmp_path, threads=2)
    np.testing.assert_array_equal(serial.train.images, parallel.train.images)
    assert serial.source_checksum == parallel.source_checksum


def test_checksum_follows_content(tmp_path):
    make_image_tree(tmp_path, "png")
    before = folder.read_folder(tmp_path).source_checksum
    Image.new("RGB", (32, 32), "red").save(tmp_path / "train" / "cat" / "0001.png")
    assert folder.read_folder(tmp_path).source_checksum != before


def test_greyscale_and_palette_images_become_rgb(tmp_path):
    make_image_tree(tmp_path, "png")
    Image.new("L", (32, 32), 77).save(tmp_path / "train" / "cat" / "0000.png")
    Image.new("RGBA", (32, 32), (10, 20, 30, 40)).save(tmp_path / "train" / "cat" / "0001.png")
    raw = folder.read_folder(tmp_path)
    assert (raw.train.images[0] == 77).all()
    assert (raw.train.images[1] == [10, 20, 30]).all()


def test_wrong_size_is_an_error_naming_the_file_unless_resize(tmp_path):
    make_image_tree(tmp_path, "png")
    odd = tmp_path / "test" / "dog" / "0001.png"
    Image.new("RGB", (64, 48), "blue").save(odd)
    with pytest.raises(PipelineError, match=rf"{odd} is 64x48, not 32x32\. Set dataset\.resize: true"):
        folder.read_folder(tmp_path)
    raw = folder.read_folder(tmp_path, resize=True)
    blue = raw.test.images[3 + 1]
    assert blue.shape == (32, 32, 3) and (blue == [0, 0, 255]).all()


def test_corrupt_image_is_named(tmp_path):
    make_image_tree(tmp_path, "jpg")
    bad = tmp_path / "train" / "cat" / "0002.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(PipelineError, match=rf"{bad} cannot be read as an image"):
        folder.read_folder(tmp_path)


def test_class_missing_from_test_is_named(tmp_path):
    make_image_tree(tmp_path, "png")
    for path in (tmp_path / "test" / "dog").iterdir():
        path.unlink()
    (tmp_path / "test" / "dog").rmdir()
    with pytest.raises(PipelineError, match=r"same classes \(missing from test: dog\)"):
        folder.read_folder(tmp_path)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda root: (root / "train" / "cat" / "notes.txt").write_text("x"),
            r"notes\.txt is not a PNG or JPEG",
        ),
        (lambda root: (root / "train" / "empty").mkdir(), r"train/empty holds no images"),
        (lambda root: __import__("shutil").rmtree(root / "test"), r"test does not exist: .*train/<class>"),
    ],
)
def test_layout_errors(tmp_path, mutate, message):
    make_image_tree(tmp_path, "png")
    mutate(tmp_path)
    with pytest.raises(PipelineError, match=message):
        folder.read_folder(tmp_path)


def test_hidden_files_are_ignored(tmp_path):
    make_image_tree(tmp_path, "png")
    (tmp_path / "train" / "cat" / ".DS_Store").write_bytes(b"\0\1")
    assert len(folder.read_folder(tmp_path).train.labels) == 18


def _big_png(path, size) -> None:
    """A PNG of `size` pixels in one colour: a few KB on disk, however large the image."""
    Image.new("1", size, 1).save(path)


def test_an_image_over_the_pixel_limit_is_an_error_naming_the_file_and_the_setting(tmp_path):
    """5000x5000 = 25 Mpixel: over the 16.7 Mpixel default, and under twice it (which Pillow's own
    guard would only have warned about, then decoded)."""
    make_image_tree(tmp_path, "png")
    big = tmp_path / "train" / "dog" / "0003.png"
    _big_png(big, (5000, 5000))
    with pytest.raises(
        PipelineError,
        match=rf"{big} is 5000x5000 = 25,000,000 pixels, over the limit of 16,777,216 pixels "
        r"\(dataset\.max_image_pixels\)",
    ):
        folder.read_folder(tmp_path, resize=True)
    raw = folder.read_folder(tmp_path, resize=True, max_pixels=25_000_000)
    assert (raw.train.images[6 + 3] == 255).all()  # decoded under a raised limit, resized to white


def test_an_image_over_pillows_own_limit_is_named_too(tmp_path):
    """Over twice Pillow's threshold, Image.open itself refuses (DecompressionBombError): still an
    error that names the file, not a traceback, also from the worker processes."""
    make_image_tree(tmp_path, "png")
    big = tmp_path / "test" / "cat" / "0000.png"
    _big_png(big, (20000, 10000))  # 200 Mpixel
    with pytest.raises(PipelineError, match=rf"{big} is over the limit of 16,777,216 pixels"):
        folder.read_folder(tmp_path, resize=True)


def test_the_limit_comes_from_the_config_and_is_no_part_of_the_dataset_id(tmp_path):
    """dataset.max_image_pixels through prepare_dataset (the rule's script): exit 1 with the file and
    the setting named, nothing written; the dataset id does not depend on the limit."""
    make_image_tree(tmp_path / "images", "png")
    wide = tmp_path / "images" / "test" / "frog" / "0001.png"
    _big_png(wide, (64, 48))
    config = validate_config(
        {"dataset": {"source": "folder", "path": str(tmp_path / "images"), "max_image_pixels": 3000}},
        ROOT / "config" / "schema.yaml",
    )
    raised = copy.deepcopy(config)
    raised["dataset"]["max_image_pixels"] = 3072
    assert dataset_id(config["dataset"]) == dataset_id(raised["dataset"])

    def prepare(dataset: dict, out: Path) -> subprocess.CompletedProcess:
        cmd = [sys.executable, str(ROOT / "scripts" / "prepare_dataset.py"), "--settings"]
        cmd += [json.dumps(prepare_settings(dataset)), "--dataset-id", "x", "--outdir", str(out)]
        return subprocess.run(cmd, capture_output=True, text=True)

    run = prepare(config["dataset"], tmp_path / "out")
    assert run.returncode == 1, run.stderr
    assert f"{wide} is 64x48 = 3,072 pixels, over the limit of 3,000 pixels (dataset.max_image_pixels)" in (
        run.stderr
    )
    assert "Traceback" not in run.stderr and not (tmp_path / "out").exists()
    raised["dataset"]["resize"] = True
    assert prepare(raised["dataset"], tmp_path / "out").returncode == 0
