"""The figures, drawn with matplotlib (Agg): the evaluation's confusion matrix, latency histogram and
suspected label errors, and the report's sample grids, training curves, most confidently wrong test
images and experiment comparison. Functions take data, return figures; save_png writes them."""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")  # no display on compute nodes or in containers

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .runtime import atomic_path  # noqa: E402
from .sweep import epochs_text  # noqa: E402

DPI = 100
# No "Software" entry (it carries the matplotlib version): the same data gives the same bytes.
PNG_METADATA = {"Software": None}
TRAIN, VAL = "#1f77b4", "#ff7f0e"


def save_png(fig: Figure, path: str | os.PathLike) -> None:
    """Write `fig` as a PNG atomically (no partial file on failure) and release it."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI, metadata=PNG_METADATA, bbox_inches="tight")
    finally:
        plt.close(fig)


def confusion_matrix(matrix: np.ndarray, class_names: list[str], title: str) -> Figure:
    """[true, predicted] counts as a heat map of per-true-class rates, with the counts written in."""
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted (as served)")
    ax.set_ylabel("true")
    for i in ticks:
        for j in ticks:
            if matrix[i, j]:
                color = "white" if rates[i, j] > 0.5 else "black"
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def latency_histogram(latency_ms: np.ndarray, title: str) -> Figure:
    """Single-image round trips with p50, p95 and p99 marked."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(latency_ms, bins=50, color="#4c72b0")
    for q, style in ((50, "-"), (95, "--"), (99, ":")):
        value = np.percentile(latency_ms, q)
        ax.axvline(value, color="black", linestyle=style, label=f"p{q} {value:.2f} ms")
    ax.set_xlabel("round trip, one image, v2 gRPC on loopback (ms)")
    ax.set_ylabel("requests")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def sample_indices(labels: np.ndarray, num_classes: int, per_class: int, seed: int = 0) -> list[np.ndarray]:
    """For each class, up to `per_class` indices of its images, drawn with `seed` (sorted)."""
    rng = np.random.default_rng(seed)
    picks = []
    for cls in range(num_classes):
        members = np.flatnonzero(labels == cls)
        chosen = rng.choice(members, size=min(per_class, len(members)), replace=False)
        picks.append(np.sort(chosen))
    return picks


def sample_grid(
    images: np.ndarray, labels: np.ndarray, class_names: list[str], per_class: int = 10, seed: int = 0
) -> Figure:
    """One row per class, `per_class` random images of it, drawn as one mosaic (pixels unsmoothed)."""
    picks = sample_indices(np.asarray(labels), len(class_names), per_class, seed)
    height, width = images.shape[1:3]
    gap = 2
    mosaic = np.full(
        (len(class_names) * (height + gap) - gap, per_class * (width + gap) - gap, 3), 255, dtype=np.uint8
    )
    for row, indices in enumerate(picks):
        for col, index in enumerate(indices):
            y, x = row * (height + gap), col * (width + gap)
            mosaic[y : y + height, x : x + width] = images[index]
    fig, ax = plt.subplots(figsize=(per_class * 0.55 + 1.4, len(class_names) * 0.55 + 0.5))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_yticks([r * (height + gap) + height / 2 for r in range(len(class_names))], class_names)
    ax.set_xticks([])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(f"{per_class} random training images per class", fontsize=10)
    return fig


def training_curves(history: pd.DataFrame, title: str = "") -> Figure:
    """Loss and accuracy per epoch, train vs val (history.csv's columns)."""
    missing = {"epoch", "train_loss", "val_loss", "train_accuracy", "val_accuracy"} - set(history.columns)
    if missing:
        raise ValueError(f"training history lacks columns {sorted(missing)}")
    fig, (loss, acc) = plt.subplots(1, 2, figsize=(9, 3.4))
    epochs = history["epoch"]
    marker = "o" if len(history) <= 30 else None
    for ax, metric, label in ((loss, "loss", "loss"), (acc, "accuracy", "accuracy")):
        ax.plot(epochs, history[f"train_{metric}"], color=TRAIN, marker=marker, label="train")
        ax.plot(epochs, history[f"val_{metric}"], color=VAL, marker=marker, label="val")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    acc.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    acc.legend(loc="lower right")
    final = history.iloc[-1]
    fig.suptitle(
        f"{title}: val accuracy {final['val_accuracy']:.1%} after {int(final['epoch'])} epochs".lstrip(": "),
        fontsize=11,
    )
    fig.tight_layout()
    return fig


def most_confidently_wrong(predictions: pd.DataFrame, limit: int) -> pd.DataFrame:
    """The `limit` misclassified rows with the highest probability on the predicted class,
    most confident first (ties by test index); adds a `confidence` column."""
    wrong = predictions[predictions["predicted"] != predictions["label"]].copy()
    wrong["confidence"] = [
        float(probs[pred]) for probs, pred in zip(wrong["probabilities"], wrong["predicted"], strict=True)
    ]
    return wrong.sort_values(["confidence", "index"], ascending=[False, True]).head(limit)


def _empty_panel(text: str) -> Figure:
    """A framed panel with `text`, not a sliver: the report shows it where an empty grid would be."""
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, text, ha="center", va="center")
    return fig


def _image_grid(
    images: np.ndarray, indices: list[int], titles: list[str], suptitle: str, columns: int
) -> Figure:
    """`images[indices]` in rows of `columns`, each under its three-line title, the whole under
    `suptitle`."""
    rows = math.ceil(len(indices) / columns)
    height = rows * 2.1 + 0.5
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.6, height), squeeze=False)
    # Fixed spacing (three title lines per image); tight/constrained layouts misplace them.
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.95 / height, hspace=0.55, wspace=0.08)
    for ax in axes.flat:
        ax.axis("off")
    for ax, index, title in zip(axes.flat, indices, titles, strict=False):
        ax.imshow(images[index], interpolation="nearest")
        ax.set_title(title, fontsize=8)
    fig.suptitle(suptitle, fontsize=10, y=1 - 0.1 / height, va="top")
    return fig


def confidently_wrong_grid(
    images: np.ndarray,
    wrong: pd.DataFrame,
    class_names: list[str],
    misclassified: int,
    total: int,
    columns: int = 6,
) -> Figure:
    """The rows of `most_confidently_wrong`, each image titled with its test index, true class and
    predicted class with its probability."""
    if wrong.empty:
        return _empty_panel(f"no misclassified images among {total:,} test images")
    rows = list(wrong.itertuples(index=False))
    return _image_grid(
        images,
        [int(row.index) for row in rows],
        [
            f"test #{int(row.index)}\ntrue: {class_names[int(row.label)]}\n"
            f"pred: {class_names[int(row.predicted)]} {row.confidence:.0%}"
            for row in rows
        ],
        f"The {len(wrong)} most confidently wrong of {misclassified:,} misclassified test images"
        f" ({misclassified / total:.1%} of {total:,})",
        columns,
    )


def label_issue_grid(
    images: np.ndarray | dict[str, np.ndarray],
    issues: pd.DataFrame,
    class_names: list[str],
    total: int,
    limit: int = 24,
    columns: int = 6,
    population: str = "test images",
    source: str = "the served model's test probabilities",
) -> Figure:
    """The first `limit` rows of a label-issue table (label_issues.split_issues: most likely
    mislabelled first), each image titled with its split and index, the given label with its
    probability (the self-confidence) and the suggested label; `total`: the `population`'s images.
    `images`: the split's images, or split name -> images where the table holds several splits."""
    if issues.empty:
        return _empty_panel(
            f"no suspected label errors among {total:,} {population}\n"
            f"(confident learning on {source}:\n"
            "no image's given label is confidently another class)"
        )
    rows = list(issues.head(limit).itertuples(index=False))
    if isinstance(images, dict):  # the shown images, in the table's order
        shown = np.stack([images[row.split][int(row.index)] for row in rows])
        positions = list(range(len(rows)))
    else:
        shown, positions = images, [int(row.index) for row in rows]
    return _image_grid(
        shown,
        positions,
        [
            f"{row.split} #{int(row.index)}\ngiven: {class_names[int(row.given_label)]} "
            f"{row.self_confidence:.1%}\nsuggested: {class_names[int(row.suggested_label)]}"
            for row in rows
        ],
        f"The {len(rows)} most likely of {len(issues):,} suspected label errors among {total:,} {population}"
        " (given label with its probability)",
        columns,
    )


# Comparison panels: (column of the comparison table, panel title, value format)
COMPARISON_PANELS = (
    ("test_accuracy", "test accuracy", "{:.1%}"),
    ("train_seconds", "training time (s)", "{:,.1f}"),
    ("train_images_per_second", "training images/s", "{:,.0f}"),
    ("model_megabytes", "ONNX model size (MB)", "{:.2f}"),
    ("served_images_per_second", "served throughput (images/s)", "{:,.0f}"),
)


def comparison_chart(table: pd.DataFrame) -> Figure:
    """One bar panel per figure of `tables.comparison_frame`, one bar per experiment."""
    fig, axes = plt.subplots(1, len(COMPARISON_PANELS), figsize=(3.1 * len(COMPARISON_PANELS), 3.2))
    names = list(table.index)
    colors = plt.get_cmap("tab10").colors
    for ax, (column, title, fmt) in zip(axes, COMPARISON_PANELS, strict=True):
        ax.set_title(title, fontsize=10)
        values = pd.to_numeric(table[column], errors="coerce") if column in table else pd.Series(dtype=float)
        if values.isna().all():
            ax.text(0.5, 0.5, "not measured\nin this run", ha="center", va="center", color="grey")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        bars = ax.bar(names, values.fillna(0), color=[colors[i % len(colors)] for i in range(len(names))])
        ax.bar_label(bars, labels=["n/a" if np.isnan(v) else fmt.format(v) for v in values], fontsize=8)
        ax.margins(y=0.15)
        ax.tick_params(axis="x", labelrotation=30 if len(names) > 3 else 0, labelsize=9)
        ax.grid(axis="y", alpha=0.3)
        if column == "test_accuracy":
            ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    fig.tight_layout()
    return fig


def reliability_diagram(bins: list[dict], figures: dict[str, float], title: str) -> Figure:
    """calibration.reliability()'s bins: accuracy against mean confidence per confidence bin (bars,
    the gap to the bin's mean confidence hatched), and how many predictions fall in each bin (below)."""
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(5.6, 6.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    width = bins[0]["upper"] - bins[0]["lower"]
    lower = np.array([b["lower"] for b in bins])
    filled = [i for i, b in enumerate(bins) if b["count"]]
    accuracy = np.array([bins[i]["accuracy"] for i in filled])
    confidence = np.array([bins[i]["confidence"] for i in filled])
    top.bar(
        lower[filled],
        accuracy,
        width=width,
        align="edge",
        color="#4c72b0",
        edgecolor="white",
        label="accuracy",
    )
    top.bar(
        lower[filled],
        confidence - accuracy,
        bottom=accuracy,
        width=width,
        align="edge",
        fill=False,
        hatch="//",
        edgecolor="#c44e52",
        linewidth=0.8,
        label="gap to the mean confidence",
    )
    top.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=1, label="perfectly calibrated")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy in the bin")
    top.legend(loc="upper left", fontsize=8)
    top.text(
        0.98,
        0.04,
        f"ECE {figures['ece']:.4f}\nNLL {figures['nll']:.4f}\nBrier {figures['brier']:.4f}",
        transform=top.transAxes,
        ha="right",
        va="bottom",
        fontsize=9,
        bbox={"facecolor": "white", "edgecolor": "#ccc"},
    )
    top.set_title(title, fontsize=10)
    counts = np.array([b["count"] for b in bins])
    bottom.bar(lower, counts, width=width, align="edge", color="#8c8c8c", edgecolor="white")
    bottom.set_yscale("symlog")
    bottom.set_ylabel("predictions")
    bottom.set_xlabel(f"confidence (top probability), {len(bins)} equal-width bins")
    bottom.set_xlim(0, 1)
    fig.tight_layout()
    return fig


def robustness_heatmap(robustness, title: str) -> Figure:
    """Accuracy per corruption (rows) and severity (columns), with the uncorrupted accuracy and each
    row's mean; `robustness` is a robustness.Robustness."""
    names, severities = list(robustness.accuracy), robustness.severities
    table = np.array([[robustness.accuracy[n][s] for s in severities] for n in names])
    means = robustness.by_corruption()
    fig, ax = plt.subplots(figsize=(1.1 * len(severities) + 4.2, 0.42 * len(names) + 1.6))
    image = ax.imshow(table, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(severities)), [f"severity {s}" for s in severities])
    ax.set_yticks(range(len(names)), [f"{n} (mean {means[n]:.1%})" for n in names])
    for i in range(len(names)):
        for j in range(len(severities)):
            value = table[i, j]
            ax.text(j, i, f"{value:.1%}", ha="center", va="center", fontsize=8, color="black")
    fig.colorbar(image, ax=ax, label="accuracy", format=matplotlib.ticker.PercentFormatter(1.0))
    ax.set_title(
        f"{title}: uncorrupted {robustness.uncorrupted_accuracy:.1%}, mean under corruption "
        f"{robustness.mean_corruption_accuracy:.1%} (relative drop {robustness.relative_drop:.1%})",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def duplicate_pair_grid(
    pairs: pd.DataFrame,
    images: dict[str, np.ndarray],
    class_names: list[str],
    title: str,
    columns: int = 4,
) -> Figure:
    """Pairs side by side (the audit's duplicates.parquet rows, in their order), each titled with
    split, index and class of both images, kind and distance; pixels unsmoothed."""
    if pairs.empty:
        return _empty_panel(title + "\n(no pairs)")
    rows = math.ceil(len(pairs) / columns)
    height = rows * 1.75 + 0.6
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 2.6, height), squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.6 / height, hspace=0.6, wspace=0.1)
    for ax in axes.flat:
        ax.axis("off")

    def name(label: int) -> str:
        return class_names[label] if 0 <= label < len(class_names) else "?"

    for ax, row in zip(axes.flat, pairs.itertuples(index=False), strict=False):
        a = images[row.split_a][int(row.index_a)]
        b = images[row.split_b][int(row.index_b)]
        gap = np.full((a.shape[0], 2, 3), 255, dtype=np.uint8)
        ax.imshow(np.concatenate([a, gap, b], axis=1), interpolation="nearest")
        ax.set_title(
            f"{row.split_a} #{int(row.index_a)} | {row.split_b} #{int(row.index_b)}\n"
            f"{name(int(row.label_a))} | {name(int(row.label_b))}\n{row.kind}, d={row.distance:.3f}",
            fontsize=7,
        )
    fig.suptitle(title, fontsize=10, y=1 - 0.15 / height, va="top")
    return fig


def class_balance_chart(balance: pd.DataFrame, title: str) -> Figure:
    """Share of each class per split (grouped bars), with each split's image count in the legend."""
    shares = balance / balance.sum().replace(0, 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(balance) + 2), 3.6))
    width = 0.8 / max(len(shares.columns), 1)
    x = np.arange(len(shares))
    colors = plt.get_cmap("tab10").colors
    for k, split in enumerate(shares.columns):
        ax.bar(
            x + (k - (len(shares.columns) - 1) / 2) * width,
            shares[split],
            width,
            label=f"{split} ({int(balance[split].sum()):,})",
            color=colors[k % len(colors)],
        )
    ax.axhline(1 / max(len(balance), 1), color="black", linewidth=0.8, linestyle=":", label="balanced")
    ax.set_xticks(x, balance.index, rotation=45, ha="right")
    ax.set_ylabel("share of the split")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# -- Sweep -----------------------------------------------------------------------------------------

STOPPED = "#d62728"


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _label(value) -> str:
    return "x".join(map(str, value)) if isinstance(value, list) else str(value)


def _numeric_axis(ax, xs: list[float]) -> None:
    """Log when the values span a decade or more; ticks at the values themselves when they are few
    (a grid), and every value inside the axis (the stopped trials' crosses are not autoscaled)."""
    low, high = min(xs), max(xs)
    log_scale = low > 0 and high / low >= 10
    if log_scale:
        ax.set_xscale("log")
        pad = (high / low) ** 0.08
        ax.set_xlim(low / pad, high * pad)
    else:
        pad = (high - low) * 0.08 or abs(low) * 0.1 or 1.0
        ax.set_xlim(low - pad, high + pad)
    distinct = sorted(set(xs))
    if len(distinct) <= 8:
        ax.set_xticks(distinct, [f"{x:g}" for x in distinct])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    elif log_scale:
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def sweep_parameters(ranking: dict) -> Figure:
    """Validation accuracy against each swept parameter (rank_sweep's ranking.json), one panel per
    parameter: finished trials as dots, the promoted ones as stars, trials that did not finish as
    red crosses along the bottom. Numbers on a numeric axis (log when they span a decade or more),
    other values (optimizer, widths, ...) as categories."""
    rows = ranking["trials"]
    keys = ranking["swept"] or ["trial"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False, sharey=True)
    for ax, key in zip(axes[0], keys, strict=True):
        values = [row["trial"] if key == "trial" else row["settings"][key] for row in rows]
        if all(_is_number(v) for v in values):
            xs = [float(v) for v in values]
            _numeric_axis(ax, xs)
        else:
            # in their natural order: widths by size, names alphabetically, false before true
            distinct = {_label(v): v for v in values}
            order = sorted(distinct, key=lambda text: distinct[text])
            xs = [order.index(_label(v)) for v in values]
            ax.set_xticks(range(len(order)), order, rotation=30 if len(order) > 3 else 0, ha="right")
            ax.set_xlim(-0.5, len(order) - 0.5)
        for kind, marker, size, color in (("finished", "o", 40, TRAIN), ("promoted", "*", 220, VAL)):
            chosen = [
                (x, row["val_accuracy"])
                for x, row in zip(xs, rows, strict=True)
                if row["outcome"] == "ok" and row["promoted"] == (kind == "promoted")
            ]
            if chosen:
                ax.scatter(
                    *zip(*chosen, strict=True), marker=marker, s=size, color=color, label=kind, zorder=3
                )
        stopped = [x for x, row in zip(xs, rows, strict=True) if row["outcome"] != "ok"]
        if stopped:  # no accuracy to plot: along the bottom edge, in axes coordinates
            ax.scatter(
                stopped,
                [0.04] * len(stopped),
                transform=ax.get_xaxis_transform(),
                marker="x",
                s=60,
                color=STOPPED,
                label="did not finish",
                zorder=3,
            )
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation accuracy")
    axes[0][0].yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    axes[0][0].margins(y=0.25)
    # below the panels: inside, it would hide the crosses along the bottom edge
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(f"Sweep {ranking['sweep']}: validation accuracy by setting", fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def sweep_curves(histories: dict[str, pd.DataFrame], sweep: str) -> Figure:
    """Validation accuracy and training loss per epoch of the best trials (name -> history, best
    first), one line each."""
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(9, 3.6))
    colors = plt.get_cmap("tab10").colors
    for i, (name, history) in enumerate(histories.items()):
        style = {
            "color": colors[i % len(colors)],
            "marker": "o" if len(history) <= 30 else None,
            "label": name,
        }
        acc.plot(history["epoch"], history["val_accuracy"], **style)
        loss.plot(history["epoch"], history["train_loss"], **style)
    for ax, label in ((acc, "validation accuracy"), (loss, "training loss")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    acc.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    acc.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"Sweep {sweep}: the {len(histories)} best trials by validation accuracy", fontsize=11)
    fig.tight_layout()
    return fig


def _axis_positions(values: list) -> tuple[list[float], list[float], list[str]]:
    """One parallel-coordinates axis: each value's height in [0, 1], and the ticks (heights, labels).
    Numbers on a linear scale, or a log one when they span a decade or more; other values (widths,
    optimizer, ...) as evenly spaced categories in their natural order."""
    if all(_is_number(v) for v in values):
        xs = [float(v) for v in values]
        low, high = min(xs), max(xs)
        log_scale = low > 0 and high / low >= 10
        scale = (lambda x: math.log10(x)) if log_scale else (lambda x: x)
        span = (scale(high) - scale(low)) or 1.0
        height = [(scale(x) - scale(low)) / span if high > low else 0.5 for x in xs]
        distinct = sorted(set(xs))
        if len(distinct) > 6:
            distinct = [low, high]
        ticks = [(scale(x) - scale(low)) / span if high > low else 0.5 for x in distinct]
        return height, ticks, [f"{x:g}" for x in distinct]
    distinct = {_label(v): v for v in values}
    order = sorted(distinct, key=lambda text: distinct[text])
    place = {text: (i / (len(order) - 1) if len(order) > 1 else 0.5) for i, text in enumerate(order)}
    return [place[_label(v)] for v in values], list(place.values()), order


def _rung_colors(count: int) -> list:
    cmap = plt.get_cmap("viridis")
    return [cmap(0.15 + 0.7 * k / max(1, count - 1)) for k in range(count)]


def sweep_coordinates(ranking: dict) -> Figure:
    """Parallel coordinates of every trial (rank_sweep's ranking.json): one vertical axis per swept
    setting and one for validation accuracy, each trial a line through its values. Finished trials
    in blue, the promoted ones thick orange; with successive halving, a trial stopped after rung k
    is coloured by k and ends at its accuracy there. A trial that did not train (diverged, failed)
    is a dashed red line ending at the bottom, below every accuracy."""
    rows = ranking["trials"]
    keys = list(ranking["swept"]) or ["trial"]
    halving = "rungs" in ranking
    accuracies = [row["val_accuracy"] for row in rows if _is_number(row.get("val_accuracy"))]
    low, high = (min(accuracies), max(accuracies)) if accuracies else (0.0, 1.0)
    span = (high - low) or 1.0
    fig, ax = plt.subplots(figsize=(max(5.0, 2.2 * (len(keys) + 1)), 4.2))
    columns = []
    for key in keys:
        values = [row["trial"] if key == "trial" else row["settings"][key] for row in rows]
        heights, ticks, labels = _axis_positions(values)
        columns.append(heights)
        i = len(columns) - 1
        for tick, label in zip(ticks, labels, strict=True):
            ax.text(i - 0.04, tick, label, ha="right", va="center", fontsize=7)
    gap = 0.12  # the did-not-train trials end below the accuracy axis' range
    heights = [
        (row["val_accuracy"] - low) / span if _is_number(row.get("val_accuracy")) else -gap for row in rows
    ]
    columns.append(heights)
    n = len(columns)
    for tick in (0.0, 0.5, 1.0):
        ax.text(n - 1 + 0.04, tick, f"{low + tick * span:.1%}", ha="left", va="center", fontsize=7)
    colors = _rung_colors(len(ranking.get("rungs", [])) - 1) if halving else []
    drawn: dict[str, object] = {}
    order = sorted(range(len(rows)), key=lambda j: (rows[j]["promoted"], rows[j]["outcome"] == "ok"))
    for j in order:  # the promoted last, on top
        row = rows[j]
        ys = [column[j] for column in columns]
        if row["promoted"]:
            style, label = {"color": VAL, "linewidth": 3, "zorder": 4}, "promoted"
        elif row["outcome"] == "ok":
            style, label = {"color": TRAIN, "linewidth": 1.5, "zorder": 3}, "finished"
        elif row["outcome"] == "stopped" and halving:
            rung = row.get("stopped_at_rung") or 0
            style = {"color": colors[rung], "linewidth": 1.2, "alpha": 0.8, "zorder": 2}
            label = f"stopped after rung {rung} ({epochs_text(ranking['rungs'][rung])})"
        else:
            style, label = {"color": STOPPED, "linewidth": 1, "linestyle": "--", "zorder": 1}, "did not train"
        (line,) = ax.plot(range(n), ys, marker="o", markersize=3, **style)
        drawn.setdefault(label, line)
    for i in range(n):
        ax.axvline(i, color="0.3", linewidth=0.8, zorder=0)
    ax.set_xticks(range(n), [*keys, "validation accuracy" + (" (where it stopped)" if halving else "")])
    ax.set_yticks([])
    ax.set_ylim(-gap - 0.06, 1.06)
    ax.set_xlim(-0.5, n - 0.5)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    labels = sorted(
        drawn,
        key=lambda text: ("promoted", "finished").index(text) if text in ("promoted", "finished") else 2,
    )
    fig.legend([drawn[k] for k in labels], labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8,
               frameon=False)  # fmt: skip
    fig.suptitle(f"Sweep {ranking['sweep']}: every trial's settings and validation accuracy", fontsize=11)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def sweep_rungs(ranking: dict, histories: dict[str, pd.DataFrame]) -> Figure:
    """Successive halving's rungs: each trial's validation accuracy at the end of every rung it
    trained (name -> its per-epoch history), a line from rung 0 to where it stopped, that point
    marked (x: stopped there, star: promoted to ship, dot: finished). Trials that did not train
    (diverged) as red crosses at the bottom of the rung where they stopped."""
    rungs = ranking["rungs"]
    rows = ranking["trials"]
    fig, ax = plt.subplots(figsize=(max(5.5, 1.6 * len(rungs) + 2), 4.2))
    colors = _rung_colors(len(rungs) - 1)
    annotate = len(rows) <= 12
    for row in rows:
        history = histories.get(row["trial"])
        points = []
        if history is not None and len(history):
            by_epoch = dict(zip(history["epoch"], history["val_accuracy"], strict=True))
            points = [(k, by_epoch[r]) for k, r in enumerate(rungs) if r in by_epoch]
        if row["outcome"] not in ("ok", "stopped") or not points:
            rung = row.get("stopped_at_rung") or 0
            ax.scatter([rung], [0.04], transform=ax.get_xaxis_transform(), marker="x", s=60, color=STOPPED,
                       zorder=3, label="did not train")  # fmt: skip
            continue
        xs, ys = zip(*points, strict=True)
        if row["promoted"]:
            color, marker, size = VAL, "*", 220
        elif row["outcome"] == "ok":
            color, marker, size = TRAIN, "o", 50
        else:
            color, marker, size = colors[xs[-1]], "x", 60
        ax.plot(xs, ys, color=color, linewidth=2.5 if row["promoted"] else 1, alpha=0.85, zorder=2)
        ax.scatter([xs[-1]], [ys[-1]], marker=marker, s=size, color=color, zorder=3)
        if annotate:
            ax.annotate(row["trial"], (xs[-1], ys[-1]), xytext=(6, 0), textcoords="offset points", fontsize=7,
                        va="center")  # fmt: skip
    entered = [sum(1 for row in rows if _reached(row, k, len(rungs))) for k in range(len(rungs))]
    ax.set_xticks(range(len(rungs)), [f"rung {k}\n{epochs_text(r)}\n{n} trials" for k, (r, n) in
                                      enumerate(zip(rungs, entered, strict=True))])  # fmt: skip
    ax.set_xlim(-0.4, len(rungs) - 0.4)
    ax.set_ylabel("validation accuracy at the rung's end")
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.margins(y=0.15)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    if unique:
        ax.legend(unique.values(), unique.keys(), fontsize=8, loc="lower right")
    fig.suptitle(
        f"Sweep {ranking['sweep']}: successive halving (eta {ranking['eta']}), where each trial stopped",
        fontsize=11,
    )
    fig.tight_layout()
    return fig


def _reached(row: dict, rung: int, rungs: int) -> bool:
    """Whether a trial trained rung `rung`: all of them rung 0; a finished one every rung."""
    if row["outcome"] == "ok":
        return True
    stopped = row.get("stopped_at_rung")
    return rung == 0 or (stopped is not None and rung <= stopped)
