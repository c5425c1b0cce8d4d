"""The served evaluation's figures and gate, from plain arrays: no server, no model."""

import numpy as np
import pytest
from cifarflow.calibration import calibration_metrics
from cifarflow.errors import PipelineError
from cifarflow.evaluation import quality_gate, request_limit, served_figures
from cifarflow.label_issues import label_issue_figures
from cifarflow.runtime import write_metrics
from test_calibration import LABELS, PROBS

CLASSES = ["a", "b", "c"]
# Four test images, worked by hand (test_calibration's): predicted 0, 0, 1, 0 for labels 0, 1, 1, 2
# (rows 0 and 2 right)
SERVED = PROBS
CLEAN = np.array([True, True, False, True])  # row 2 has a near-duplicate in train or val
EVALUATE = {"batch_size": 2, "concurrency": 3, "max_probability_diff": 1e-5}


def figures_of(offline: np.ndarray) -> dict:
    latency = np.arange(1.0, 101.0)  # ms
    return served_figures(SERVED, offline, LABELS, CLEAN, latency, (2.0, 1.0), CLASSES, EVALUATE)


def test_the_figures_of_an_evaluation_by_hand(tmp_path):
    figures = figures_of(SERVED + 1e-7)
    assert figures["mismatches"] == 0 and figures["max_probability_diff"] == pytest.approx(1e-7)
    assert figures["accuracy"] == 0.5 and figures["images"] == 4
    # precision a 1/3, b 1, c 0 (never predicted); recall a 1, b 1/2, c 0; F1 1/2, 2/3, 0
    assert [figures[f"precision_{n}"] for n in CLASSES] == [0.333333, 1.0, 0.0]
    assert [figures[f"recall_{n}"] for n in CLASSES] == [1.0, 0.5, 0.0]
    assert figures["macro_f1"] == 0.388889
    assert {key: figures[key] for key in ("ece", "nll", "brier", "mean_confidence")} == calibration_metrics(
        SERVED, LABELS
    )
    # clean: rows 0 (right), 1 and 3 (wrong); leaked: row 2 (right)
    assert (figures["clean_accuracy"], figures["clean_images"]) == (0.333333, 3)
    assert (figures["leaked_accuracy"], figures["leaked_images"]) == (1.0, 1)
    assert (figures["latency_ms_p50"], figures["latency_ms_p95"], figures["latency_ms_p99"]) == (
        50.5,
        95.05,
        99.01,
    )
    # 4 images in 2 s served, in 1 s in process
    assert figures["throughput_images_per_second"] == 2.0 and figures["inprocess_images_per_second"] == 4.0
    assert figures["throughput_ratio"] == 0.5
    assert (figures["batch_size"], figures["concurrency"]) == (2, 3)
    assert len(figures) == 2 + 2 + 2 * len(CLASSES) + 4 + 4 + 9  # nothing else in metrics.json
    write_metrics(tmp_path / "metrics.json", figures)  # every figure is a finite number


def test_the_label_issue_figures_join_metrics_json_beside_the_clean_accuracy(tmp_path):
    """What evaluate_served adds: label_issue_figures of the served probabilities and the audit's clean
    mask; their names do not collide with served_figures', and every one is a finite number."""
    figures = figures_of(SERVED)
    issues, extra = label_issue_figures(SERVED, LABELS, CLEAN)
    assert not figures.keys() & extra.keys()
    assert extra["test_label_issue_count"] == len(issues)
    assert extra["test_label_issue_fraction"] == round(len(issues) / 4, 6)
    # no suspect would leave the accuracy as it is; each suspect is a wrong prediction, so never lower
    assert extra["accuracy_without_label_issues"] >= figures["accuracy"]
    assert extra["images_without_both"] <= min(extra["images_without_label_issues"], figures["clean_images"])
    write_metrics(tmp_path / "metrics.json", figures | extra)


def test_a_served_prediction_unlike_the_offline_one_fails_naming_its_row():
    offline = SERVED.copy()
    offline[2] = [0.2, 0.1, 0.7]
    with pytest.raises(PipelineError, match=r"1 of 4 predictions differ \(test rows 2\)"):
        figures_of(offline)
    with pytest.raises(PipelineError, match=r"0 of 4 predictions differ \(test rows none\).*allowed 1e-05"):
        figures_of(SERVED + 1e-4)  # same argmax, probabilities too far apart


def test_the_gate_passes_at_the_minimum_and_fails_below_it_with_the_figures():
    figures = {"accuracy": 0.85, "macro_f1": 0.79, "images": 4}
    assert quality_gate(figures, 0.85) is None
    with pytest.raises(PipelineError) as failed:
        quality_gate(figures, 0.9)
    assert str(failed.value) == (
        "quality gate: accuracy as served is 0.8500, below evaluate.min_accuracy 0.9 (macro F1 0.7900, "
        "4 test images). The model is not registered; train longer or lower the gate deliberately"
    )


def test_a_batch_must_fit_in_one_request():
    assert request_limit(256, 3072, 1) == 2**20
    assert request_limit(256, 3072, 0.75) == 256 * 3072  # exactly full
    with pytest.raises(PipelineError) as failed:
        request_limit(512, 3072, 1)
    assert str(failed.value) == (
        "evaluate.batch_size 512 makes requests of 1572864 bytes, over serving.max_request_mb (1): "
        "lower one or raise the other"
    )
