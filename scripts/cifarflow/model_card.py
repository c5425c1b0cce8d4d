"""The model card of a registered version: Markdown and HTML from the run's own outputs.

Every figure on the card is read from a file the run wrote (metrics.json of each stage, the dataset's
meta.json, the serving image's manifest, the registration, the versions each job recorded, the audit
when there is one); the text around them names what they are. The card is built once as a list of
blocks and rendered twice, so the Markdown and the HTML show the same figures; the HTML in the page shell
of the report's tables (pages.py). Standard library only.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from typing import Any

from .pages import html_page, pct

# Where the card reads the audit's figures (results/audit/<dataset-id>/metrics.json) and the accuracy
# on the test images without a train/val near-duplicate (the evaluation's metrics.json).
AUDIT_KEYS = (
    ("test_with_train_duplicate_count", "test images with a near-duplicate in train or val"),
    ("test_with_train_duplicate_fraction", "share of the test split"),
    ("train_internal_duplicate_pairs", "near-duplicate pairs within train"),
    ("exact_duplicate_pairs", "exact duplicate pairs (all splits)"),
    ("anomalies", "anomalous images (constant, near-black/white, one channel, ...)"),
)
CLEAN_ACCURACY_KEYS = ("clean_test_accuracy", "clean_accuracy")
WORST = 3  # classes and corruptions named under Limitations
CALIBRATION_KEYS = {"ece", "nll", "brier", "mean_confidence"}
LABEL_ISSUE_KEYS = {
    "test_label_issue_count",
    "test_label_issue_fraction",
    "accuracy_without_label_issues",
    "images_without_label_issues",
    "accuracy_without_both",
    "images_without_both",
}
LABEL_ISSUES = (
    "Suspected label errors: test images whose given label the served model confidently contradicts, "
    "found by confident learning on the served model's test probabilities "
    "(`results/evaluate/<experiment>/label_issues.parquet`, the report's Evaluation category). The model "
    "judges the labels it is measured on, so its own errors can be among the suspects, and every suspect "
    "is an image it gets wrong: the accuracy without them is never lower than the full figure, and no "
    "measure of the model."
)
NO_LABEL_ISSUES = (
    "Not in this evaluation's metrics.json, written before evaluations looked for label errors: rerun "
    "evaluate_served_model (snakemake --forcerun evaluate_served_model)."
)
TRAIN_LABEL_ISSUES = (
    "Train and val: confident learning on {folds}-fold cross-validated probabilities (each image scored "
    "by a model trained on the other folds; `results/audit/<dataset-id>/label_issues/`, the report's "
    "Data category). The model above trained on these labels, suspects included."
)
NO_TRAIN_LABEL_ISSUES = (
    "Train and val were not examined for label errors: that needs K cross-validation trainings, "
    "off by default (audit.label_issues.folds, docs/audit.md)."
)
NO_CALIBRATION = (
    "Not in this evaluation's metrics.json, written before evaluations measured calibration: "
    "rerun evaluate_served_model (snakemake --forcerun evaluate_served_model)."
)
NO_DECISION = (
    "Not in this registration.json, written before the champion rule compared paired predictions: "
    "rerun register_model (snakemake --forcerun register_model)."
)
CHAMPION_RULE = (
    "The alias moves to a new version of the same dataset only when, on the same validation images, "
    "it is better than the version holding it by an exact one-sided McNemar test on the two models' "
    "paired correct/incorrect predictions (p < register.challenger.alpha), its validation ECE is at "
    "most register.challenger.max_ece_increase above the holder's, and its mean corruption accuracy "
    "on validation images at most register.challenger.max_corruption_drop below (docs/serving.md). "
    "Test figures never decide."
)


@dataclass
class CardInputs:
    """What the card is made of: each a file of the run, as read (dicts from JSON)."""

    experiment: str
    registration: dict  # register_model: name, version, model_uri, champion, champion_version, ...
    manifest: dict  # build_serving_image's manifest.json
    evaluation: dict  # evaluate_served_model's metrics.json
    export: dict  # export_onnx's metrics.json
    train: dict  # train_model's metrics.json
    meta: dict  # the dataset's meta.json
    recipe: dict  # the resolved training recipe (the ONNX graph's metadata)
    recipe_sha256: str  # its sha256 (the ONNX graph's metadata)
    config_sha256: str  # of the settings that made this model (rules/serve.smk)
    versions: dict[str, dict[str, str]] = field(default_factory=dict)  # job -> software versions
    robustness: dict | None = None  # evaluate_robustness's robustness.json
    audit: dict | None = None  # audit_dataset's metrics.json
    train_label_issues: dict | None = None  # find_label_issues' metrics.json (audit.label_issues.folds)


# -- formatting: one place, so the tests can compare what the card shows with the inputs --------------
# (pct, shared with the report's tables, is pages.py's)


def number(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def ms(value: float) -> str:
    return f"{value:.2f} ms"


def rate(value: float) -> str:
    return f"{value:,.0f} images/s"


def revision(source_revision: str) -> tuple[str, str]:
    """(commit, dirty flag) from the manifest's source_revision ('<sha>[-dirty]' or 'unknown')."""
    if not source_revision or source_revision == "unknown":
        return "unknown (not built from a git checkout)", "unknown"
    dirty = source_revision.endswith("-dirty")
    return source_revision.removesuffix(
        "-dirty"
    ), "yes: tracked files had uncommitted changes" if dirty else "no"


def clean_accuracy(evaluation: dict) -> float | None:
    for key in CLEAN_ACCURACY_KEYS:
        if isinstance(evaluation.get(key), int | float):
            return float(evaluation[key])
    return None


def worst_classes(
    evaluation: dict, class_names: list[str], count: int = WORST
) -> list[tuple[str, float, float]]:
    """(class, recall, precision) of the `count` classes with the lowest recall, lowest first."""
    rows = [(name, evaluation[f"recall_{name}"], evaluation[f"precision_{name}"]) for name in class_names]
    return sorted(rows, key=lambda row: (row[1], row[0]))[:count]


def robustness_table(robustness: dict) -> tuple[list[str], list[int], dict[str, dict[int, float]]]:
    severities = [int(s) for s in robustness["severities"]]
    names = robustness.get("corruptions") or list(robustness["accuracy"])  # the configured order
    table = {name: {int(s): float(a) for s, a in robustness["accuracy"][name].items()} for name in names}
    return names, severities, table


def robustness_summary(robustness: dict) -> dict[str, float]:
    """mean corruption accuracy and relative drop, recomputed from the table exactly as robustness.py does."""
    _, _, table = robustness_table(robustness)
    values = [a for row in table.values() for a in row.values()]
    mean = sum(values) / len(values)
    clean = float(robustness["uncorrupted_accuracy"])
    return {"mean": mean, "drop": 1.0 - mean / clean if clean else 0.0}


def worst_corruptions(robustness: dict, count: int = WORST) -> list[tuple[str, float, float]]:
    """(corruption, mean accuracy over severities, accuracy at the highest severity), lowest mean first."""
    _, severities, table = robustness_table(robustness)
    rows = [(name, sum(row.values()) / len(row), row[max(severities)]) for name, row in table.items()]
    return sorted(rows, key=lambda row: (row[1], row[0]))[:count]


# -- the card as blocks -------------------------------------------------------------------------------

Block = tuple  # ("h1"|"h2"|"h3"|"p", text) | ("ul", [text]) | ("table", header, rows)


def _data_section(c: CardInputs, blocks: list[Block]) -> None:
    meta, names = c.meta, c.meta["class_names"]
    blocks += [
        ("h2", "Data"),
        (
            "ul",
            [
                f"Dataset id: `{meta['dataset_id']}` (source: {meta['source']})",
                f"Source checksum: `{meta.get('source_checksum', 'not recorded')}`",
                f"Classes ({len(names)}): {', '.join(names)}",
                "Splits: " + ", ".join(f"{split} {number(n)}" for split, n in meta["sizes"].items()),
            ],
        ),
    ]
    splits = [s for s in ("train", "val", "test") if s in meta["counts"]]
    rows = [[name, *(number(meta["counts"][s].get(name, 0)) for s in splits)] for name in names]
    rows.append(["total", *(number(sum(meta["counts"][s].values())) for s in splits)])
    blocks.append(("table", ["class", *splits], rows))
    blocks.append(("h3", "Audit"))
    if c.audit is None:
        blocks.append(
            ("p", "No dataset audit ran in this workflow: duplicates across splits were not checked.")
        )
        return
    items = []
    for key, label in AUDIT_KEYS:
        if key in c.audit:
            value = c.audit[key]
            shown = pct(value) if key.endswith("_fraction") else _audit_value(value)
            items.append(f"{label}: {shown}")
    clean = clean_accuracy(c.evaluation)
    if clean is not None:
        count = c.evaluation.get("clean_images")
        on = f" on {number(count)} images" if isinstance(count, int) else ""
        items.append(
            f"accuracy as served on the test images without such a near-duplicate: {pct(clean)}{on} "
            f"(all test images: {pct(c.evaluation['accuracy'])})"
        )
    blocks.append(("ul", items))


def _label_issues_section(c: CardInputs, blocks: list[Block]) -> None:
    """The test split's suspected label errors and the accuracies without them; train's and val's
    counts when the folds ran."""
    e = c.evaluation
    blocks.append(("h3", "Label issues"))
    if not e.keys() >= LABEL_ISSUE_KEYS:
        blocks.append(("p", NO_LABEL_ISSUES))
    else:
        _test_label_issues(e, blocks)
    t = c.train_label_issues
    if t is None:
        blocks.append(("p", NO_TRAIN_LABEL_ISSUES))
        return
    rows = [
        [
            f"suspected label errors in the {split} split",
            f"{number(t[f'{split}_label_issue_count'])} ({pct(t[f'{split}_label_issue_fraction'])})",
        ]
        for split in ("train", "val")
    ]
    rows.append(["out-of-fold accuracy on train+val", pct(t["out_of_fold_accuracy"])])
    blocks += [
        ("p", TRAIN_LABEL_ISSUES.format(folds=number(t["label_issue_folds"]))),
        ("table", ["figure", "value"], rows),
    ]


def _test_label_issues(e: dict, blocks: list[Block]) -> None:
    """The test split's count and the test accuracy without the suspects, the duplicates, both."""

    def on(accuracy: float, images: int) -> str:
        return f"{pct(accuracy)} on {number(images)} images"

    rows = [
        [
            "suspected label errors in the test split",
            f"{number(e['test_label_issue_count'])} ({pct(e['test_label_issue_fraction'])})",
        ],
        ["test accuracy, all test images", on(e["accuracy"], e["images"])],
        [
            "test accuracy without suspected label errors",
            on(e["accuracy_without_label_issues"], e["images_without_label_issues"]),
        ],
    ]
    clean = clean_accuracy(e)
    if clean is not None and isinstance(e.get("clean_images"), int):
        rows.append(["test accuracy without near-duplicates of train/val", on(clean, e["clean_images"])])
    rows.append(["test accuracy without both", on(e["accuracy_without_both"], e["images_without_both"])])
    blocks += [("p", LABEL_ISSUES), ("table", ["figure", "value"], rows)]


def _audit_value(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {number(v)}" for k, v in value.items())
    if isinstance(value, list):
        return number(len(value))
    return number(value)


def _metrics_section(c: CardInputs, blocks: list[Block]) -> None:
    e, x, t, names = c.evaluation, c.export, c.train, c.meta["class_names"]
    blocks += [
        ("h2", "Metrics"),
        ("p", f"On the test split ({number(e['images'])} images), from the model as served unless noted."),
        (
            "table",
            ["figure", "value"],
            [
                ["accuracy, as served", pct(e["accuracy"])],
                ["macro F1, as served", pct(e["macro_f1"])],
                ["accuracy, ONNX Runtime in-process (export)", pct(x["onnx_test_accuracy"])],
                ["accuracy, PyTorch (export)", pct(x["torch_test_accuracy"])],
                ["validation accuracy (training)", pct(t["val_accuracy"])],
            ],
        ),
        ("h3", "Per class"),
        (
            "table",
            ["class", "precision", "recall", "test images"],
            [
                [
                    n,
                    pct(e[f"precision_{n}"]),
                    pct(e[f"recall_{n}"]),
                    number(c.meta["counts"]["test"].get(n, 0)),
                ]
                for n in names
            ],
        ),
        ("h3", "Calibration"),
    ]
    rows = []
    if e.keys() >= CALIBRATION_KEYS:
        rows = [
            ["expected calibration error (15 bins, top label)", number(e["ece"])],
            ["negative log likelihood", number(e["nll"])],
            ["Brier score (multi-class, 0..2)", number(e["brier"])],
            ["mean confidence (top probability)", pct(e["mean_confidence"])],
        ]
    else:
        blocks.append(("p", NO_CALIBRATION))
    if "temperature" in x:
        rows += [
            ["temperature (fitted on the validation split; 1 = none)", number(x["temperature"])],
            [
                "ECE on test before / after the temperature (export)",
                f"{number(x['test_ece_before'])} / {number(x['test_ece_after'])}",
            ],
        ]
    if rows:
        blocks.append(("table", ["figure", "value"], rows))
    blocks.append(("h3", "Robustness"))
    if c.robustness is None:
        blocks.append(("p", "Not measured in this run."))
    else:
        r = c.robustness
        corruptions, severities, table = robustness_table(r)
        summary = robustness_summary(r)
        blocks.append(
            (
                "p",
                f"Accuracy of the exported graph (ONNX Runtime) on {number(r['images'])} test images "
                f"corrupted in the style of CIFAR-10-C (seed {r['seed']}): uncorrupted "
                f"{pct(r['uncorrupted_accuracy'])}, mean over {len(corruptions)} corruptions x "
                f"{len(severities)} severities {pct(summary['mean'])}, relative drop {pct(summary['drop'])}.",
            )
        )
        rows = [[name, *(pct(table[name][s]) for s in severities)] for name in corruptions]
        blocks.append(("table", ["corruption", *(f"severity {s}" for s in severities)], rows))
    blocks += [
        ("h3", "Served latency and throughput"),
        (
            "table",
            ["figure", "value"],
            [
                [
                    "latency, one image, p50 / p95 / p99",
                    f"{ms(e['latency_ms_p50'])} / {ms(e['latency_ms_p95'])} / {ms(e['latency_ms_p99'])}",
                ],
                [
                    f"throughput, batch {number(e['batch_size'])}, {number(e['concurrency'])} in flight",
                    rate(e["throughput_images_per_second"]),
                ],
                ["in-process ONNX Runtime, same batches", rate(e["inprocess_images_per_second"])],
                ["served / in-process", number(e["throughput_ratio"], 3)],
            ],
        ),
    ]


def _served_section(c: CardInputs, blocks: list[Block]) -> None:
    m, e, x = c.manifest, c.evaluation, c.export
    agree = "yes" if e["mismatches"] == 0 else f"no: {number(e['mismatches'])} predictions differ"
    blocks += [
        ("h2", "How it was served and proven"),
        (
            "table",
            ["figure", "value"],
            [
                ["engine", m["engine"]],
                ["image", f"`{m['image']}`"],
                ["image id", f"`{m.get('image_id') or 'n/a'}`"],
                ["image digest", f"`{m.get('digest') or 'n/a (not pushed to a registry)'}`"],
                ["base image", f"`{m.get('base_image') or 'n/a'}`"],
                ["model.onnx sha256", f"`{m['model_sha256']}`"],
                ["served = offline ONNX Runtime, every test image", agree],
                ["largest served vs offline probability difference", f"{e['max_probability_diff']:.3g}"],
                ["ONNX = PyTorch: argmax agreement", pct(x["argmax_agreement"], 3)],
                ["ONNX = PyTorch: largest probability difference", f"{x['max_probability_diff']:.3g}"],
            ],
        ),
    ]


def _champion_section(c: CardInputs, blocks: list[Block]) -> None:
    r = c.registration
    d = r.get("champion_decision")
    blocks.append(("h2", "Champion decision"))
    if d is None:
        blocks.append(("p", NO_DECISION))
        return
    holder = f"version {d['compared_with']}" if "compared_with" in d else None
    verdict = (
        f"This version holds `{r.get('alias', 'champion')}`"
        if d["moved"]
        else "This version did not take the alias"
    )
    blocks += [("p", CHAMPION_RULE), ("p", f"{verdict} ({d['outcome']}): {d['reason']}.")]
    if "p_value" not in d:
        return
    rows = [
        ["validation images compared", number(d["images"]), ""],
        ["right where the other is wrong (discordant pairs)", number(d["better"]), number(d["worse"])],
        ["validation accuracy (exported graph)", pct(d["val_accuracy"]), pct(d["holder_val_accuracy"])],
        ["validation ECE (15 bins, top label)", number(d["val_ece"]), number(d["holder_val_ece"])],
    ]
    if "val_mean_corruption_accuracy" in d:
        rows.append(
            [
                "validation mean corruption accuracy",
                pct(d["val_mean_corruption_accuracy"]),
                pct(d["holder_val_mean_corruption_accuracy"]),
            ]
        )
    blocks.append(("table", ["figure", "this version", holder or "holder"], rows))
    blocks.append(
        (
            "table",
            ["condition", "measured", "required"],
            [
                ["exact McNemar p (one-sided)", f"{d['p_value']:.3g}", f"< {d['alpha']:g}"],
                [
                    "validation ECE increase",
                    number(d["val_ece"] - d["holder_val_ece"]),
                    f"<= {d['max_ece_increase']:g}",
                ],
                *(
                    [
                        [
                            "validation mean corruption accuracy drop",
                            number(
                                d["holder_val_mean_corruption_accuracy"] - d["val_mean_corruption_accuracy"]
                            ),
                            f"<= {d['max_corruption_drop']:g}",
                        ]
                    ]
                    if "val_mean_corruption_accuracy" in d
                    else []
                ),
            ],
        )
    )


def _limitations_section(c: CardInputs, blocks: list[Block]) -> None:
    e, names = c.evaluation, c.meta["class_names"]
    items = [
        "Weakest classes by recall: "
        + "; ".join(f"{n} (recall {pct(r)}, precision {pct(p)})" for n, r, p in worst_classes(e, names))
    ]
    if c.robustness is not None:
        worst = worst_corruptions(c.robustness)
        top = max(int(s) for s in c.robustness["severities"])
        items.append(
            "Hardest corruptions: "
            + "; ".join(f"{n} (mean {pct(a)}, {pct(w)} at severity {top})" for n, a, w in worst)
            + f", against {pct(c.robustness['uncorrupted_accuracy'])} uncorrupted"
        )
    if e.keys() >= CALIBRATION_KEYS:
        gap = e["mean_confidence"] - e["accuracy"]
        side = "over-confident" if gap > 0 else "under-confident"
        items.append(
            f"Probabilities: mean confidence {pct(e['mean_confidence'])} against accuracy "
            f"{pct(e['accuracy'])}: {side} by {abs(gap) * 100:.2f} points on average (ECE {number(e['ece'])})"
        )
    if c.audit is not None and "test_with_train_duplicate_fraction" in c.audit:
        items.append(
            f"{pct(c.audit['test_with_train_duplicate_fraction'])} of the test images have a near-duplicate "
            "in train or val: the full test accuracy is that much less of a measure of unseen images"
        )
    blocks += [("h2", "Limitations"), ("p", "Measured in this run:"), ("ul", items)]


def _training_rows(t: dict, recipe: dict) -> list[list[str]]:
    """The training job's figures (its metrics.json): epochs, time, arithmetic and, with
    train.budget_s, how the epochs were chosen (on the machine that trained, from its throughput)."""
    rows = [
        ["epochs", number(t["epochs"])],
        ["training seconds (evaluation excluded)", number(t["train_seconds"], 1)],
        ["parameters", number(t["parameters"])],
        ["training arithmetic", str(t.get("precision", "n/a"))],
    ]
    if "budget_s" not in t:
        return [*rows, ["time budget", "none: the fixed number of epochs of the recipe"]]
    bound = recipe.get("epochs")
    limit = f"at most the recipe's {bound}" if t["budget_fit_epochs"] > t["epochs"] else "all that fit"
    return [
        *rows,
        [
            "time budget",
            f"{number(t['budget_s'], 0)} s: {number(t['epochs'])} epochs ({limit}; "
            f"{number(t['budget_fit_epochs'])} fit) chosen from {rate(t['budget_images_per_second'])} "
            "measured on the machine that trained; another machine may choose another number",
        ],
        [
            "wall seconds of the training job (its start to model.pt)",
            f"{number(t['wall_seconds'], 1)} (predicted {number(t['budget_predicted_seconds'], 1)})",
        ],
    ]


def _provenance_section(c: CardInputs, blocks: list[Block]) -> None:
    commit, dirty = revision(c.manifest.get("source_revision", "unknown"))
    blocks += [
        ("h2", "Provenance"),
        (
            "table",
            ["figure", "value"],
            [
                ["git commit (workflow)", f"`{commit}`"],
                ["uncommitted changes", dirty],
                ["config sha256 (settings that made this model)", f"`{c.config_sha256}`"],
                ["recipe sha256", f"`{c.recipe_sha256}`"],
            ],
        ),
        ("h3", "Training"),
        ("table", ["figure", "value"], _training_rows(c.train, c.recipe)),
        ("h3", "Recipe"),
        ("table", ["key", "value"], [[k, json.dumps(v)] for k, v in sorted(c.recipe.items())]),
        ("h3", "Software versions"),
    ]
    if not c.versions:
        blocks.append(("p", "No job recorded its versions."))
        return
    jobs = list(c.versions)
    keys = list(dict.fromkeys(k for versions in c.versions.values() for k in versions))
    rows = [[key, *(c.versions[job].get(key, "-") for job in jobs)] for key in keys]
    blocks.append(("table", ["software", *jobs], rows))


def build(c: CardInputs) -> list[Block]:
    r, names = c.registration, c.meta["class_names"]
    champion = (
        f"holds the `champion` alias ({r['champion_reason']})"
        if r.get("champion")
        else f"not the champion: {r.get('champion_reason', 'n/a')}"
    )
    tta = " and flip test-time augmentation" if c.recipe.get("tta") else ""
    temperature = float(c.export.get("temperature", 1.0))
    calibrated = (
        f" Its probabilities are temperature-scaled (T = {number(temperature)}, fitted on the validation"
        " split); its `logits` output is scaled the same way, so softmax(logits) = probabilities."
        if temperature != 1.0
        else ""
    )
    blocks: list[Block] = [
        ("h1", f"Model card: {r['name']} version {r['version']}"),
        (
            "ul",
            [
                f"Experiment: `{c.experiment}`; model: `{c.recipe.get('model', 'n/a')}`",
                f"Registry: `{r['model_uri']}`; {champion}",
                f"Accuracy as served: {pct(c.evaluation['accuracy'])} on "
                f"{number(c.evaluation['images'])} test images",
            ],
        ),
        ("h2", "Intended use"),
        (
            "p",
            f"Classifying small RGB images into the {len(names)} classes of dataset `{c.meta['dataset_id']}` "
            f"({', '.join(names)}), as a benchmark and baseline of this workflow. Input: uint8 images "
            f"[N, 32, 32, 3], RGB, as decoded; scaling, normalisation{tta} are inside the graph. Outputs: "
            f"`logits` and `probabilities` for the {len(names)} classes.{calibrated}",
        ),
        ("h2", "Out-of-scope use"),
        (
            "ul",
            [
                "Images of anything outside these classes: the model always answers one of them.",
                "Images much larger than 32x32 or unlike the training data: the server resizes them, and "
                "accuracy on such images was not measured (see Robustness for the shifts that were).",
                "Decisions about people, or any safety-critical use.",
            ],
        ),
    ]
    _data_section(c, blocks)
    _label_issues_section(c, blocks)
    _metrics_section(c, blocks)
    _served_section(c, blocks)
    _champion_section(c, blocks)
    _limitations_section(c, blocks)
    _provenance_section(c, blocks)
    return blocks


# -- rendering -------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            out += ["#" * int(kind[1]) + " " + block[1], ""]
        elif kind == "p":
            out += [block[1], ""]
        elif kind == "ul":
            out += [f"- {item}" for item in block[1]] + [""]
        elif kind == "table":
            header, rows = block[1], block[2]
            out.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
            out.append("|" + "|".join("---" for _ in header) + "|")
            out += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in rows]
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def _inline(text: str) -> str:
    """Escaped text, with `code` spans as <code> (the only Markdown the card's text uses)."""
    parts = str(text).split("`")
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts))


def to_html(blocks: list[Block]) -> str:
    title = next((b[1] for b in blocks if b[0] == "h1"), "Model card")
    body: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{_inline(block[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_inline(block[1])}</p>")
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in block[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{_inline(h)}</th>" for h in block[1])
            rows = "".join(
                "<tr>" + "".join(f"<td>{_inline(v)}</td>" for v in row) + "</tr>" for row in block[2]
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    return html_page(title, "\n".join(body), document=True)


def render(inputs: CardInputs) -> tuple[str, str]:
    """(Markdown, HTML) of the card."""
    blocks = build(inputs)
    return to_markdown(blocks), to_html(blocks)
