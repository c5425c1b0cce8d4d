"""The dataset audit (cifarflow.audit) on generated images with planted pairs (tests/planted_pairs.py).

Recall and precision are asserted per planted kind, each on its own data set: background scenes,
pairs of that kind spread within and across splits, and look-alike pairs of the same class that
must not be reported. The data use seed 1: the verification's settings were chosen on seed 0, and
max_distance on real pairs judged by eye (bench/audit_judged.py). Measured at the default
max_distance (0.09) on seed 1, 40 pairs a kind: recall 1.0 for exact copies, 1-pixel crops,
brightness, colour balance and mirror images, 0.9 for 2-pixel crops, 0.5 for JPEG re-encodings at
quality 75, 0.25 for a 1-pixel crop re-encoded and 0.1 for a 1.1x zoom (docs/audit.md says so);
precision 1.0 for every kind, and at 0.22 every kind is found whole. The asserted bounds leave room
for one miss where the detector succeeds, and a range around what it does where it does not.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from cifarflow.audit import (
    PAIR_COLUMNS,
    AuditSettings,
    anomalies,
    audit,
    class_balance,
    clean_mask,
    find_duplicates,
    low_frequencies,
    mirror_coefficients,
)
from planted_pairs import KINDS, MORE_KINDS, crop, planted_dataset, scenes

PAIRS_PER_KIND = 40
LOOKALIKES = 60
SEED = 1  # not 0, on which the verification's settings were chosen
# recall at the default max_distance where the detector finds only part of a kind: (at least, at
# most), around what it does on SEED (shift2 0.9, jpeg75 0.5, crop_jpeg 0.25, zoom 0.1)
PARTLY_FOUND = {"shift2": (0.8, 1.0), "jpeg75": (0.35, 0.65), "crop_jpeg": (0.1, 0.4), "zoom": (0.0, 0.25)}
OLD_MAX_DISTANCE = 0.22  # the default before the judged real pairs


def found_pairs(pairs: pd.DataFrame) -> set:
    return {((r.split_a, r.index_a), (r.split_b, r.index_b)) for r in pairs.itertuples()}


def planted_kind(kind: str):
    return planted_dataset(
        kinds=(kind,),
        pairs_per_kind=PAIRS_PER_KIND,
        lookalike_pairs=LOOKALIKES,
        background=(150, 60, 600),
        seed=SEED,
    )


def recall_precision(planted, kind: str, pairs: pd.DataFrame) -> tuple[float, float, list]:
    found = found_pairs(pairs)
    truth = planted.pairs[kind]
    hits = {pair for pair in truth if pair in found or pair[::-1] in found}
    lookalikes = [pair for pair in found if planted.truth(pair) == "lookalike"]
    return len(hits) / len(truth), len(hits) / max(len(found), 1), lookalikes


@pytest.fixture(scope="module", params=KINDS + MORE_KINDS)
def planted_run(request):
    kind = request.param
    planted = planted_kind(kind)
    pairs = find_duplicates(planted.images, planted.labels, AuditSettings(threads=2))
    return kind, planted, pairs


def test_planted_pairs_recall_and_precision_per_kind(planted_run):
    kind, planted, pairs = planted_run
    recall, precision, lookalikes = recall_precision(planted, kind, pairs)
    print(f"{kind}: recall {recall:.3f} precision {precision:.3f} ({len(pairs)} reported)")
    low, high = PARTLY_FOUND.get(kind, (1 - 1 / PAIRS_PER_KIND, 1.0))
    assert low <= recall <= high, f"{kind}: recall {recall:.3f} outside [{low}, {high}]"
    assert precision >= 1 - 1 / PAIRS_PER_KIND, f"{kind}: precision {precision:.3f}"
    assert not lookalikes, f"{kind}: look-alikes reported as duplicates: {lookalikes}"


@pytest.mark.parametrize("kind", ["jpeg75", "crop_jpeg", "zoom"])
def test_partly_found_kinds_are_found_whole_at_the_old_threshold(kind):
    """What the default misses of these kinds is a matter of threshold, not of the candidate search:
    at 0.22 (the default before the judged real pairs) every planted pair is found, no look-alike."""
    planted = planted_kind(kind)
    pairs = find_duplicates(
        planted.images, planted.labels, AuditSettings(max_distance=OLD_MAX_DISTANCE, threads=2)
    )
    recall, precision, lookalikes = recall_precision(planted, kind, pairs)
    assert recall >= 1 - 1 / PAIRS_PER_KIND and precision >= 1 - 1 / PAIRS_PER_KIND
    assert not lookalikes


def test_each_planted_kind_is_named_and_measured(planted_run):
    kind, planted, pairs = planted_run
    by_pair = {((r.split_a, r.index_a), (r.split_b, r.index_b)): r for r in pairs.itertuples()}
    rows = [by_pair.get(p) or by_pair.get(p[::-1]) for p in planted.pairs[kind]]
    rows = [r for r in rows if r is not None]
    assert rows, f"no planted {kind} pair found"
    expected = {"exact": "exact", "mirrored": "mirrored"}.get(kind, "near")
    assert {r.kind for r in rows} == {expected}
    distances = np.array([r.distance for r in rows])
    if kind == "exact":
        assert (distances == 0).all()
    else:
        assert (distances >= 0).all() and (distances <= AuditSettings().max_distance).all()
    if kind in ("jpeg75", "shift1", "shift2", "crop_jpeg", "zoom"):  # the pixels differ
        assert (distances > 0).all()
    if kind in ("shift1", "shift2"):  # the found alignment is about the planted one
        assert max(max(abs(r.shift_y), abs(r.shift_x)) for r in rows) >= int(kind[-1]) - 0.5
    # the frame is ordered: test before val before train, and index_a < index_b within a split
    order = {"test": 0, "val": 1, "train": 2}
    assert all(
        (order[a], ia) < (order[b], ib)
        for a, ia, b, ib in pairs[["split_a", "index_a", "split_b", "index_b"]].values
    )
    assert list(pairs.columns) == PAIR_COLUMNS
    assert (pairs["label_a"] == pairs["label_b"]).all()  # planted pairs share their class


def test_shift_is_where_b_frame_sits():
    rng = np.random.default_rng(3)
    scene = scenes(rng, np.array([1, 2]), __import__("planted_pairs").class_styles())
    a = crop(scene.canvas)
    b = np.stack([crop(scene.canvas[0], 2, -1), crop(scene.canvas[1], -1, 0)])
    pairs = find_duplicates({"test": a, "train": b})
    got = {(r.index_a, r.index_b): (r.shift_y, r.shift_x) for r in pairs.itertuples()}
    assert set(got) == {(0, 0), (1, 1)}
    assert np.allclose(got[(0, 0)], (2, -1), atol=0.5) and np.allclose(got[(1, 1)], (-1, 0), atol=0.5)


def test_mirrors_can_be_left_out():
    planted = planted_dataset(
        kinds=("mirrored",), pairs_per_kind=10, lookalike_pairs=0, background=(50, 0, 50)
    )
    with_mirrors = find_duplicates(planted.images, planted.labels)
    without = find_duplicates(planted.images, planted.labels, AuditSettings(mirrors=False))
    assert (with_mirrors["kind"] == "mirrored").sum() >= 10
    assert (without["kind"] == "mirrored").sum() == 0


def test_dft_and_mirror_match_numpy():
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    coefficients = low_frequencies(x, 6, 4)
    from cifarflow.audit import _window

    y = x.astype(np.float64) - x.mean(axis=(1, 2), keepdims=True)
    y *= np.outer(_window(32, 4), _window(32, 4))[None, :, :, None]
    reference = np.fft.rfft2(y, axes=(1, 2))[:, np.r_[0:7, 26:32], :7]
    assert np.allclose(coefficients, reference, rtol=0, atol=1e-3 * np.abs(reference).max())
    mirrored = low_frequencies(x[:, :, ::-1], 6, 4)
    assert np.allclose(mirror_coefficients(coefficients, 32), mirrored, atol=1e-3 * np.abs(mirrored).max())


def _scenes(n: int, seed: int) -> np.ndarray:
    from planted_pairs import class_styles

    rng = np.random.default_rng(seed)
    return crop(scenes(rng, rng.integers(10, size=n), class_styles()).canvas)


def test_exact_groups_expand_to_every_member_and_repeats_are_anomalies():
    train = _scenes(30, 1)
    test = _scenes(10, 2)
    train[5] = train[6] = train[7] = test[0]  # four identical copies: 6 exact pairs
    train[8] = np.clip(test[0].astype(int) * 1.1, 0, 255).astype(np.uint8)  # near all four
    pairs = find_duplicates({"test": test, "train": train})
    exact = pairs[pairs["kind"] == "exact"]
    assert len(exact) == 6
    near = pairs[pairs["kind"] == "near"]
    assert {(r.split_a, r.index_a) for r in near.itertuples() if r.index_b == 8} == {
        ("test", 0),
        ("train", 5),
        ("train", 6),
        ("train", 7),
    }
    found = anomalies({"test": test, "train": train})
    repeated = found[found["check"] == "repeated"]
    assert set(zip(repeated["split"], repeated["index"], strict=True)) == {
        ("test", 0),
        ("train", 5),
        ("train", 6),
        ("train", 7),
    }
    assert (repeated["value"] == 4).all()


def test_anomalies_name_each_broken_image_and_nothing_else():
    images = _scenes(20, 4)
    images[1] = 128  # constant
    images[2] = np.random.default_rng(0).integers(125, 128, images[2].shape)  # near-constant noise
    images[3] = np.random.default_rng(1).integers(0, 12, images[3].shape)  # almost black
    images[4] = np.random.default_rng(2).integers(244, 256, images[4].shape)  # almost white
    images[5, :, :, 1:] = 0  # red only
    found = anomalies({"train": images})
    checks = {(int(r.index), r.check) for r in found.itertuples()}
    assert checks == {
        (1, "near_constant"),
        (2, "near_constant"),
        (3, "almost_black"),
        (4, "almost_white"),
        (5, "single_channel"),
    }


def test_flat_images_only_match_exactly():
    images = _scenes(10, 5)
    images[0], images[1], images[2] = 10, 11, 10  # two different flat images; 0 and 2 identical
    pairs = find_duplicates({"train": images})
    assert {(r.index_a, r.index_b, r.kind) for r in pairs.itertuples()} == {(0, 2, "exact")}


def test_audit_metrics_leakage_and_clean_mask():
    planted = planted_dataset(  # kinds that the default finds whole, so that every pair counts
        kinds=("exact", "shift1", "brightness", "mirrored", "colour_gain"),
        pairs_per_kind=6,
        lookalike_pairs=10,
        background=(40, 20, 80),
        seed=2,
    )
    result = audit(planted.images, planted.labels, [f"c{i}" for i in range(10)])
    m = result.metrics
    leaked = {
        a[1] if a[0] == "test" else b[1]
        for pairs in planted.pairs.values()
        for a, b in pairs
        if (a[0] == "test") != (b[0] == "test")
    }
    assert m["test_with_train_duplicate_count"] == len(leaked)
    assert m["test_with_train_duplicate_fraction"] == pytest.approx(len(leaked) / len(planted.images["test"]))
    assert m["exact_duplicate_pairs"] == 6
    assert m["train_internal_duplicate_pairs"] == sum(
        a[0] == b[0] == "train" for pairs in planted.pairs.values() for a, b in pairs
    )
    assert m["duplicate_pairs"] == len(result.pairs) == sum(len(p) for p in planted.pairs.values())
    assert m["anomalies"] == 0
    mask = clean_mask(result.pairs, len(planted.images["test"]))
    assert set(np.flatnonzero(~mask)) == leaked
    assert result.balance.sum().to_dict() == {k: len(v) for k, v in planted.images.items()}
    with pytest.raises(ValueError, match="split has 3"):
        clean_mask(result.pairs, 3)


def test_class_balance_counts_per_split():
    balance = class_balance({"train": np.array([0, 0, 1]), "test": np.array([2])}, ["a", "b", "c"])
    assert balance.to_dict() == {"train": {"a": 2, "b": 1, "c": 0}, "test": {"a": 0, "b": 0, "c": 1}}


def test_bad_input_names_the_split():
    with pytest.raises(ValueError, match="split 'test': expected uint8"):
        find_duplicates({"test": np.zeros((2, 32, 32, 3), np.float32)})
    with pytest.raises(ValueError, match="2 images but 1 labels"):
        find_duplicates({"test": np.zeros((2, 32, 32, 3), np.uint8)}, {"test": np.zeros(1)})
