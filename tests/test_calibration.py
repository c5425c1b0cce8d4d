"""Calibration figures against hand-computed cases; temperature scaling on an over-confident model."""

import math

import numpy as np
import pytest
from cifarflow import calibration as cal

# Four predictions over three classes, worked by hand (module docstring's definitions):
#   A conf .90 right (bin 13: (13/15, 14/15]), B conf .92 wrong (bin 13), C conf .70 right (bin 10),
#   D conf .42 wrong (bin 6)
PROBS = np.array(
    [
        [0.90, 0.05, 0.05],
        [0.92, 0.04, 0.04],
        [0.20, 0.70, 0.10],
        [0.42, 0.30, 0.28],
    ]
)
LABELS = np.array([0, 1, 1, 2])


def test_ece_by_hand():
    # bin 13: 2 of 4, accuracy 1/2, confidence .91 -> .5 * .41; bin 10: .25 * .30; bin 6: .25 * .42
    assert cal.expected_calibration_error(PROBS, LABELS) == pytest.approx(0.205 + 0.075 + 0.105, abs=1e-12)


def test_nll_by_hand():
    expected = -(math.log(0.90) + math.log(0.04) + math.log(0.70) + math.log(0.28)) / 4
    assert cal.negative_log_likelihood(PROBS, LABELS) == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(1.2384692, abs=1e-6)


def test_brier_by_hand():
    per_image = [
        0.10**2 + 0.05**2 + 0.05**2,
        0.92**2 + 0.96**2 + 0.04**2,
        0.20**2 + 0.30**2 + 0.10**2,
        0.42**2 + 0.30**2 + 0.72**2,
    ]
    assert cal.brier_score(PROBS, LABELS) == pytest.approx(sum(per_image) / 4, abs=1e-12)
    assert sum(per_image) / 4 == pytest.approx(0.67735, abs=1e-9)


def test_perfect_and_worst_cases():
    onehot = np.eye(3)[[0, 1, 2, 1]]
    labels = np.array([0, 1, 2, 1])
    assert cal.expected_calibration_error(onehot, labels) == 0.0
    assert cal.brier_score(onehot, labels) == 0.0
    assert cal.negative_log_likelihood(onehot, labels) == 0.0
    wrong = np.eye(3)[[1, 2, 0, 0]]
    assert cal.expected_calibration_error(wrong, labels) == 1.0
    assert cal.brier_score(wrong, labels) == 2.0
    assert cal.negative_log_likelihood(wrong, labels) == pytest.approx(-math.log(cal.PROBABILITY_FLOOR))


def test_reliability_bins_are_right_closed_and_cover_everything():
    rows = cal.reliability(PROBS, LABELS)
    assert len(rows) == 15 and sum(r["count"] for r in rows) == 4
    assert [i for i, r in enumerate(rows) if r["count"]] == [6, 10, 13]
    assert rows[13]["confidence"] == pytest.approx(0.91) and rows[13]["accuracy"] == 0.5
    assert rows[0]["confidence"] is None and rows[0]["accuracy"] is None
    # a confidence exactly on an edge belongs to the bin it closes; 1.0 to the last
    edges = np.array([0.2, 1.0, 1 / 15])
    assert cal.bin_index(edges).tolist() == [2, 14, 0]


def test_calibration_metrics_and_bad_input():
    figures = cal.calibration_metrics(PROBS, LABELS)
    assert figures["ece"] == pytest.approx(0.385, abs=1e-6)
    assert figures["mean_confidence"] == pytest.approx((0.90 + 0.92 + 0.70 + 0.42) / 4)
    with pytest.raises(ValueError, match="labels must lie in 0..2"):
        cal.brier_score(PROBS, np.array([0, 1, 3, 0]))
    with pytest.raises(ValueError, match=r"\[N, classes\]"):
        cal.expected_calibration_error(PROBS[0], LABELS[:1])
    with pytest.raises(ValueError, match="NaN"):
        cal.negative_log_likelihood(np.full((1, 3), np.nan), np.array([0]))


def overconfident(n: int, seed: int, sharpen: float = 3.0):
    """Labels drawn from softmax(z): z is calibrated by construction; the model reports sharpen * z."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 10)) * 1.5
    p = cal.softmax(z)
    labels = np.array([rng.choice(10, p=row) for row in p])
    return z * sharpen, labels


def test_temperature_scaling_fixes_an_overconfident_model_and_keeps_argmax():
    val_logits, val_labels = overconfident(4000, seed=0)
    test_logits, test_labels = overconfident(4000, seed=1)
    t = cal.fit_temperature(val_logits, val_labels)
    assert t == pytest.approx(3.0, rel=0.1)  # the sharpening it has to undo
    assert cal.nll_from_logits(val_logits, val_labels, t) < cal.nll_from_logits(val_logits, val_labels) - 0.3
    # no better temperature nearby: the search found the minimum
    for other in (t * 0.97, t * 1.03):
        assert cal.nll_from_logits(val_logits, val_labels, t) <= cal.nll_from_logits(
            val_logits, val_labels, other
        )
    before, after = cal.softmax(test_logits), cal.softmax(test_logits, t)
    np.testing.assert_array_equal(before.argmax(1), after.argmax(1))
    assert (
        cal.expected_calibration_error(after, test_labels)
        < cal.expected_calibration_error(before, test_labels) / 3
    )
    assert cal.negative_log_likelihood(after, test_labels) < cal.negative_log_likelihood(before, test_labels)


def test_an_underconfident_model_gets_a_temperature_below_one():
    logits, labels = overconfident(3000, seed=2, sharpen=0.5)
    assert cal.fit_temperature(logits, labels) == pytest.approx(0.5, rel=0.1)


def test_uninformative_logits_keep_temperature_one_and_bad_logits_fail():
    assert cal.fit_temperature(np.zeros((50, 10)), np.arange(50) % 10) == 1.0
    with pytest.raises(ValueError, match="finite"):
        cal.fit_temperature(np.array([[np.inf, 0.0]]), np.array([0]))
    with pytest.raises(ValueError, match="labels"):
        cal.fit_temperature(np.zeros((2, 3)), np.array([0, 5]))
