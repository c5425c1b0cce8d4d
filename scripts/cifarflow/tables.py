"""The report's tables: self-contained HTML pages (the Snakemake report shows HTML, while CSV and
JSON only become download links; pages.py holds their shell and formatters), the experiment
comparison, and the headline RST of workflow.rst."""

from __future__ import annotations

import html
import math
import statistics
from collections.abc import Mapping
from typing import Any

import pandas as pd

from .errors import PipelineError
from .pages import html_page, num, pct
from .pages import text as _text


def html_table(
    frame: pd.DataFrame,
    row_classes: Mapping[int, str] | None = None,
    cell_classes: Mapping | None = None,
    text_columns: int = 1,
) -> str:
    """`frame` (already formatted as text) as an HTML table; every value is escaped.
    `row_classes`: row position -> CSS class; `cell_classes`: (row position, column) -> CSS class;
    the first `text_columns` columns are left-aligned, the rest (numbers) right-aligned."""
    row_classes, cell_classes = row_classes or {}, cell_classes or {}
    left = set(frame.columns[:text_columns])

    def attr(*classes: str | None) -> str:
        css = " ".join(c for c in classes if c)
        return f' class="{css}"' if css else ""

    head = "".join(
        f"<th{attr('text' if c in left else None)}>{html.escape(str(c))}</th>" for c in frame.columns
    )
    rows = []
    for i, values in enumerate(frame.itertuples(index=False)):
        cells = []
        for column, value in zip(frame.columns, values, strict=True):
            css = attr(cell_classes.get((i, column)), "text" if column in left else None)
            cells.append(f"<td{css}>{html.escape(_text(value))}</td>")
        rows.append(f"<tr{attr(row_classes.get(i))}>{''.join(cells)}</tr>")
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>"


# -- Data ------------------------------------------------------------------------------------------


def class_counts(meta: dict) -> pd.DataFrame:
    """Images per class and split (meta.json's counts), with a total column and a total row."""
    counts = pd.DataFrame(meta["counts"]).reindex(meta["class_names"])
    counts = counts[[split for split in ("train", "val", "test") if split in counts]]
    counts["all splits"] = counts.sum(axis=1)
    counts.loc["total"] = counts.sum()
    counts.index.name = "class"
    return counts.astype(int).reset_index()


def class_counts_html(meta: dict) -> str:
    frame = class_counts(meta)
    shown = frame.astype(object)
    shown.iloc[:, 1:] = frame.iloc[:, 1:].map(num)
    body = html_table(shown, {len(frame) - 1: "total"})
    note = (
        f"Dataset {meta['dataset_id']} (source: {meta['source']}), {len(meta['class_names'])} classes. "
        "val is held out from train for model selection; test is never used to choose anything."
    )
    return html_page("Images per class and split", body, note)


# -- Training --------------------------------------------------------------------------------------

HISTORY_COLUMNS = {
    "epoch": ("epoch", "{:.0f}"),
    "train_loss": ("train loss", "{:.4f}"),
    "train_accuracy": ("train accuracy", "pct"),
    "val_loss": ("val loss", "{:.4f}"),
    "val_accuracy": ("val accuracy", "pct"),
    "lr": ("learning rate", "{:.4g}"),
    "seconds": ("seconds", "{:.1f}"),
    "images_per_second": ("images/s", "{:,.0f}"),
}


def history_html(history: pd.DataFrame, experiment: str) -> str:
    """history.csv as a table, one row per epoch; the best val accuracy's row in bold."""
    shown = [c for c in HISTORY_COLUMNS if c in history]
    frame = pd.DataFrame(
        {
            HISTORY_COLUMNS[c][0]: [
                pct(v) if HISTORY_COLUMNS[c][1] == "pct" else HISTORY_COLUMNS[c][1].format(v)
                for v in history[c]
            ]
            for c in shown
        }
    )
    best = int(history["val_accuracy"].to_numpy().argmax())
    note = (
        "Train figures are measured during the epoch, on augmented images; val figures at its end "
        "(on the averaged weights that get exported when EMA is on). Bold: best val accuracy."
    )
    return html_page(f"Training history: {experiment}", html_table(frame, {best: "best"}), note)


# -- Export ----------------------------------------------------------------------------------------


def export_html(export: dict, parity_limits: dict, experiment: str, quantize: dict | None = None) -> str:
    """export_onnx's metrics.json as a table: the parity gate (figure, limit, pass) and speed/size."""
    passes = {
        "argmax_agreement": export["argmax_agreement"] >= parity_limits["min_argmax_agreement"],
        "max_probability_diff": export["max_probability_diff"] <= parity_limits["max_probability_diff"],
        "accuracy_diff": export["accuracy_diff"] <= parity_limits["max_accuracy_diff"],
    }
    e, limits = export, parity_limits
    # (group, figure, value, gate, metric whose gate decides pass/FAIL)
    rows = [
        (
            "parity",
            "argmax agreement, ONNX Runtime vs PyTorch",
            pct(e["argmax_agreement"], 3),
            f">= {pct(limits['min_argmax_agreement'], 3)}",
            "argmax_agreement",
        ),
        (
            "parity",
            "max |probability difference|",
            f"{e['max_probability_diff']:.2e}",
            f"<= {limits['max_probability_diff']:.0e}",
            "max_probability_diff",
        ),
        ("parity", "max |logit difference|", f"{e['max_logit_diff']:.2e}", "", None),
        ("parity", "test accuracy, PyTorch", pct(e["torch_test_accuracy"]), "", None),
        ("parity", "test accuracy, ONNX Runtime", pct(e["onnx_test_accuracy"]), "", None),
        (
            "parity",
            "accuracy difference",
            f"{e['accuracy_diff'] * 100:.3f} points",
            f"<= {limits['max_accuracy_diff'] * 100:.3f} points",
            "accuracy_diff",
        ),
        ("speed", "latency, batch 1, p50", f"{e['latency_ms_p50']:.2f} ms", "", None),
        ("speed", "latency, batch 1, p99", f"{e['latency_ms_p99']:.2f} ms", "", None),
        ("speed", "throughput, batch 256", f"{num(e['throughput_images_per_second'])} images/s", "", None),
        ("size", "model.onnx", f"{e['model_bytes'] / 1e6:.2f} MB", "", None),
    ]
    if quantize:
        q = quantize
        rows += [
            ("int8", "test accuracy, int8", pct(q["int8_test_accuracy"]), "", None),
            ("int8", "accuracy drop vs fp32", f"{q['accuracy_drop'] * 100:.2f} points", "", None),
            (
                "int8",
                "throughput, batch 256, int8",
                f"{num(q['int8_throughput_images_per_second'])} images/s",
                "",
                None,
            ),
            ("int8", "speed-up over fp32", f"{q['speedup']:.2f}x", "", None),
            ("int8", "model.int8.onnx", f"{q['model_bytes'] / 1e6:.2f} MB", "", None),
        ]
    frame = pd.DataFrame(
        [
            (group, name, value, gate, ("pass" if passes[key] else "FAIL") if key else "")
            for group, name, value, gate, key in rows
        ],
        columns=["", "figure", "value", "gate", "result"],
    )
    cells = {(i, "result"): "pass" if r == "pass" else "fail" for i, r in enumerate(frame["result"]) if r}
    note = (
        "Parity over the whole test split: the exported graph (uint8 images in, preprocessing and TTA "
        "inside) against the PyTorch model. Speed: ONNX Runtime in-process on this machine's CPU threads."
    )
    table = html_table(frame, cell_classes=cells, text_columns=2)
    return html_page(f"ONNX export: {experiment}", table, note)


# -- Serving ---------------------------------------------------------------------------------------

MANIFEST_FIELDS = (
    ("engine", "engine"),
    ("image", "image reference"),
    ("image_id", "image id / digest"),
    ("image_size_bytes", "image size"),
    ("build_seconds", "build time"),
    ("model_name", "served model name"),
    ("model_sha256", "model.onnx sha256"),
    ("dataset_id", "dataset id"),
    ("experiment", "experiment"),
)


def manifest_html(manifest: dict, experiment: str) -> str:
    """build_serving_image's manifest.json as a field/value table (unknown extra fields last)."""
    missing = [key for key, _ in MANIFEST_FIELDS if key not in manifest]
    if missing:
        raise PipelineError(f"serving manifest lacks {missing}; rerun build_serving_image")

    def show(key: str, value: Any) -> str:
        if key == "image_size_bytes":
            return "n/a (the engine does not report it)" if value is None else f"{value / 1e6:,.1f} MB"
        if key == "build_seconds":
            return f"{value:.1f} s"
        return _text(value)

    rows = [(label, show(key, manifest[key])) for key, label in MANIFEST_FIELDS]
    known = {key for key, _ in MANIFEST_FIELDS}
    rows += [(key, _text(manifest[key])) for key in sorted(manifest) if key not in known]
    frame = pd.DataFrame(rows, columns=["field", "value"])
    note = "What build_serving_image produced: the image that evaluate_served_model started and measured."
    return html_page(f"Serving image: {experiment}", html_table(frame, text_columns=2), note)


# -- Evaluation ------------------------------------------------------------------------------------


def per_class_frame(metrics: dict, class_names: list[str], support: Mapping[int, int]) -> pd.DataFrame:
    """Precision, recall, F1 and test images per class from evaluate's metrics.json, plus the macro
    average; numbers, not text."""
    missing = [
        f"{kind}_{name}"
        for name in class_names
        for kind in ("precision", "recall")
        if f"{kind}_{name}" not in metrics
    ]
    if missing:
        raise PipelineError(
            f"evaluation metrics lack {missing[:4]}{' ...' if len(missing) > 4 else ''}: "
            "they do not match this dataset's classes; rerun evaluate_served_model"
        )
    rows = []
    for cls, name in enumerate(class_names):
        p, r = metrics[f"precision_{name}"], metrics[f"recall_{name}"]
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        rows.append((name, p, r, f1, int(support.get(cls, 0))))
    frame = pd.DataFrame(rows, columns=["class", "precision", "recall", "F1", "test images"])
    macro = (
        "macro average",
        frame["precision"].mean(),
        frame["recall"].mean(),
        frame["F1"].mean(),
        int(frame["test images"].sum()),
    )
    frame.loc[len(frame)] = macro
    return frame


def per_class_html(metrics: dict, class_names: list[str], support: Mapping[int, int], experiment: str) -> str:
    frame = per_class_frame(metrics, class_names, support)
    weakest = int(frame["F1"].iloc[:-1].to_numpy().argmin())
    shown = frame.assign(
        precision=frame["precision"].map(pct),
        recall=frame["recall"].map(pct),
        F1=frame["F1"].map(pct),
        **{"test images": frame["test images"].map(num)},
    )
    note = (
        f"The served model on the test split: accuracy {pct(metrics['accuracy'])}, macro F1 "
        f"{pct(metrics['macro_f1'])}. Red: the weakest class by F1, {frame['class'][weakest]}."
    )
    rows = {len(frame) - 1: "total", weakest: "weak"}
    return html_page(f"Per-class precision and recall: {experiment}", html_table(shown, rows), note)


# -- Comparison ------------------------------------------------------------------------------------


def comparison_frame(experiments: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per experiment (index), numbers only. Each value of `experiments` holds `recipe`,
    `train` and `export` (metrics.json), and, once served, `evaluate`, `manifest`, `registration`."""
    rows = {}
    for name, parts in experiments.items():
        train, export = parts["train"], parts["export"]
        evaluate, registration = parts.get("evaluate") or {}, parts.get("registration") or {}
        manifest = parts.get("manifest") or {}
        rows[name] = {
            "model": parts["recipe"]["model"],
            "epochs": train["epochs"],
            "parameters": train["parameters"],
            "val_accuracy": train["val_accuracy"],
            "test_accuracy": train["test_accuracy"],
            "served_accuracy": evaluate.get("accuracy", math.nan),
            "clean_accuracy": evaluate.get("clean_accuracy", math.nan),
            "macro_f1": evaluate.get("macro_f1", math.nan),
            "train_seconds": train["train_seconds"],
            "train_images_per_second": train["images_per_second"],
            "argmax_agreement": export["argmax_agreement"],
            "model_megabytes": export["model_bytes"] / 1e6,
            "onnx_images_per_second": export["throughput_images_per_second"],
            "served_images_per_second": evaluate.get("throughput_images_per_second", math.nan),
            "latency_ms_p95": evaluate.get("latency_ms_p95", math.nan),
            "mismatches": evaluate.get("mismatches", math.nan),
            "engine": manifest.get("engine"),
            "registered_version": registration.get("version", math.nan),
            "champion": bool(registration.get("champion", False)) if registration else None,
        }
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "experiment"
    return frame


def champion(experiments: Mapping[str, Mapping[str, Any]]) -> tuple[str | None, dict | None]:
    """(experiment, registration) holding the champion alias after this run's registrations: the
    champion version named by the latest registration; (None, None) when nothing was registered."""
    registered = {n: p["registration"] for n, p in experiments.items() if p.get("registration")}
    if not registered:
        return None, None
    latest = max(registered.values(), key=lambda r: r["version"])
    for name, registration in registered.items():
        if registration["version"] == latest["champion_version"]:
            return name, registration
    return None, latest  # the champion is a version from an earlier run


def _served_matches(mismatches: float) -> str:
    if math.isnan(mismatches):
        return "n/a"
    return "yes" if mismatches == 0 else f"no: {mismatches:,.0f} differ"


# (column of comparison_frame, label, formatter) of every figure the comparison shows, in its order;
# the headline table of the report's start page (summary_rst) shows those of HEADLINE
COMPARISON_COLUMNS = (
    ("model", "model", str),
    ("epochs", "epochs", num),
    ("parameters", "parameters", num),
    ("val_accuracy", "val accuracy", pct),
    ("test_accuracy", "test accuracy", pct),
    ("served_accuracy", "served accuracy", pct),
    ("clean_accuracy", "clean test accuracy", pct),
    ("macro_f1", "served macro F1", pct),
    ("train_seconds", "train time (s)", lambda v: num(v, 1)),
    ("train_images_per_second", "train images/s", num),
    ("argmax_agreement", "ONNX = PyTorch", lambda v: pct(v, 2)),
    ("model_megabytes", "ONNX size (MB)", lambda v: num(v, 2)),
    ("onnx_images_per_second", "ONNX images/s", num),
    ("served_images_per_second", "served images/s", num),
    ("latency_ms_p95", "served p95 latency (ms)", lambda v: num(v, 1)),
    ("mismatches", "served = offline", _served_matches),
    ("engine", "engine", _text),
    ("registered_version", "registered version", num),
)
HEADLINE = (
    "test_accuracy",
    "clean_accuracy",
    "train_seconds",
    "argmax_agreement",
    "mismatches",
    "served_images_per_second",
    "latency_ms_p95",
)


def comparison_html(frame: pd.DataFrame, champion_name: str | None) -> str:
    """One column per experiment (they line up side by side however many figures there are), one
    row per figure; the champion's column in bold."""
    headers = [f"{n} (champion)" if n == champion_name else str(n) for n in frame.index]
    shown = pd.DataFrame(
        [[label, *(fmt(v) for v in frame[column])] for column, label, fmt in COMPARISON_COLUMNS],
        columns=["figure", *headers],
    )
    cells = {}
    if champion_name in frame.index:
        column = headers[list(frame.index).index(champion_name)]
        cells = {(i, column): "champion" for i in range(len(shown))}
    stats = comparison_metrics(frame)
    note = (
        f"{len(frame)} experiments on the same dataset and test split; test accuracy "
        f"{pct(stats['test_accuracy_mean'])} ± {stats['test_accuracy_std'] * 100:.2f} points (mean ± std). "
        "Test accuracy is the trained model's; served figures come from the model running in its "
        "serving image, measured over the network. Bold: the registered champion. n/a: not measured."
    )
    return html_page("Experiments side by side", html_table(shown, cell_classes=cells), note)


def comparison_metrics(frame: pd.DataFrame) -> dict[str, float]:
    """Accuracy across experiments as mean and std (metrics.json of compare_experiments)."""
    accuracy = frame["test_accuracy"].astype(float)
    return {
        "experiments": len(frame),
        "test_accuracy_mean": round(float(accuracy.mean()), 5),
        "test_accuracy_std": round(statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0, 5),
        "test_accuracy_best": round(float(accuracy.max()), 5),
    }


def summary_rst(frame: pd.DataFrame, champion_name: str | None, registration: dict | None) -> str:
    """The headline results that report/workflow.rst includes, in RST: one row per experiment, the
    figures of HEADLINE under the comparison's labels, and the registered model. Kept short: the
    report clips the top of a description taller than the window (report/report.css widens its
    column so that the table fits beside the workflow graph)."""
    columns = [(column, label, fmt) for column, label, fmt in COMPARISON_COLUMNS if column in HEADLINE]
    lines = [".. list-table::", "   :header-rows: 1", "", "   * - experiment"]
    lines += [f"     - {_rst(label)}" for _, label, _ in columns]
    for name, row in frame.iterrows():
        mark = " (**champion**)" if name == champion_name else ""
        lines.append(f"   * - ``{name}``{mark}")
        lines += [f"     - {_rst(fmt(row[column]))}" for column, _, fmt in columns]
    lines.append("")
    if registration is None:
        lines.append("**Registered**: nothing in this run (no serving stage).")
    elif champion_name is None:
        lines.append(
            f"**Registered**: ``{registration['name']}``; its ``champion`` alias stays on version "
            f"{registration['champion_version']}, from an earlier run."
        )
    else:
        lines.append(
            f"**Registered**: ``{registration['name']}`` version {registration['version']}, from "
            f"``{champion_name}`` (served accuracy {pct(registration['accuracy'])}), holds the "
            "``champion`` alias."
        )
    return "\n".join(lines) + "\n"


def recipes_html(recipes: Mapping[str, Mapping[str, Any]]) -> str:
    """The resolved recipe of every experiment side by side; rows that differ in bold."""
    names = list(recipes)
    keys = sorted({key for recipe in recipes.values() for key in recipe})
    frame = pd.DataFrame(
        [(key, *(_text(recipes[n].get(key)) for n in names)) for key in keys], columns=["key", *names]
    )
    differ = {i: "best" for i, key in enumerate(keys) if len({repr(recipes[n].get(key)) for n in names}) > 1}
    note = "The `train` config merged with each experiment's overrides. Bold: keys the experiments differ in."
    return html_page("Recipes side by side", html_table(frame, differ, text_columns=len(frame.columns)), note)


def _rst(text: str) -> str:
    """Plain text in an RST table cell: escape the characters RST would read as markup."""
    for char in ("\\", "*", "`", "|", "_"):
        text = text.replace(char, "\\" + char)
    return text


# -- Sweep -----------------------------------------------------------------------------------------


def _setting(value: Any) -> str:
    if isinstance(value, list):
        return "x".join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def _outcome(row: Mapping[str, Any]) -> str:
    """promoted, ok, or what stopped the training and why (the reason once: 'training diverged: ...')."""
    if row["promoted"]:
        return "promoted"
    reason = row["reason"] or ""
    if not reason or reason.startswith(f"training {row['outcome']}"):
        return reason or row["outcome"]
    return f"{row['outcome']}: {reason}"


def sweep_ranking_html(ranking: Mapping[str, Any]) -> str:
    """Every trial of a sweep, best first (rank_sweep's ranking.json): its settings, validation and
    test accuracy, training time; the promoted trials in bold, those that did not finish in red with
    their reason. Keys fixed for every trial go in the note."""
    rows, swept = ranking["trials"], ranking["swept"]
    fixed = {k: v for k, v in rows[0]["settings"].items() if k not in swept}
    frame = pd.DataFrame(
        [
            {
                "rank": "-" if row["rank"] is None else str(row["rank"]),
                "trial": row["trial"],
                **{key: _setting(row["settings"].get(key)) for key in swept},
                "val accuracy": pct(row["val_accuracy"]),
                "test accuracy": pct(row["test_accuracy"]),
                "train time (s)": num(row["train_seconds"], 1),
                "epochs": num(row["epochs"]),
                "outcome": _outcome(row),
            }
            for row in rows
        ]
    )
    classes = {i: "best" for i, row in enumerate(rows) if row["promoted"]}
    wrap = {(i, "outcome"): "wrap" for i in range(len(rows))}  # a reason is a sentence: it wraps
    classes |= {i: "weak" for i, row in enumerate(rows) if row["outcome"] != "ok"}
    finished = sum(row["outcome"] == "ok" for row in rows)
    fixed_text = ", ".join(f"{k}={_setting(v)}" for k, v in fixed.items())
    note = (
        f"Sweep '{ranking['sweep']}' ({ranking['method']}): {len(rows)} trials, {finished} finished. "
        "Ranked by validation accuracy, the split held out for choosing; test accuracy is shown and "
        f"never used to choose. Bold: the {len(ranking['promoted'])} promoted (exported, served, "
        "evaluated, registered). Red: trials that did not finish, with the reason."
        + (f" Every trial: {fixed_text}; the rest of the recipe is `train`." if fixed_text else "")
    )
    return html_page(
        f"Sweep {ranking['sweep']}: trials ranked by validation accuracy",
        html_table(frame, classes, wrap, text_columns=2 + len(swept)),
        note,
    )


# -- Robustness ------------------------------------------------------------------------------------


def robustness_html(robustness, experiment: str) -> str:
    """Accuracy per corruption and severity (a robustness.Robustness), each row's mean and mean
    confidence, the uncorrupted accuracy above and the mean per severity below; the worst row red."""
    severities = robustness.severities
    means = robustness.by_corruption()
    rows = []
    for name, row in robustness.accuracy.items():
        confidence = robustness.confidence.get(name, {})
        mean_confidence = sum(confidence.values()) / len(confidence) if confidence else math.nan
        rows.append([name, *(pct(row[s]) for s in severities), pct(means[name]), pct(mean_confidence)])
    by_severity = robustness.by_severity()
    rows.append(
        ["mean", *(pct(by_severity[s]) for s in severities), pct(robustness.mean_corruption_accuracy), ""]
    )
    frame = pd.DataFrame(
        rows, columns=["corruption", *(f"severity {s}" for s in severities), "mean", "mean confidence"]
    )
    worst_row = list(robustness.accuracy).index(min(means, key=means.get))
    note = (
        f"The exported graph in ONNX Runtime on {robustness.images:,} test images, corrupted in the style of "
        f"CIFAR-10-C (seed {robustness.seed}). Uncorrupted accuracy {pct(robustness.uncorrupted_accuracy)}; "
        f"mean under corruption {pct(robustness.mean_corruption_accuracy)}, a relative drop of "
        f"{pct(robustness.relative_drop)}. Mean confidence: the average top probability, to set against "
        "the accuracy. Red: the hardest corruption."
    )
    table = html_table(frame, {len(frame) - 1: "total", worst_row: "weak"})
    return html_page(f"Accuracy under corruption: {experiment}", table, note)


# -- Software versions -----------------------------------------------------------------------------


def environments(jobs: Mapping[str, Mapping[str, str]]) -> list[tuple[str, list[str], dict[str, str]]]:
    """Jobs grouped by the software they ran with: (name, jobs, versions) per distinct environment,
    in order of first appearance. `gpu` (recorded only by jobs that loaded torch) does not split a
    group; a group's gpu is that of its jobs which checked."""
    groups: dict[tuple, tuple[list[str], dict[str, str]]] = {}
    for job, versions in jobs.items():
        key = tuple(sorted((k, v) for k, v in versions.items() if k != "gpu"))
        members, merged = groups.setdefault(key, ([], dict(versions)))
        members.append(job)
        merged.update({k: v for k, v in versions.items() if k == "gpu"})
    named: list[tuple[str, list[str], dict[str, str]]] = []
    seen: dict[str, int] = {}
    for members, versions in groups.values():
        image = versions.get("image", "")
        base = (
            "not recorded"
            if "not recorded" in versions
            else ("host" if not image or image.startswith("none") else image)
        )
        seen[base] = seen.get(base, 0) + 1
        named.append((base if seen[base] == 1 else f"{base} ({seen[base]})", members, versions))
    return named


def versions_html(jobs: Mapping[str, Mapping[str, str]]) -> str:
    """The software every job ran with (what each job's log records, as its MLflow run's version.*
    tags): one column per distinct environment, then which job ran in which."""
    groups = environments(jobs)
    keys = list(dict.fromkeys(k for _, _, versions in groups for k in versions))
    software = pd.DataFrame(
        [[key, *(versions.get(key, "-") for _, _, versions in groups)] for key in keys],
        columns=["software", *(name for name, _, _ in groups)],
    )
    placement = pd.DataFrame(
        [(job, name) for name, members, _ in groups for job in members], columns=["job", "environment"]
    )
    note = (
        f"{len(jobs)} jobs in {len(groups)} environment(s). Each job records the versions it ran with "
        "at its start (its log's 'software versions' line; the MLflow hook sets them as version.* tags "
        "of the job's run). image: the pipeline image (CIFARFLOW_IMAGE) or the host's environment; "
        "image_digest: known inside a job only when passed as CIFARFLOW_IMAGE_DIGEST. cuda/cudnn: of "
        "the installed torch; gpu: recorded by the jobs that loaded torch."
    )
    body = html_table(software, text_columns=len(software.columns)) + "\n<h1>Jobs</h1>\n"
    body += html_table(placement, text_columns=2)
    return html_page("Software versions", body, note)
