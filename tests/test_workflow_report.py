"""snakemake --report after a demo run with two experiments: the HTML report opened in headless
Chromium shows every category with every item loaded and no script error; the zip report holds the
same items; every figure is a real PNG; re-plotting never retrains."""

import json
import time
import zipfile
from pathlib import Path

import pytest
from conftest import copy_workflow, jobs_run, nothing_to_do, require_system_part, snakemake, write_yaml
from PIL import Image
from report_browser import walk_report

pytestmark = pytest.mark.workflow
EXPERIMENTS = ("default", "short")
# The process engine runs the serving code without a container engine, like any CI machine can;
# the 2-epoch model is let through the gate so that both experiments get registered.
TWO = """\
experiments:
  default: {}
  short:
    epochs: 2
    seed: 1
serving:
  engine: process
evaluate:
  min_accuracy: 0.5
  latency_requests: 50
"""
ARGS = ("--configfile", "config/demo.yaml", "two.yaml")
REPORT_RULES = {
    "plot_dataset", "plot_training", "tabulate_export", "tabulate_manifest", "plot_evaluation",
    "compare_experiments", "all",
}  # fmt: skip


def expected_items() -> set[tuple[str, str, str, str]]:
    """(category, experiment label, figure label, file name) of every report item."""
    items = {
        ("Data", "all", "sample images", "samples.png"),
        ("Data", "all", "class counts", "class_counts.html"),
        ("Data", "all", "closest cross-split pairs", "closest_pairs.png"),
        ("Data", "all", "class balance per split", "class_balance.png"),
        ("Comparison", "all", "table", "comparison.html"),
        ("Comparison", "all", "bar chart", "comparison.png"),
        ("Comparison", "all", "recipes", "recipes.html"),
    }
    per_experiment = [
        ("Training", "loss and accuracy", "curves.png"),
        ("Training", "history", "history.html"),
        ("Export", "parity and speed", "export.html"),
        ("Serving", "image manifest", "manifest.html"),
        ("Serving", "latency histogram", "latency_histogram.png"),
        ("Evaluation", "confusion matrix", "confusion_matrix.png"),
        ("Evaluation", "per-class precision and recall", "per_class.html"),
        ("Evaluation", "most confidently wrong", "confidently_wrong.png"),
    ]
    items |= {(c, e, f, n) for e in EXPERIMENTS for c, f, n in per_experiment}
    return items


@pytest.fixture(scope="module")
def reported(tmp_path_factory) -> Path:
    """The demo DAG with two experiments, then both reports (shared by the tests below)."""
    workdir = copy_workflow(tmp_path_factory.mktemp("report") / "wf")
    write_yaml(workdir / "two.yaml", TWO)
    start = time.perf_counter()
    run = snakemake(workdir, *ARGS)
    print(f"demo DAG, two experiments: {time.perf_counter() - start:.1f} s")
    assert jobs_run(run)["train_model"] == 2 and jobs_run(run)["compare_experiments"] == 1
    start = time.perf_counter()
    snakemake(workdir, *ARGS, "--report", "report.html")
    snakemake(workdir, *ARGS, "--report", "report.zip")
    print(f"both reports: {time.perf_counter() - start:.1f} s")
    return workdir


def test_html_report_renders_every_category_and_item_in_headless_chromium(reported, tmp_path_factory):
    require_system_part("chromium")  # make test installs it as root; skips (fails in CI) without
    shots = tmp_path_factory.mktemp("report-screenshots")
    walk = walk_report(reported / "report.html", shots)
    print(f"report screenshots: {shots}")

    assert walk.errors == []
    assert walk.description_top >= 0, "the workflow description is clipped: keep report/workflow.rst short"
    for text in ("Headline results", "default", "short", "Configuration", "synthetic", "epochs=2, seed=1"):
        assert text in walk.description, text
    assert "default (champion)" in walk.description and "holds the champion alias" in walk.description

    expected = expected_items()
    assert sorted(walk.categories) == sorted({category for category, *_ in expected})
    shown = {(i.category, i.labels.get("experiment"), i.labels.get("figure"), i.filename) for i in walk.items}
    assert shown == expected
    assert len(walk.items) == len(expected)  # each shown once: labels tell the items apart
    not_loaded = [i for i in walk.items if not i.loaded]
    assert not_loaded == []
    assert all((shots / f"{c.lower()}.png").stat().st_size > 10_000 for c in walk.categories)


def test_zip_report_holds_the_report_and_every_item(reported):
    with zipfile.ZipFile(reported / "report.zip") as archive:
        assert archive.testzip() is None
        names = archive.namelist()
    assert any(name.endswith("report.html") for name in names)
    files = {Path(name).name for name in names}
    assert {filename for *_, filename in expected_items()} <= files


def test_every_figure_is_a_valid_png_of_real_size(reported):
    figures = sorted((reported / "results").glob("report/**/*.png"))
    figures += sorted((reported / "results" / "evaluate").glob("*/*.png"))
    figures += sorted((reported / "results" / "audit").glob("*/*.png"))
    names = [p.name for p in figures]
    assert len(figures) == sum(1 for *_, name in expected_items() if name.endswith(".png")), names
    for path in figures:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) >= 150, (path, image.size)
        assert path.stat().st_size > 10_000, path


def test_comparison_and_headline_figures_match_the_metrics(reported):
    summary = (reported / "results/report/compare/summary.rst").read_text()
    for name in EXPERIMENTS:
        train = json.loads((reported / f"results/train/{name}/metrics.json").read_text())
        assert f"``{name}``" in summary and f"{train['test_accuracy'] * 100:.2f}%" in summary
    metrics = json.loads((reported / "results/report/compare/metrics.json").read_text())
    assert metrics["experiments"] == 2 and 0 < metrics["test_accuracy_mean"] <= 1


def test_clean_test_accuracy_in_metrics_registry_and_report(reported):
    """Accuracy on the test images without a train/val near-duplicate (the audit's pairs), next to
    the full figure: evaluation's metrics.json, the registered version's tag, the headline."""
    from mlflow import MlflowClient

    summary = (reported / "results/report/compare/summary.rst").read_text()
    assert "clean test accuracy" in summary
    client = MlflowClient(f"sqlite:///{reported / 'mlflow.db'}")
    for name in EXPERIMENTS:
        figures = json.loads((reported / f"results/evaluate/{name}/metrics.json").read_text())
        assert figures["clean_images"] + figures["leaked_images"] == figures["images"]
        assert 0 < figures["clean_accuracy"] <= 1 and f"{figures['clean_accuracy'] * 100:.2f}%" in summary
        registration = json.loads((reported / f"results/register/{name}/registration.json").read_text())
        version = client.get_model_version(registration["name"], registration["version"])
        assert version.tags["clean_accuracy"] == f"{figures['clean_accuracy']:.6f}"


def test_replotting_never_retrains(reported):
    run = snakemake(reported, *ARGS, "--forcerun", "plot_training", "plot_evaluation")
    ran = jobs_run(run)
    assert ran["plot_training"] == 2 and set(ran) <= REPORT_RULES, ran  # no training, no evaluation
    assert nothing_to_do(snakemake(reported, *ARGS))  # and then nothing is left to do
