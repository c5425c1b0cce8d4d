"""The data stage through the real snakemake CLI: every source, reruns, failures, lint."""

import errno
import json
import socket
from pathlib import Path

import numpy as np
import pytest
from cifar_archive import make_archive
from conftest import make_image_tree, nothing_to_do, snakemake, write_yaml
from test_cifar10 import http_server  # noqa: F401  (fixture)

pytestmark = pytest.mark.workflow
DATA = ("--until", "prepare_dataset")  # the data stage only: tiny test datasets can't feed a training recipe


def prepared(workdir: Path) -> dict[str, dict]:
    """dataset id -> meta.json of every prepared dataset in the workdir."""
    metas = sorted((workdir / "results" / "data").glob("*/meta.json"))
    return {m.parent.name: json.loads(m.read_text()) for m in metas}


def data_files(workdir: Path) -> list[Path]:
    return sorted(p for p in (workdir / "results" / "data").rglob("*") if p.is_file())


def test_demo_prepares_synthetic_data_and_a_rerun_does_nothing(workflow):
    snakemake(workflow, "--configfile", "config/demo.yaml", *DATA)
    ((dataset_id, meta),) = prepared(workflow).items()
    assert dataset_id.startswith("synthetic-") and meta["dataset_id"] == dataset_id
    assert meta["sizes"] == {"train": 4500, "val": 500, "test": 1000}
    metrics = json.loads((workflow / "results" / "data" / dataset_id / "metrics.json").read_text())
    assert metrics["train_images"] == 4500 and metrics["images_per_second"] > 0
    assert (
        "read 5000 train + 1000 test images"
        in (workflow / "logs" / "prepare_dataset" / f"{dataset_id}.log").read_text()
    )
    benchmark = (workflow / "benchmarks" / "prepare_dataset" / f"{dataset_id}.tsv").read_text()
    assert (
        benchmark.splitlines()[0].startswith("s\th:m:s\tmax_rss") and "params" in benchmark
    )  # benchmark-extended

    assert nothing_to_do(snakemake(workflow, "--configfile", "config/demo.yaml", *DATA))


def test_same_settings_same_bytes_new_split_settings_new_id(workflow, tmp_path):
    snakemake(workflow, "--configfile", "config/demo.yaml", *DATA)
    first = prepared(workflow)
    other = tmp_path / "other"
    other.mkdir()
    for part in ("Snakefile", "config", "rules", "scripts", "profiles", "envs", "report"):
        (other / part).symlink_to(workflow / part)
    snakemake(other, "--configfile", "config/demo.yaml", *DATA)
    assert prepared(other) == first  # every array's sha256 included

    write_yaml(workflow / "val.yaml", "dataset:\n  val_fraction: 0.2\n")
    snakemake(workflow, "--configfile", "config/demo.yaml", "val.yaml", *DATA)
    ids = prepared(workflow)
    assert len(ids) == 2 and {m["sizes"]["val"] for m in ids.values()} == {500, 1000}


def test_cifar10_archive_placed_by_hand(workflow, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    md5, train_x, train_y, test_x, test_y = make_archive(cache / "cifar-10-python.tar.gz", per_batch=40)
    write_yaml(
        workflow / "c.yaml", f"dataset:\n  source: cifar10\n  path: {cache}\n  cifar10:\n    md5: {md5}\n"
    )
    snakemake(workflow, "--configfile", "c.yaml", *DATA)
    assert not (workflow / "logs" / "download_cifar10").exists()  # used as placed, not downloaded
    ((dataset_id, meta),) = prepared(workflow).items()
    assert meta["source_checksum"] == f"md5:{md5}" and meta["sizes"] == {"train": 180, "val": 20, "test": 40}
    test_images = np.load(workflow / "results" / "data" / dataset_id / "test_images.npy")
    np.testing.assert_array_equal(test_images, test_x)
    train_images = np.load(workflow / "results" / "data" / dataset_id / "train_images.npy")
    assert {bytes(x) for x in train_images} <= {bytes(x) for x in train_x}
    assert (cache / "cifar-10-python.tar.gz").exists()


def test_cifar10_download_through_the_workflow_happens_once(workflow, tmp_path, http_server):  # noqa: F811
    base, www, requests = http_server
    md5, *_ = make_archive(www / "cifar-10-python.tar.gz", per_batch=20)
    config = (
        f"dataset:\n  source: cifar10\n  path: cache\n"
        f"  cifar10:\n    url: {base}/cifar-10-python.tar.gz\n    md5: {md5}\n"
    )
    write_yaml(workflow / "c.yaml", config)
    snakemake(workflow, "--configfile", "c.yaml", *DATA)
    assert requests == ["/cifar-10-python.tar.gz"]
    assert (workflow / "cache" / "cifar-10-python.tar.gz").exists() and len(prepared(workflow)) == 1
    snakemake(workflow, "--configfile", "c.yaml", "--forcerun", "prepare_dataset", *DATA)
    assert requests == ["/cifar-10-python.tar.gz"]  # the cached archive was reused


def test_cifar10_without_network_explains_what_to_do(workflow):
    # The default config, but the archive's URL on a loopback port that refuses connections (bound,
    # never listening, so no other process can take it meanwhile): never the real 170 MB download.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/cifar-10-python.tar.gz"
        write_yaml(workflow / "offline.yaml", f"dataset:\n  cifar10:\n    url: {url}\n")
        run = snakemake(workflow, "--configfile", "offline.yaml", check=False)
    assert run.returncode != 0
    assert (
        f"could not download the CIFAR-10 archive ([Errno {errno.ECONNREFUSED}] Connection refused)"
        in run.stderr
    )
    assert f"Download {url} on a machine with internet access" in run.stderr
    assert "place it at resources/cifar10/cifar-10-python.tar.gz" in run.stderr
    assert "config/demo.yaml" in run.stderr
    assert not (workflow / "resources" / "cifar10" / "cifar-10-python.tar.gz").exists()


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_folder_source(workflow, tmp_path, fmt):
    make_image_tree(tmp_path / "imgs", fmt, per_class=(10, 4))
    write_yaml(workflow / "f.yaml", f"dataset:\n  source: folder\n  path: {tmp_path / 'imgs'}\n")
    snakemake(workflow, "--configfile", "f.yaml", *DATA)
    ((dataset_id, meta),) = prepared(workflow).items()
    assert dataset_id.startswith("folder-") and meta["class_names"] == ["cat", "dog", "frog"]
    assert meta["sizes"] == {"train": 27, "val": 3, "test": 12}


@pytest.mark.parametrize("problem", ["corrupt image", "class missing from test", "checksum mismatch"])
def test_failures_name_the_cause_and_leave_no_output(workflow, tmp_path, problem):
    make_image_tree(tmp_path / "imgs", "png")
    config = f"dataset:\n  source: folder\n  path: {tmp_path / 'imgs'}\n"
    if problem == "corrupt image":
        (tmp_path / "imgs" / "test" / "cat" / "0001.png").write_bytes(b"not a png")
        expected = "test/cat/0001.png cannot be read as an image"
    elif problem == "class missing from test":
        for path in (tmp_path / "imgs" / "test" / "frog").iterdir():
            path.unlink()
        (tmp_path / "imgs" / "test" / "frog").rmdir()
        expected = "missing from test: frog"
    else:
        make_archive(tmp_path / "cifar-10-python.tar.gz")
        config = f"dataset:\n  source: cifar10\n  path: {tmp_path}\n"
        expected = "checksum mismatch"
    write_yaml(workflow / "bad.yaml", config)
    run = snakemake(workflow, "--configfile", "bad.yaml", check=False)
    assert run.returncode != 0 and expected in run.stderr
    assert data_files(workflow) == []


def test_unknown_config_key_fails_before_anything_runs(workflow):
    write_yaml(workflow / "typo.yaml", "dataset:\n  source: synthetic\n  val_fractoin: 0.2\n")
    run = snakemake(workflow, "--configfile", "typo.yaml", check=False)
    assert run.returncode != 0
    assert "unknown config key 'dataset.val_fractoin'" in run.stderr
    assert not (workflow / "results").exists() and not (workflow / "logs").exists()


def test_lint_is_clean(workflow):
    run = snakemake(workflow, "--lint")  # exits 0 even with findings: read what it says
    output = run.stdout + run.stderr
    assert "Lints for" not in output and "your workflow is in a good condition" in output, output
