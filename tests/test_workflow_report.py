"""snakemake --report after a demo run with two experiments: the HTML report opened in headless
Chromium shows every category with every item loaded and no script error; the zip report holds the
same items; every figure is a real PNG; re-plotting never retrains; the two experiments train in
parallel. With export.quantize int8, the int8 model is a target and a versioned job, and not among
the model card's jobs (a dry run)."""

import json
import re
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
from conftest import copy_workflow, jobs_run, nothing_to_do, require_system_part, snakemake, write_yaml
from PIL import Image
from report_browser import walk_report
from test_mlflow_hook import runs_of, sqlite_uri

pytestmark = pytest.mark.workflow
EXPERIMENTS = ("default", "short")
# The process engine runs the serving code without a container engine, like any CI machine can;
# the 2-epoch model is let through the gate so that both experiments get registered. The graphs are
# temperature-scaled: what is served, checked equal to offline and carded is the calibrated model.
TWO = """\
experiments:
  default: {}
  short:
    epochs: 2
    seed: 1
serving:
  engine: process
export:
  calibrate: temperature
evaluate:
  min_accuracy: 0.5
  latency_requests: 50
"""
ARGS = ("--configfile", "config/demo.yaml", "two.yaml")
REPORT_RULES = {
    "plot_dataset", "plot_training", "tabulate_export", "tabulate_manifest", "plot_evaluation",
    "plot_robustness", "tabulate_versions", "compare_experiments", "all",
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
        ("Software versions", "all", "every job", "software_versions.html"),
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
        ("Evaluation", "reliability diagram", "reliability.png"),
        ("Evaluation", "suspected label errors", "label_issues.png"),
        ("Robustness", "accuracy table", "corruption_accuracy.html"),
        ("Robustness", "heat map", "corruption_heatmap.png"),
        ("Model card", "model card", "model_card.html"),
    ]
    items |= {(c, e, f, n) for e in EXPERIMENTS for c, f, n in per_experiment}
    return items


@pytest.fixture(scope="module")
def two_experiments(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The demo DAG with two experiments: its workdir and snakemake's output. Cores enough for every
    job that the prepared dataset makes ready (audit, both trainings, plot_dataset) to start at once,
    so that the two trainings run in parallel."""
    workdir = copy_workflow(tmp_path_factory.mktemp("report") / "wf")
    write_yaml(workdir / "two.yaml", TWO)
    start = time.perf_counter()
    run = snakemake(workdir, *ARGS, "--cores", "8", timeout=1500)  # about 30 jobs; CI takes its time
    print(f"demo DAG, two experiments: {time.perf_counter() - start:.1f} s")
    return workdir, run


def test_two_experiments_train_in_parallel(two_experiments):
    workdir, run = two_experiments
    assert jobs_run(run)["train_model"] == 2 and jobs_run(run)["export_onnx"] == 2
    spans = []
    for name in EXPERIMENTS:
        export = json.loads((workdir / f"results/export/{name}/metrics.json").read_text())
        assert export["argmax_agreement"] >= 0.9995
        lines = (workdir / f"logs/train_model/{name}.log").read_text().splitlines()
        spans.append((lines[0][:8], lines[-1][:8]))  # HH:MM:SS of the first and last line
    (a_start, a_end), (b_start, b_end) = spans
    assert a_start <= b_end and b_start <= a_end, spans  # the two trainings overlapped in time
    histories = [json.loads((workdir / f"results/train/{n}/metrics.json").read_text()) for n in EXPERIMENTS]
    assert [len(h["history"]) for h in histories] == [4, 2]
    assert "database is locked" not in run.stdout + run.stderr
    children = runs_of(sqlite_uri(workdir)).names()
    assert {"train_model/experiment=default", "train_model/experiment=short"} <= set(children)


@pytest.fixture(scope="module")
def reported(two_experiments) -> Path:
    """The demo DAG with two experiments, then both reports (shared by the tests below)."""
    workdir, run = two_experiments
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
    # the headline table fits beside the workflow graph instead of running under its labels
    assert sorted(walk.headline_overlap) == [1280, 1400]
    assert all(overlap <= 0 for overlap in walk.headline_overlap.values()), walk.headline_overlap

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


def test_the_model_card_shows_the_runs_own_figures_and_is_in_the_registry(reported):
    import mlflow
    from cifarflow import model_card as mc

    for name in EXPERIMENTS:
        card = (reported / f"results/register/{name}/model_card.md").read_text()

        def read(stage: str, file: str = "metrics.json", name: str = name) -> dict:
            return json.loads((reported / f"results/{stage}/{name}/{file}").read_text())

        evaluation, export = read("evaluate"), read("export")
        registration, manifest = read("register", "registration.json"), read("image", "manifest.json")
        robustness = read("robustness", "robustness.json")
        assert card.startswith(f"# Model card: {registration['name']} version {registration['version']}\n")
        for heading in (
            "Intended use",
            "Out-of-scope use",
            "Data",
            "Metrics",
            "Calibration",
            "Robustness",
            "How it was served and proven",
            "Limitations",
            "Provenance",
            "Software versions",
        ):
            assert f"# {heading}\n" in card, heading
        assert f"| accuracy, as served | {mc.pct(evaluation['accuracy'])} |" in card
        assert f"| expected calibration error (15 bins, top label) | {evaluation['ece']:.4f} |" in card
        assert f"| Brier score (multi-class, 0..2) | {evaluation['brier']:.4f} |" in card
        assert f"{export['test_ece_before']:.4f} / {export['test_ece_after']:.4f}" in card
        assert export["temperature"] != 1.0 and f"T = {export['temperature']:.4f}" in card
        assert f"relative drop {mc.pct(robustness_metrics(reported, name)['relative_drop'])}" in card
        first = robustness["corruptions"][0]
        row = " | ".join(mc.pct(robustness["accuracy"][first][str(s)]) for s in robustness["severities"])
        assert f"| {first} | {row} |" in card
        assert "| served = offline ONNX Runtime, every test image | yes |" in card
        assert f"`{manifest['model_sha256']}`" in card
        assert "| train_model | export_onnx | evaluate_robustness |" in card  # versions of each job
        # the dataset audit's figures and the clean test accuracy
        (audit_file,) = (reported / "results/audit").glob("*/metrics.json")
        audit = json.loads(audit_file.read_text())
        leaked = mc.number(audit["test_with_train_duplicate_count"])
        assert f"test images with a near-duplicate in train or val: {leaked}" in card
        assert f"share of the test split: {mc.pct(audit['test_with_train_duplicate_fraction'])}" in card
        assert (
            f"without such a near-duplicate: {mc.pct(evaluation['clean_accuracy'])} on "
            f"{mc.number(evaluation['clean_images'])} images" in card
        )
        # the suspected label errors and the three accuracies, each named
        count = mc.number(evaluation["test_label_issue_count"])
        assert f"| suspected label errors in the test split | {count} (" in card
        for name, key, images in (
            ("suspected label errors", "accuracy_without_label_issues", "images_without_label_issues"),
            ("near-duplicates of train/val", "clean_accuracy", "clean_images"),
            ("both", "accuracy_without_both", "images_without_both"),
        ):
            shown = f"{mc.pct(evaluation[key])} on {mc.number(evaluation[images])} images"
            assert f"| test accuracy without {name} | {shown} |" in card, name
        # the card is a file of the registered version, read back from the store
        store = f"sqlite:///{reported / 'mlflow.db'}"
        # models:/ resolves through the registry, and its client opens the tracking store too: both
        # set, or MLflow creates its default ./mlflow.db in the checkout (both reset after the test)
        mlflow.set_tracking_uri(store)
        mlflow.set_registry_uri(store)
        stored = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{registration['model_uri']}/model_card.md", tracking_uri=store
        )
        assert Path(stored).read_text() == card and registration["model_card"].endswith("/model_card.md")
        # calibration: what is served is the temperature-scaled graph, and it is better calibrated
        assert evaluation["mismatches"] == 0 and export["test_ece_after"] < export["test_ece_before"]


def test_the_second_registration_is_a_challenger_judged_by_the_paired_test(two_experiments):
    """The two experiments register one after the other: the first takes the alias, the second is
    compared with it on the validation predictions each version stores, and the decision is the
    same in registration.json, the log, the version's tags and the model card."""
    from cifarflow.paired import ValPredictions, binomial_upper_tail
    from mlflow import MlflowClient

    workdir, _ = two_experiments
    regs = {
        n: json.loads((workdir / f"results/register/{n}/registration.json").read_text()) for n in EXPERIMENTS
    }
    first, second = sorted(EXPERIMENTS, key=lambda n: regs[n]["version"])
    assert regs[first]["champion_decision"]["outcome"] == "first"
    decision = regs[second]["champion_decision"]
    assert decision["outcome"] in ("moved", "stayed") and decision["compared_with"] == regs[first]["version"]
    ours, theirs = (
        ValPredictions.load(workdir / f"results/export/{n}/val_predictions.npz") for n in (second, first)
    )
    better, worse = int((ours.correct & ~theirs.correct).sum()), int((~ours.correct & theirs.correct).sum())
    assert (decision["images"], decision["better"], decision["worse"]) == (len(ours.label), better, worse)
    assert decision["p_value"] == binomial_upper_tail(better, better + worse)
    assert (decision["val_ece"], decision["holder_val_ece"]) == (ours.ece, theirs.ece)
    # robustness decides on validation images, never on the test split's figure
    corrupted = {n: robustness_metrics(workdir, n)["val_mean_corruption_accuracy"] for n in (second, first)}
    assert (decision["val_mean_corruption_accuracy"], decision["holder_val_mean_corruption_accuracy"]) == (
        pytest.approx(corrupted[second], abs=1e-6),
        pytest.approx(corrupted[first], abs=1e-6),
    )
    assert "mean_corruption_accuracy" not in decision
    assert f"'champion' {decision['reason']}" in (workdir / f"logs/register_model/{second}.log").read_text()
    client = MlflowClient(sqlite_uri(workdir))
    tags = client.get_model_version(regs[second]["name"], str(regs[second]["version"])).tags
    assert (tags["champion.decision"], tags["champion.reason"]) == (decision["outcome"], decision["reason"])
    card = (workdir / f"results/register/{second}/model_card.md").read_text()
    assert f"| exact McNemar p (one-sided) | {decision['p_value']:.3g} | < 0.05 |" in card
    assert f"| right where the other is wrong (discordant pairs) | {better} | {worse} |" in card


def robustness_metrics(workdir: Path, name: str) -> dict:
    return json.loads((workdir / f"results/robustness/{name}/metrics.json").read_text())


def test_accuracy_falls_with_severity_for_the_demo_model(reported):
    for name in EXPERIMENTS:
        metrics = robustness_metrics(reported, name)
        by_severity = [metrics[f"accuracy_severity_{s}"] for s in range(1, 6)]
        assert all(a > b for a, b in zip(by_severity, by_severity[1:], strict=False)), by_severity
        assert metrics["uncorrupted_accuracy"] > metrics["mean_corruption_accuracy"] > 0.3
        assert metrics["images"] == 300  # config/demo.yaml's draw
        # the same draw of validation images, for the champion decision
        table = json.loads((reported / f"results/robustness/{name}/robustness.json").read_text())
        assert (
            table["validation"]["images"] == 300
            and table["validation"]["corruptions"] == table["corruptions"]
        )
        assert metrics["val_uncorrupted_accuracy"] > metrics["val_mean_corruption_accuracy"] > 0.3


def test_the_versions_table_lists_what_each_job_ran_with(reported):
    import importlib.metadata
    import platform

    from test_tables import Cells

    rows = Cells((reported / "results/report/versions/software_versions.html").read_text()).rows
    assert rows[0] == ["software", "host"]  # one environment: every job ran in this venv
    versions = {row[0]: row[1] for row in rows[1:] if len(row) == 2 and row[0] != "job"}
    assert versions["python"] == platform.python_version()
    for package in ("torch", "onnxruntime", "mlflow", "numpy", "kserve", "snakemake"):
        assert versions[package] == importlib.metadata.version(package), package
    jobs = {row[0] for row in rows if len(row) == 2 and row[1] == "host"}
    assert {f"train_model/{n}" for n in EXPERIMENTS} <= jobs and {"prepare_dataset", "audit_dataset"} <= jobs
    assert {f"register_model/{n}" for n in EXPERIMENTS} <= jobs


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


def test_int8_copy_is_a_target_and_a_versioned_job_but_not_in_the_card(workflow):
    """export.quantize int8 adds quantize_onnx to each shipped experiment's chain (rules/targets.smk):
    its model is a target, its job has a row in the versions table and its figures one in the export
    table; the model card lists only the jobs that made the served fp32 model."""
    for quantize in ("none", "int8"):
        write_yaml(workflow / "quantize.yaml", f"export:\n  quantize: {quantize}\n")
        run = snakemake(workflow, "-n", "-p", "--configfile", "config/demo.yaml", "quantize.yaml")
        jobs = {b.split(":")[0]: b for b in re.split(r"^(?:local)?rule ", run.stdout, flags=re.M)[1:]}
        int8 = quantize == "int8"
        assert ("quantize_onnx" in jobs_run(run)) == int8 and ("quantize_onnx" in jobs) == int8
        assert ("results/quantize/default/model.int8.onnx" in jobs["all"]) == int8
        assert ("--quantize results/quantize/default/metrics.json" in jobs["tabulate_export"]) == int8
        assert ("quantize_onnx/default=logs/quantize_onnx/default.log" in jobs["tabulate_versions"]) == int8
        assert "register_model/default=logs/register_model/default.log" in jobs["tabulate_versions"]
        card = jobs["register_model"]
        assert " export_onnx=logs/export_onnx/default.log " in card
        assert "quantize_onnx" not in card and "register_model=" not in card
