"""The report's tables on synthetic figures: the right numbers, escaped HTML, gates marked, the
champion found, and RST that docutils reads without a warning."""

import math
from html.parser import HTMLParser

import docutils.core
import pytest
from cifarflow import tables
from cifarflow.errors import PipelineError

CLASSES = ["cat", "dog", "frog"]


class Cells(HTMLParser):
    """The text of every <td>/<th> of an HTML page, by row."""

    def __init__(self, page: str):
        super().__init__()
        self.rows, self._cell = [], None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.rows[-1].append(self._cell)
            self._cell = None


def rst_html(text: str) -> str:
    """RST -> HTML the way the report does, failing on any warning."""
    return docutils.core.publish_parts(
        text, writer="html", settings_overrides={"halt_level": 2, "report_level": 2}
    )["body"]


def experiment(accuracy=0.9, registration=None, served=True) -> dict:
    parts = {
        "recipe": {"model": "fast", "epochs": 4, "seed": 0},
        "train": {
            "epochs": 4, "parameters": 1000, "val_accuracy": accuracy, "test_accuracy": accuracy,
            "train_seconds": 12.5, "images_per_second": 1500.0,
        },
        "export": {"argmax_agreement": 1.0, "model_bytes": 2_500_000, "throughput_images_per_second": 3000.0},
    }  # fmt: skip
    if served:
        parts["evaluate"] = {
            "accuracy": accuracy, "macro_f1": accuracy - 0.01, "throughput_images_per_second": 1800.0,
            "latency_ms_p95": 2.5, "mismatches": 0,
        }  # fmt: skip
        parts["manifest"] = {"engine": "podman"}
        parts["registration"] = registration
    return parts


def registration(version, champion_version, accuracy=0.9):
    return {
        "name": "cifar10-classifier", "version": version, "champion": version == champion_version,
        "champion_version": champion_version, "accuracy": accuracy, "dataset_id": "d", "image": "img:1",
        "run_id": "r",
    }  # fmt: skip


def test_class_counts_have_totals_per_class_and_split():
    meta = {"class_names": CLASSES, "counts": {"train": {"cat": 4, "dog": 5, "frog": 6},
            "val": {"cat": 1, "dog": 1, "frog": 1}, "test": {"cat": 2, "dog": 2, "frog": 2}}}  # fmt: skip
    frame = tables.class_counts(meta)
    assert frame.columns.tolist() == ["class", "train", "val", "test", "all splits"]
    assert frame.iloc[1].tolist() == ["dog", 5, 1, 2, 8]
    assert frame.iloc[-1].tolist() == ["total", 15, 3, 6, 24]
    rows = Cells(tables.class_counts_html(meta | {"dataset_id": "x", "source": "folder"})).rows
    assert rows[-1] == ["total", "15", "3", "6", "24"]


def test_html_tables_escape_every_value():
    import pandas as pd

    page = tables.html_page("a <b>", tables.html_table(pd.DataFrame({"c": ["<script>x</script>"]})))
    assert "<script>" not in page and "&lt;script&gt;" in page and "<title>a &lt;b&gt;</title>" in page


def test_history_table_has_a_row_per_epoch_and_bolds_the_best_val_accuracy():
    import pandas as pd

    history = pd.DataFrame(
        {"epoch": [1, 2, 3], "train_loss": [2.0, 1.0, 0.5], "train_accuracy": [0.3, 0.6, 0.9],
         "val_loss": [1.5, 0.8, 0.9], "val_accuracy": [0.4, 0.8, 0.7], "lr": [0.1, 0.3, 0.0],
         "seconds": [1.0, 1.0, 1.0], "images_per_second": [1000.0, 1100.0, 1200.0]}
    )  # fmt: skip
    page = tables.history_html(history, "fast")
    rows = Cells(page).rows
    assert rows[0][:5] == ["epoch", "train loss", "train accuracy", "val loss", "val accuracy"]
    assert rows[2][:5] == ["2", "1.0000", "60.00%", "0.8000", "80.00%"]
    assert '<tr class="best"><td class="text">2</td>' in page


EXPORT = {
    "argmax_agreement": 1.0, "max_probability_diff": 2e-6, "max_logit_diff": 1e-5,
    "torch_test_accuracy": 0.9, "onnx_test_accuracy": 0.9, "accuracy_diff": 0.0,
    "latency_ms_p50": 1.2, "latency_ms_p99": 3.4, "throughput_images_per_second": 2500.0,
    "model_bytes": 1_200_000,
}  # fmt: skip
LIMITS = {"min_argmax_agreement": 0.9995, "max_probability_diff": 1e-4, "max_accuracy_diff": 5e-4}


def test_export_table_marks_each_parity_gate_and_shows_speed_and_size():
    rows = {r[1]: r for r in Cells(tables.export_html(EXPORT, LIMITS, "fast")).rows[1:]}
    assert rows["argmax agreement, ONNX Runtime vs PyTorch"][2:] == ["100.000%", ">= 99.950%", "pass"]
    assert rows["throughput, batch 256"][2] == "2,500 images/s"
    assert rows["model.onnx"][2] == "1.20 MB"
    failing = tables.export_html(EXPORT | {"max_probability_diff": 0.5}, LIMITS, "fast")
    assert {r[1]: r for r in Cells(failing).rows[1:]}["max |probability difference|"][4] == "FAIL"
    quantized = {
        "int8_test_accuracy": 0.89, "accuracy_drop": 0.01, "int8_throughput_images_per_second": 5000.0,
        "speedup": 2.0, "model_bytes": 400_000,
    }  # fmt: skip
    rows = {r[1]: r for r in Cells(tables.export_html(EXPORT, LIMITS, "fast", quantized)).rows[1:]}
    assert rows["speed-up over fp32"][2] == "2.00x" and rows["model.int8.onnx"][2] == "0.40 MB"


MANIFEST = {
    "engine": "podman", "image": "localhost/cifarflow-serving:fast-abc", "image_id": "sha256:1",
    "model_name": "cifar10", "model_sha256": "ab" * 32, "build_seconds": 12.34, "image_size_bytes": None,
    "dataset_id": "synthetic-1", "experiment": "fast",
}  # fmt: skip


def test_manifest_table_shows_every_contract_field_and_refuses_an_incomplete_manifest():
    rows = dict(r for r in Cells(tables.manifest_html(MANIFEST | {"digest": "d1"}, "fast")).rows[1:])
    assert rows["image reference"] == "localhost/cifarflow-serving:fast-abc"
    assert rows["build time"] == "12.3 s" and rows["image size"].startswith("n/a")
    assert rows["digest"] == "d1"  # fields beyond the contract are shown too
    with pytest.raises(PipelineError, match=r"lacks \['image_id'\]; rerun build_serving_image"):
        tables.manifest_html({k: v for k, v in MANIFEST.items() if k != "image_id"}, "fast")


def test_per_class_table_computes_f1_and_the_macro_average_and_names_missing_classes():
    metrics = {"accuracy": 0.8, "macro_f1": 0.79}
    metrics |= {"precision_cat": 1.0, "recall_cat": 0.5, "precision_dog": 0.5, "recall_dog": 1.0}
    metrics |= {"precision_frog": 0.0, "recall_frog": 0.0}
    frame = tables.per_class_frame(metrics, CLASSES, {0: 10, 1: 12})
    assert frame["F1"].tolist()[:3] == pytest.approx([2 / 3, 2 / 3, 0.0])
    assert frame["test images"].tolist() == [10, 12, 0, 22]
    assert frame.iloc[-1]["class"] == "macro average" and frame.iloc[-1]["recall"] == pytest.approx(0.5)
    page = tables.per_class_html(metrics, CLASSES, {0: 10, 1: 12}, "fast")
    assert '<tr class="weak"><td class="text">frog</td>' in page
    with pytest.raises(PipelineError, match=r"lack \['precision_bird', 'recall_bird'\]"):
        tables.per_class_frame(metrics, [*CLASSES, "bird"], {})


def test_champion_is_the_version_the_latest_registration_names():
    runs = {
        "a": experiment(0.95, registration(1, 1, 0.95)),
        "b": experiment(0.90, registration(2, 1, 0.90)),  # registered later, alias stayed on a
    }
    assert tables.champion(runs) == ("a", runs["a"]["registration"])
    earlier = {"b": experiment(0.9, registration(7, 3))}
    assert tables.champion(earlier) == (None, earlier["b"]["registration"])
    assert tables.champion({"a": experiment(served=False)}) == (None, None)


def test_comparison_lines_experiments_up_and_summary_is_valid_rst():
    runs = {
        "default": experiment(0.95, registration(1, 1, 0.95)),
        "short": experiment(0.85, registration(2, 1, 0.85)) | {"recipe": {"model": "fast", "epochs": 2}},
    }
    frame = tables.comparison_frame(runs)
    assert frame.loc["short", "epochs"] == 4 and frame.loc["default", "model_megabytes"] == 2.5
    assert frame.loc["default", "served_images_per_second"] == 1800.0
    name, reg = tables.champion(runs)
    page = tables.comparison_html(frame, name)
    rows = {row[0]: row[1:] for row in Cells(page).rows}
    assert rows["figure"] == ["default (champion)", "short"]
    assert rows["test accuracy"] == ["95.00%", "85.00%"] and rows["served images/s"] == ["1,800", "1,800"]
    assert page.count('<td class="champion">') == len(tables.COMPARISON_COLUMNS)
    assert tables.comparison_metrics(frame) == {
        "experiments": 2, "test_accuracy_mean": 0.9, "test_accuracy_std": pytest.approx(0.07071, abs=1e-5),
        "test_accuracy_best": 0.95,
    }  # fmt: skip
    html = rst_html(tables.summary_rst(frame, name, reg))
    assert "<strong>champion</strong>" in html and "version 1, from" in html and "1,800" in html


def test_the_headline_shows_figures_of_the_comparison_under_the_same_labels():
    runs = {
        "default": experiment(0.95, registration(1, 1, 0.95)),
        "short": experiment(0.85, registration(2, 1)),
    }
    runs["short"]["evaluate"]["mismatches"] = 3
    frame = tables.comparison_frame(runs)
    name, reg = tables.champion(runs)
    compared = {row[0]: row[1:] for row in Cells(tables.comparison_html(frame, name)).rows}
    header, *rows = Cells(rst_html(tables.summary_rst(frame, name, reg))).rows
    assert [row[0] for row in rows] == ["default (champion)", "short"]  # one row per experiment
    headline = {label: [row[i] for row in rows] for i, label in enumerate(header) if i}
    assert len(headline) == len(tables.HEADLINE) and "test accuracy" in headline
    assert {label: compared[label] for label in headline} == headline
    assert headline["served = offline"] == ["yes", "no: 3 differ"]
    assert headline["ONNX = PyTorch"] == ["100.00%", "100.00%"]


def test_comparison_without_the_serving_stage_says_what_was_not_measured():
    frame = tables.comparison_frame({"x_": experiment(served=False)})  # a name RST could misread
    assert math.isnan(frame.loc["x_", "served_accuracy"])
    html = rst_html(tables.summary_rst(frame, None, None))
    assert "n/a" in html and "nothing in this run" in html
    assert 'literal">x_</' in html  # a literal, not a reference to a target "x"


def test_recipes_side_by_side_bold_the_keys_that_differ():
    page = tables.recipes_html({"a": {"lr": 0.1, "seed": 0}, "b": {"lr": 0.1, "seed": 1}})
    assert Cells(page).rows == [["key", "a", "b"], ["lr", "0.1", "0.1"], ["seed", "0", "1"]]
    assert '<tr class="best"><td class="text">seed</td>' in page and '<tr><td class="text">lr</td>' in page


def test_robustness_table_has_each_severity_the_means_and_marks_the_hardest():
    from cifarflow.robustness import Robustness

    result = Robustness(
        0.9,
        {"contrast": {1: 0.85, 5: 0.4}, "pixelate": {1: 0.9, 5: 0.7}},
        200,
        3,
        confidence={"contrast": {1: 0.8, 5: 0.6}, "pixelate": {1: 0.9, 5: 0.8}},
    )
    page = tables.robustness_html(result, "default")
    rows = Cells(page).rows
    assert rows[0] == ["corruption", "severity 1", "severity 5", "mean", "mean confidence"]
    assert rows[1] == ["contrast", "85.00%", "40.00%", "62.50%", "70.00%"]
    assert rows[3] == ["mean", "87.50%", "55.00%", "71.25%", ""]
    assert '<tr class="weak"><td class="text">contrast' in page
    assert "200 test images" in page and "relative drop of 20.83%" in page


def test_versions_table_groups_jobs_by_environment():
    image = {"python": "3.11.2", "torch": "2.14.1", "image": "cifarflow-pipeline:0.1.0-cuda"}
    host = {"python": "3.11.7", "torch": "2.14.1", "image": "none (the host's environment)"}
    jobs = {
        "train_model/default": {**image, "gpu": "none visible"},
        "export_onnx/default": {**image, "gpu": "none visible"},
        "register_model/default": image,
        "evaluate_served_model/default": host,
        "plot_old/default": {"not recorded": "logs/old.log predates version records: rerun the job"},
    }
    groups = tables.environments(jobs)
    in_image = ["train_model/default", "export_onnx/default", "register_model/default"]
    assert [(name, members) for name, members, _ in groups] == [
        ("cifarflow-pipeline:0.1.0-cuda", in_image),
        ("host", ["evaluate_served_model/default"]),
        ("not recorded", ["plot_old/default"]),
    ]
    rows = Cells(tables.versions_html(jobs)).rows
    assert rows[0] == ["software", "cifarflow-pipeline:0.1.0-cuda", "host", "not recorded"]
    assert ["python", "3.11.2", "3.11.7", "-"] in rows and ["gpu", "none visible", "-", "-"] in rows
    assert ["evaluate_served_model/default", "host"] in rows and ["job", "environment"] in rows
