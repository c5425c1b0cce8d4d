"""Label issues by confident learning (Northcutt, Jiang and Chuang, "Confident Learning: Estimating
Uncertainty in Dataset Labels", JAIR 2021), in numpy.

Input: out-of-sample predicted probabilities `pred_probs` [N, K] (each image scored by a model that
did not train on it: cross-validation) and the given labels [N]. The conventions are those of
cleanlab's `cleanlab.filter.find_label_issues` with its defaults (filter_by="prune_by_noise_rate",
frac_noise=1, min_examples_per_class=1), which tests/test_label_issues.py checks flag the same images;
docs/audit.md says why this is not a dependency. Definitions:

- Threshold of class j: t_j = mean of pred_probs[i, j] over the images labelled j (their
  self-confidence), floored at 2e-6.
- Confident class of image i: among the classes with pred_probs[i, j] >= t_j - 1e-6, the one; with
  two or more, the argmax of the whole row (cleanlab's rule: the paper's equation takes the argmax
  among the classes above their thresholds; the two differ only when the row's top class is below
  its own threshold while two others are above theirs). Images above no threshold are not counted.
- Confident joint C [K, K]: C[given, confident] counts, its diagonal raised to at least 1, then
  calibrated: each row scaled to the number of images given that label, rounded to integers that
  keep each row's total (largest remainders first).
- Prune by noise rate: for each given class k and each other class j, the C[k, j] images labelled k
  with the largest margin pred_probs[i, j] - pred_probs[i, k] are flagged (a class with only one
  image is left alone). Last, an image whose given label is its argmax (within 1e-6) is unflagged.
- Ranking (cleanlab's rank_by="self_confidence"): flagged images by their self-confidence
  pred_probs[i, given], lowest first. The suggested label is the row's argmax.

Ties (equal margins or self-confidences) are broken by image index, lowest first; cleanlab's
unstable sort may order them otherwise, which matters only for exactly equal probabilities.

In the workflow: `label_issue_figures`, called by evaluation.evaluate_served on the test split's
served probabilities (the evaluated model never trained on the test split, so they are out of
sample, but it is the model being judged: its own errors can be among the suspects). With
audit.label_issues.folds K set, train and val too: `stratified_folds` splits train+val pooled into K
folds, each trained on the others (training.train with a Subset, one job a fold), `join_folds` puts
their held-out probabilities back in the pool's order and `train_val_issues` flags each split.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# cleanlab's constants: the slack of the threshold comparison and of "the argmax is the given label",
# and the floor of a threshold (above that slack, so that a zero probability is never confident).
SLACK = 1e-6
THRESHOLD_FLOOR = 2 * SLACK
# How far a row of pred_probs may sum from 1 (float32 softmax outputs sum to 1 within ~1e-6).
ROW_SUM_TOLERANCE = 1e-3


def _check(pred_probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pred_probs as float64 [N, K], labels as int64 [N], or ValueError naming the cause and the fix."""
    p = np.asarray(pred_probs)
    y = np.asarray(labels)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] < 2:
        raise ValueError(
            f"pred_probs must be [images, classes] with at least one image and two classes, got shape "
            f"{p.shape}: pass one row of class probabilities per image"
        )
    if not (np.issubdtype(p.dtype, np.floating) or np.issubdtype(p.dtype, np.integer)):
        raise ValueError(f"pred_probs must hold numbers, got dtype {p.dtype}")
    p = p.astype(np.float64)
    n, k = p.shape
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(
            f"labels must be one label per row of pred_probs ({n}), got shape {y.shape}: pass the given "
            "labels of the same images, in the same order"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"labels must be integer class indices 0..{k - 1}, got dtype {y.dtype}: map class names to "
            "their column in pred_probs first"
        )
    if y.min() < 0 or y.max() >= k:
        bad = np.flatnonzero((y < 0) | (y >= k))
        raise ValueError(
            f"labels must lie in 0..{k - 1} (pred_probs has {k} columns), got {y.min()}..{y.max()} "
            f"({bad.size} out of range, first at index {bad[0]}): pred_probs needs one column per class"
        )
    if not np.isfinite(p).all():
        raise ValueError(
            f"pred_probs holds NaN or inf ({int((~np.isfinite(p)).any(axis=1).sum())} rows): the model "
            "diverged or the probabilities were not computed for every image"
        )
    if p.min() < 0:
        raise ValueError(
            f"pred_probs holds negative values (min {p.min():.3g}): pass probabilities (softmax of the "
            "logits), not logits"
        )
    sums = p.sum(axis=1)
    off = np.abs(sums - 1) > ROW_SUM_TOLERANCE
    if off.any():
        first = int(np.flatnonzero(off)[0])
        raise ValueError(
            f"rows of pred_probs must sum to 1 (within {ROW_SUM_TOLERANCE}), {int(off.sum())} do not (row "
            f"{first} sums to {sums[first]:.6g}): pass probabilities (softmax of the logits), not logits "
            "or scores"
        )
    counts = np.bincount(y, minlength=k)
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0).tolist()
        raise ValueError(
            f"no image is labelled with class(es) {missing}, so their confidence threshold is undefined: "
            "score a set that holds every class (all folds' out-of-sample predictions together), or drop "
            "those columns from pred_probs, renormalise the rows and renumber the labels"
        )
    return p, y.astype(np.int64)


def _thresholds(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    # np.mean per class (pairwise summation), as cleanlab sums: a threshold differing in its last bit
    # could move an image that sits exactly on it.
    means = np.array([p[y == j, j].mean() for j in range(p.shape[1])])
    return np.maximum(means, THRESHOLD_FLOOR)


def confident_thresholds(pred_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """t_j [K]: the mean predicted probability of class j over the images labelled j."""
    return _thresholds(*_check(pred_probs, labels))


def _round_keeping_sum(row: np.ndarray) -> np.ndarray:
    """Round to integers whose sum is the row's sum rounded: round each, then move the largest
    remainders up (or the smallest down), one unit each, until the totals match."""
    ints = row.round()
    target = row.sum().round()
    while abs(ints.sum().round() - target) > SLACK:
        diff = target - ints.sum().round()
        step = 1 if diff > 0 else -1
        # Ascending by remainder; up: the largest first (later index first among equals), down: the
        # smallest first.
        order = np.argsort(row - ints, kind="stable")[::-step]
        ints[order[: min(int(abs(diff)), len(row))]] += step
    return ints.astype(np.int64)


def _confident_joint(p: np.ndarray, y: np.ndarray, calibrate: bool = True) -> np.ndarray:
    n, k = p.shape
    confident = p >= _thresholds(p, y) - SLACK
    how_many = confident.sum(axis=1)
    guess = np.where(how_many > 1, p.argmax(axis=1), confident.argmax(axis=1))
    counted = how_many > 0
    joint = np.zeros((k, k), dtype=np.int64)
    np.add.at(joint, (y[counted], guess[counted]), 1)
    joint[np.diag_indices(k)] = np.maximum(joint.diagonal(), 1)
    if not calibrate:
        return joint
    label_counts = np.bincount(y, minlength=k)
    scaled = joint / joint.sum(axis=1, keepdims=True) * label_counts[:, None]
    scaled = scaled / scaled.sum() * n
    return np.stack([_round_keeping_sum(row) for row in scaled])


def confident_joint(pred_probs: np.ndarray, labels: np.ndarray, *, calibrate: bool = True) -> np.ndarray:
    """C [K, K] of integers: C[given label, confident class]; calibrated (the default), row k sums to
    the number of images labelled k, so the whole to N."""
    return _confident_joint(*_check(pred_probs, labels), calibrate=calibrate)


def _prune_counts(joint: np.ndarray) -> np.ndarray:
    """How many images to flag: [given, confident], the calibrated joint with each class keeping at
    least one image (a diagonal entry raised to 1 takes the difference evenly from that row's non-zero
    off-diagonal entries, floored at 0, then truncated to integers)."""
    diagonal = joint.diagonal()
    raised = np.maximum(diagonal, 1)
    taken = (raised - diagonal) / np.maximum(np.count_nonzero(joint, axis=1) - 1.0, 1.0)
    counts = np.maximum(joint - taken[:, None], 0)
    counts[np.diag_indices(len(joint))] = raised
    return counts.astype(np.int64)


def _find(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    n, k = p.shape
    prune = _prune_counts(_confident_joint(p, y))
    flagged = np.zeros(n, dtype=bool)
    for given in range(k):
        members = np.flatnonzero(y == given)
        if members.size <= 1:
            continue
        for other in range(k):
            count = prune[given, other]
            if other == given or count <= 0:
                continue
            margin = p[members, other] - p[members, given]
            flagged[members[np.argsort(-margin, kind="stable")[:count]]] = True
    nudged = p.copy()
    nudged[np.arange(n), y] += SLACK
    flagged[nudged.argmax(axis=1) == y] = False
    return flagged


def find_label_issues(pred_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Boolean mask [N]: True where the given label is likely wrong (module docstring)."""
    return _find(*_check(pred_probs, labels))


def rank_label_issues(pred_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Indices of the flagged images, lowest self-confidence first (cleanlab's
    return_indices_ranked_by="self_confidence")."""
    p, y = _check(pred_probs, labels)
    flagged = np.flatnonzero(_find(p, y))
    return flagged[np.argsort(p[flagged, y[flagged]], kind="stable")]


def label_issues_table(pred_probs: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """The flagged images, one row each, most likely mislabelled first: `index` (row in pred_probs),
    `given_label`, `suggested_label` (the row's argmax), `self_confidence` (pred_probs[index, given]),
    `rank` (1 = most likely)."""
    p, y = _check(pred_probs, labels)
    flagged = np.flatnonzero(_find(p, y))
    ranked = flagged[np.argsort(p[flagged, y[flagged]], kind="stable")]
    return pd.DataFrame(
        {
            "index": ranked.astype(np.int64),
            "given_label": y[ranked],
            "suggested_label": p[ranked].argmax(axis=1).astype(np.int64),
            "self_confidence": p[ranked, y[ranked]],
            "rank": np.arange(1, ranked.size + 1, dtype=np.int64),
        }
    )


def split_issues(
    split: str, pred_probs: np.ndarray, labels: np.ndarray, files: list[str] | None = None
) -> tuple[pd.DataFrame, dict[str, float]]:
    """The suspected label errors of one split, as a table and its figures.

    Table: `label_issues_table`'s rows with `split` and `file` (the image's file name, where the
    dataset records one; else null) in front. Figures: `<split>_label_issue_count` and
    `<split>_label_issue_fraction` (of the split's images): prefixed, so that several splits share one
    metrics.json."""
    table = label_issues_table(pred_probs, labels)
    n = len(labels)
    if files is not None and len(files) != n:
        raise ValueError(
            f"files must name one file per image ({n}), got {len(files)}: pass the split's file names in "
            "the order of its images, or None where the dataset does not record them"
        )
    names = [files[i] for i in table["index"]] if files is not None else [None] * len(table)
    table.insert(0, "file", pd.array(names, dtype="string"))
    table.insert(0, "split", split)
    table = table[["split", "index", "file", "given_label", "suggested_label", "self_confidence", "rank"]]
    figures = {
        f"{split}_label_issue_count": len(table),
        f"{split}_label_issue_fraction": round(len(table) / n, 6),
    }
    return table, figures


def _accuracy(correct: np.ndarray, kept: np.ndarray) -> float:
    # 0.0 when nothing is kept, as audit.clean_accuracy does (metrics.json refuses NaN)
    return round(float(correct[kept].mean()), 6) if kept.any() else 0.0


def label_issue_figures(
    pred_probs: np.ndarray, labels: np.ndarray, clean: np.ndarray, files: list[str] | None = None
) -> tuple[pd.DataFrame, dict[str, float]]:
    """The test split's suspected label errors (`split_issues`, split "test", from the evaluated
    model's probabilities) and the test accuracy without them: `accuracy_without_label_issues` on
    `images_without_label_issues`, and `accuracy_without_both` on `images_without_both`, also without
    the images that are not `clean` (True: no near-duplicate in train or val; audit.clean_mask). The
    accuracy without the near-duplicates alone is the evaluation's `clean_accuracy`."""
    table, figures = split_issues("test", pred_probs, labels, files)
    clean = np.asarray(clean)
    if clean.dtype != bool or clean.shape != (len(labels),):
        raise ValueError(
            f"clean must be a boolean mask of the {len(labels)} test images, got dtype {clean.dtype} and "
            f"shape {clean.shape}: pass audit.clean_mask of the same split"
        )
    correct = np.asarray(pred_probs).argmax(axis=1) == np.asarray(labels)
    plausible = np.ones(len(labels), dtype=bool)
    plausible[table["index"].to_numpy()] = False
    return table, figures | {
        "accuracy_without_label_issues": _accuracy(correct, plausible),
        "images_without_label_issues": int(plausible.sum()),
        "accuracy_without_both": _accuracy(correct, plausible & clean),
        "images_without_both": int((plausible & clean).sum()),
    }


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The fold [N] (0..folds-1) of each image: each class's images, shuffled with `seed`, dealt to the
    folds in turn, so that every fold holds out about 1/folds of every class and the folds are
    disjoint and cover every image. Fold f trains on the images of the other folds."""
    y = np.asarray(labels)
    if isinstance(folds, bool) or not isinstance(folds, int | np.integer) or folds < 2:
        raise ValueError(
            f"folds must be an integer of at least 2, got {folds!r}: each fold trains on the others"
        )
    counts = np.bincount(y) if y.size else np.zeros(0, dtype=np.int64)
    present = counts[counts > 0]
    if y.ndim != 1 or present.size == 0 or present.min() < folds:
        smallest = int(present.min()) if present.size else 0
        raise ValueError(
            f"{folds} folds need at least {folds} images of every class, the smallest class has {smallest}: "
            "lower audit.label_issues.folds, or add images of that class"
        )
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=np.int64)
    for cls in np.flatnonzero(counts):
        members = rng.permutation(np.flatnonzero(y == cls))
        # deal on from where the previous class stopped, so that the folds' sizes differ by one at most
        fold[members] = (np.arange(members.size) + int(counts[:cls].sum())) % folds
    return fold


def join_folds(parts: list[tuple[np.ndarray, np.ndarray]], n: int) -> np.ndarray:
    """The out-of-fold probabilities [n, classes]: each part is (rows of the pool that its fold held
    out, their probabilities); together they must cover every row exactly once."""
    if not parts:
        raise ValueError("no folds to join: pass each fold's (held-out rows, probabilities)")
    classes = {np.asarray(p).shape[1] if np.asarray(p).ndim == 2 else None for _, p in parts}
    if len(classes) != 1 or None in classes:
        raise ValueError(
            f"every fold's probabilities must be [rows, classes] with the same classes, got {classes}"
        )
    joined = np.full((n, classes.pop()), np.nan)
    seen = np.zeros(n, dtype=np.int64)
    for number, (rows, probs) in enumerate(parts):
        rows = np.asarray(rows)
        if rows.ndim != 1 or len(rows) != len(probs):
            raise ValueError(f"fold {number}: {len(rows)} rows for {len(probs)} rows of probabilities")
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise ValueError(
                f"fold {number} holds rows outside 0..{n - 1}: its folds were made for another dataset"
            )
        np.add.at(seen, rows, 1)
        joined[rows] = probs
    if (seen != 1).any():
        twice, missing = np.flatnonzero(seen > 1), np.flatnonzero(seen == 0)
        raise ValueError(
            f"the folds must hold out every image exactly once: {missing.size} held out by none (first "
            f"{missing[:3].tolist()}), {twice.size} by several (first {twice[:3].tolist()}); the folds come "
            "from different settings (audit.label_issues.folds or dataset.seed): rerun them all"
        )
    return joined


def train_val_issues(
    pred_probs: np.ndarray, train_labels: np.ndarray, val_labels: np.ndarray
) -> tuple[pd.DataFrame, dict[str, float]]:
    """The suspected label errors of train and val from out-of-fold probabilities of train+val pooled
    (`join_folds`: train's rows first): `split_issues` on each split (its own thresholds and confident
    joint), one table (train's rows, then val's, each ranked) and the figures of both splits."""
    n_train = len(train_labels)
    if len(pred_probs) != n_train + len(val_labels):
        raise ValueError(
            f"{len(pred_probs)} rows of probabilities for {n_train} train + {len(val_labels)} val images: "
            "the folds were made for another dataset; rerun them"
        )
    train, train_figures = split_issues("train", pred_probs[:n_train], train_labels)
    val, val_figures = split_issues("val", pred_probs[n_train:], val_labels)
    return pd.concat([train, val], ignore_index=True), train_figures | val_figures
