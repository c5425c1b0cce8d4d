"""audit_dataset through the real snakemake CLI: it runs in the default DAG beside training, the
leakage gate stops a leaky dataset before any training with the figures and no output, the default
only warns, and the MLflow hook logs the audit's figures."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import jobs_run, snakemake, write_yaml
from mlflow import MlflowClient
from PIL import Image
from planted_pairs import planted_dataset
from test_mlflow_hook import runs_of, sqlite_uri

pytestmark = pytest.mark.workflow
CLASSES = [f"class{c}" for c in range(10)]


def leaky_folder(root: Path) -> int:
    """A folder dataset (train/<class>/*.png, test/<class>/*.png) of generated scenes in which
    test images have planted copies, 1-pixel crops and colour-balance changes in train (kinds the
    default audit.max_distance finds whole: tests/test_audit.py); returns how many test images
    have such a partner."""
    planted = planted_dataset(
        kinds=("exact", "shift1", "colour_gain"),
        pairs_per_kind=8,
        lookalike_pairs=8,
        background=(60, 0, 200),
        seed=4,
    )
    # prepare_dataset carves val out of train itself: the generator's val joins train
    splits = {
        "train": (
            np.concatenate([planted.images["train"], planted.images["val"]]),
            np.concatenate([planted.labels["train"], planted.labels["val"]]),
        ),
        "test": (planted.images["test"], planted.labels["test"]),
    }
    for split, (images, labels) in splits.items():
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = root / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:04d}.png")
    return len(
        {
            (a if a[0] == "test" else b)[1]
            for pairs in planted.pairs.values()
            for a, b in pairs
            if (a[0] == "test") != (b[0] == "test")
        }
    )


def dry_run_inputs(workdir: Path, *args: str) -> str:
    """The `input:` line of train_model in a dry run."""
    run = snakemake(workdir, "-n", *args)
    block = run.stdout.split("rule train_model:")[1]
    return next(line for line in block.splitlines() if line.strip().startswith("input:"))


def test_demo_runs_the_audit_beside_training_unless_the_gate_is_set(workflow):
    run = snakemake(workflow, "-n", "--configfile", "config/demo.yaml")
    assert jobs_run(run).get("audit_dataset") == 1
    assert "results/audit/" not in dry_run_inputs(workflow, "--configfile", "config/demo.yaml")
    write_yaml(workflow / "gate.yaml", "audit:\n  max_test_leakage: 0.05\n")
    gated = dry_run_inputs(workflow, "--configfile", "config/demo.yaml", "gate.yaml")
    assert "results/audit/" in gated and "/metrics.json" in gated


def test_gate_stops_before_training_with_the_figures_and_no_output_default_only_warns(workflow, tmp_path):
    leaked = leaky_folder(tmp_path / "images")
    folder = f"dataset:\n  source: folder\n  path: {tmp_path / 'images'}\n"
    write_yaml(workflow / "gate.yaml", folder + "audit:\n  max_test_leakage: 0.01\n")
    run = snakemake(workflow, "--configfile", "gate.yaml", check=False)  # the default target: the whole DAG
    assert run.returncode != 0
    (log,) = (workflow / "logs" / "audit_dataset").glob("*.log")
    dataset = log.stem
    message = log.read_text()
    assert "above audit.max_test_leakage 1.00%" in message and "the run stops before training" in message
    grid = workflow / "logs" / "audit_dataset" / f"{dataset}.closest_pairs.png"
    assert f"The closest pairs: logs/audit_dataset/{dataset}.closest_pairs.png" in message
    assert "audit_dataset" in run.stderr and "above audit.max_test_leakage" in run.stderr
    with Image.open(grid) as image:
        assert image.format == "PNG" and min(image.size) > 150
    assert not (workflow / "results" / "audit").exists() or not any(
        (workflow / "results" / "audit").rglob("*.*")
    )
    assert not (workflow / "logs" / "train_model").exists()  # no training time was spent
    assert not (workflow / "results" / "train").exists()

    # the default (no gate) only warns, and the hook logs the figures
    write_yaml(workflow / "warn.yaml", folder)
    target = f"results/audit/{dataset}/metrics.json"
    run = snakemake(workflow, target, "--configfile", "warn.yaml")
    assert jobs_run(run) == {"audit_dataset": 1}
    assert any("WARNING" in line and "test leakage" in line for line in log.read_text().splitlines())
    metrics = json.loads((workflow / target).read_text())
    meta = json.loads((workflow / "results" / "data" / dataset / "meta.json").read_text())
    assert metrics["test_with_train_duplicate_count"] >= leaked
    assert metrics["test_with_train_duplicate_fraction"] == pytest.approx(
        metrics["test_with_train_duplicate_count"] / meta["sizes"]["test"]
    )
    assert metrics["exact_duplicate_pairs"] >= 8 and metrics["anomalies"] == 0
    for name in ("duplicates.parquet", "anomalies.parquet", "closest_pairs.png", "class_balance.png"):
        assert (workflow / "results" / "audit" / dataset / name).stat().st_size > 0

    runs = runs_of(sqlite_uri(workflow))
    named = f"audit_dataset/dataset={dataset}"
    failed, passed = (r for r in runs.children if r.info.run_name == named)  # oldest first
    assert failed.info.status == "FAILED" and passed.info.status == "FINISHED"
    child = passed
    for key in (
        "test_with_train_duplicate_fraction",
        "train_internal_duplicate_pairs",
        "exact_duplicate_pairs",
    ):
        assert child.data.metrics[key] == pytest.approx(metrics[key])
    client = MlflowClient(sqlite_uri(workflow))
    assert {a.path for a in client.list_artifacts(child.info.run_id, f"results/audit/{dataset}")} >= {
        f"results/audit/{dataset}/metrics.json",
        f"results/audit/{dataset}/closest_pairs.png",
    }
