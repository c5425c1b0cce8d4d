"""The model card: every section there, every figure the one in the run's files, in Markdown and HTML."""

import copy
import re
from html.parser import HTMLParser

import pytest
from cifarflow import model_card as mc

CLASSES = ["cat", "dog", "frog"]
REASON = (
    "moves from version 2 to version 3: better on 9 images, worse on 1 (of 60), McNemar p = 0.0107 < 0.05; "
    "validation ECE 0.0310 against 0.0240, validation mean corruption accuracy 0.7900 against 0.7750"
)


@pytest.fixture
def inputs() -> mc.CardInputs:
    evaluation = {
        "accuracy": 0.913333,
        "macro_f1": 0.912001,
        "images": 300,
        "mismatches": 0,
        "max_probability_diff": 2.3e-07,
        "latency_ms_p50": 2.412,
        "latency_ms_p95": 6.013,
        "latency_ms_p99": 8.25,
        "throughput_images_per_second": 1262.3,
        "inprocess_images_per_second": 1301.9,
        "throughput_ratio": 0.97,
        "batch_size": 256,
        "concurrency": 2,
        "ece": 0.031245,
        "nll": 0.284511,
        "brier": 0.131877,
        "mean_confidence": 0.882101,
        "precision_cat": 0.95,
        "recall_cat": 0.81,
        "precision_dog": 0.84,
        "recall_dog": 0.93,
        "precision_frog": 0.96,
        "recall_frog": 0.999,
        "test_label_issue_count": 4,
        "test_label_issue_fraction": 0.013333,
        "accuracy_without_label_issues": 0.925676,
        "images_without_label_issues": 296,
        "accuracy_without_both": 0.930556,
        "images_without_both": 288,
    }
    return mc.CardInputs(
        experiment="default",
        registration={
            "name": "cifar10-classifier",
            "version": 3,
            "model_uri": "models:/cifar10-classifier/3",
            "alias": "champion",
            "champion": True,
            "champion_version": 3,
            "champion_reason": REASON,
            "champion_decision": {
                "moved": True,
                "outcome": "moved",
                "reason": REASON,
                "compared_with": 2,
                "images": 60,
                "better": 9,
                "worse": 1,
                "p_value": 11 / 1024,
                "val_accuracy": 0.95,
                "holder_val_accuracy": 0.816667,
                "val_ece": 0.031,
                "holder_val_ece": 0.024,
                "val_mean_corruption_accuracy": 0.79,
                "holder_val_mean_corruption_accuracy": 0.775,
                "alpha": 0.05,
                "max_ece_increase": 0.02,
                "max_corruption_drop": 0.02,
            },
        },
        manifest={
            "engine": "podman",
            "image": "cifarflow-serving:default-0123456789ab",
            "image_id": "sha256:" + "1" * 64,
            "digest": "sha256:" + "2" * 64,
            "base_image": "localhost/cifarflow-base:bookworm",
            "model_sha256": "3" * 64,
            "source_revision": "4" * 40 + "-dirty",
        },
        evaluation=evaluation,
        export={
            "onnx_test_accuracy": 0.913333,
            "torch_test_accuracy": 0.913333,
            "argmax_agreement": 1.0,
            "max_probability_diff": 1.1e-07,
            "temperature": 0.8125,
            "test_ece_before": 0.061,
            "test_ece_after": 0.0312,
        },
        train={
            "val_accuracy": 0.92,
            "epochs": 4,
            "train_seconds": 41.25,
            "parameters": 98765,
            "precision": "bf16",
        },
        meta={
            "dataset_id": "synthetic-bfd8317393",
            "source": "synthetic",
            "source_checksum": "sha256:" + "5" * 64,
            "class_names": CLASSES,
            "sizes": {"train": 450, "val": 60, "test": 300},
            "counts": {s: {c: n for c in CLASSES} for s, n in (("train", 150), ("val", 20), ("test", 100))},
        },
        recipe={"model": "fast", "epochs": 4, "lr": 0.3, "tta": True, "widths": [16, 32, 64]},
        recipe_sha256="6" * 64,
        config_sha256="7" * 64,
        versions={
            "train_model": {
                "python": "3.11.2",
                "torch": "2.14.1",
                "cuda": "13.0",
                "image": "cifarflow-pipeline:0.1.0-cuda",
            },
            "evaluate_served_model": {
                "python": "3.11.2",
                "kserve": "0.21.0",
                "image": "none (the host's environment)",
            },
        },
        robustness={
            "uncorrupted_accuracy": 0.92,
            "images": 200,
            "seed": 0,
            "severities": [1, 3, 5],
            "accuracy": {
                "gaussian_noise": {"1": 0.9, "3": 0.7, "5": 0.45},
                "contrast": {"1": 0.91, "3": 0.88, "5": 0.6},
                "pixelate": {"1": 0.92, "3": 0.9, "5": 0.85},
            },
        },
        audit={
            "test_with_train_duplicate_count": 7,
            "test_with_train_duplicate_fraction": 0.023333,
            "train_internal_duplicate_pairs": 12,
            "exact_duplicate_pairs": 2,
            "anomalies": 3,
        },
    )


class Text(HTMLParser):
    def __init__(self):
        super().__init__()
        self.parts, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.parts.append(data)


def html_text(page: str) -> tuple[str, list[str]]:
    """The text and tags of the page's body."""
    parser = Text()
    parser.feed(page[page.index("<body>") :])
    return " ".join(parser.parts), parser.tags


SECTIONS = [
    "Intended use",
    "Out-of-scope use",
    "Data",
    "Audit",
    "Label issues",
    "Metrics",
    "Per class",
    "Calibration",
    "Robustness",
    "Served latency and throughput",
    "How it was served and proven",
    "Champion decision",
    "Limitations",
    "Provenance",
    "Training",
    "Recipe",
    "Software versions",
]


def test_every_section_is_there_in_both_renderings(inputs):
    md, page = mc.render(inputs)
    text, tags = html_text(page)
    for section in SECTIONS:
        assert re.search(rf"^#{{2,3}} {re.escape(section)}$", md, re.MULTILINE), section
        assert f"<h2>{section}</h2>" in page or f"<h3>{section}</h3>" in page, section
    assert md.startswith("# Model card: cifar10-classifier version 3\n")
    assert tags.count("table") == md.count("\n|---")  # the same tables
    # the same figures, in the same order: every percentage and long number of the Markdown is in the HTML
    figures = lambda s: re.findall(r"\d[\d,]*\.\d+%?|\b[0-9a-f]{40,64}\b", s)  # noqa: E731
    assert figures(md) == figures(text) and len(figures(md)) > 60


def test_the_figures_are_the_inputs(inputs):
    md, _ = mc.render(inputs)
    e, x, m = inputs.evaluation, inputs.export, inputs.manifest
    assert f"Accuracy as served: {mc.pct(e['accuracy'])} on 300 test images" in md
    assert f"| accuracy, as served | {mc.pct(e['accuracy'])} |" in md
    assert f"| macro F1, as served | {mc.pct(e['macro_f1'])} |" in md
    assert f"| validation accuracy (training) | {mc.pct(inputs.train['val_accuracy'])} |" in md
    for name in CLASSES:
        assert f"| {name} | {mc.pct(e[f'precision_{name}'])} | {mc.pct(e[f'recall_{name}'])} | 100 |" in md
    assert f"| expected calibration error (15 bins, top label) | {e['ece']:.4f} |" in md
    assert (
        f"| negative log likelihood | {e['nll']:.4f} |" in md
        and f"| Brier score (multi-class, 0..2) | {e['brier']:.4f} |" in md
    )
    assert f"{x['test_ece_before']:.4f} / {x['test_ece_after']:.4f}" in md
    assert "T = 0.8125, fitted on the validation split)" in md  # calibrated: said under intended use
    assert "| gaussian_noise | 90.00% | 70.00% | 45.00% |" in md
    assert (
        "mean over 3 corruptions x 3 severities 79.00%, relative drop 14.13%" in md
    )  # 7.11 / 9, 1 - .79 / .92
    assert (
        "2.41 ms / 6.01 ms / 8.25 ms" in md
        and "1,262 images/s" in md
        and "| served / in-process | 0.970 |" in md
    )
    for key in ("image", "image_id", "digest", "model_sha256", "base_image"):
        assert f"`{m[key]}`" in md
    assert "| served = offline ONNX Runtime, every test image | yes |" in md
    assert (
        f"`{'4' * 40}`" in md and "| uncommitted changes | yes: tracked files had uncommitted changes |" in md
    )
    assert f"`{inputs.config_sha256}`" in md and f"`{inputs.recipe_sha256}`" in md
    assert "| widths | [16, 32, 64] |" in md
    assert "| software | train_model | evaluate_served_model |" in md
    assert "| torch | 2.14.1 | - |" in md and "| kserve | - | 0.21.0 |" in md
    assert "Source checksum: `sha256:" + "5" * 64 + "`" in md
    assert "| total | 450 | 60 | 300 |" in md


def test_audit_and_limitations_are_measured(inputs):
    md, _ = mc.render(inputs)
    assert "test images with a near-duplicate in train or val: 7" in md
    assert "share of the test split: 2.33%" in md and "near-duplicate pairs within train: 12" in md
    assert "accuracy as served on the test images without such a near-duplicate" not in md  # no figure yet
    limitations = md[md.index("## Limitations") : md.index("## Provenance")]
    assert "cat (recall 81.00%, precision 95.00%); dog (recall 93.00%, precision 84.00%); frog" in limitations
    assert "gaussian_noise (mean 68.33%, 45.00% at severity 5); contrast (mean 79.67%" in limitations
    assert "against 92.00% uncorrupted" in limitations
    assert "mean confidence 88.21% against accuracy 91.33%: under-confident by 3.12 points" in limitations
    assert "2.33% of the test images have a near-duplicate" in limitations

    inputs.evaluation |= {"clean_accuracy": 0.905, "clean_images": 293}  # the audit's evaluation keys
    md, _ = mc.render(inputs)
    assert "without such a near-duplicate: 90.50% on 293 images (all test images: 91.33%)" in md


def test_label_issues_show_the_count_and_the_three_accuracies_each_named(inputs):
    md, page = mc.render(inputs)
    section = md[md.index("### Label issues") : md.index("## Metrics")]
    assert "found by confident learning on the served model's test probabilities" in section
    assert "its own errors can be among the suspects" in section
    assert "| suspected label errors in the test split | 4 (1.33%) |" in section
    assert "| test accuracy, all test images | 91.33% on 300 images |" in section
    assert "| test accuracy without suspected label errors | 92.57% on 296 images |" in section
    assert "| test accuracy without both | 93.06% on 288 images |" in section
    assert "without near-duplicates of train/val" not in section  # no clean accuracy in this evaluation
    assert "<h3>Label issues</h3>" in page and "test accuracy without suspected label errors" in page

    inputs.evaluation |= {"clean_accuracy": 0.905, "clean_images": 293}  # the audit's evaluation keys
    md, _ = mc.render(inputs)
    section = md[md.index("### Label issues") : md.index("## Metrics")]
    rows = [line.split(" | ")[0].lstrip("| ") for line in section.splitlines() if line.startswith("| test")]
    assert rows == [
        "test accuracy, all test images",
        "test accuracy without suspected label errors",
        "test accuracy without near-duplicates of train/val",
        "test accuracy without both",
    ]
    assert "| test accuracy without near-duplicates of train/val | 90.50% on 293 images |" in section


def test_the_champion_decision_shows_the_paired_test_and_both_guards(inputs):
    """The section of registration.json's champion_decision: the reason as logged, the discordant
    counts and the figures of both versions, and each condition against what the config requires."""
    md, page = mc.render(inputs)
    section = md[md.index("## Champion decision") : md.index("## Limitations")]
    assert mc.CHAMPION_RULE in section
    assert f"This version holds `champion` (moved): {REASON}." in section
    assert "| figure | this version | version 2 |" in section
    assert "| right where the other is wrong (discordant pairs) | 9 | 1 |" in section
    assert "| validation accuracy (exported graph) | 95.00% | 81.67% |" in section
    assert "| validation ECE (15 bins, top label) | 0.0310 | 0.0240 |" in section
    assert "| validation mean corruption accuracy | 79.00% | 77.50% |" in section
    assert "| exact McNemar p (one-sided) | 0.0107 | < 0.05 |" in section  # 11 / 1024
    assert "| validation ECE increase | 0.0070 | <= 0.02 |" in section
    assert "| validation mean corruption accuracy drop | -0.0150 | <= 0.02 |" in section
    assert "<h2>Champion decision</h2>" in page and "McNemar p = 0.0107" in html_text(page)[0]

    stayed = copy.deepcopy(inputs)
    reason = (
        "stays with version 2: challenger version 3 better on 5 images, worse on 3 (of 60), "
        "McNemar p = 0.363 >= 0.05"
    )
    stayed.registration |= {"champion": False, "champion_version": 2, "champion_reason": reason}
    stayed.registration["champion_decision"] |= {"moved": False, "outcome": "stayed", "reason": reason}
    stayed.registration["champion_decision"] |= {"better": 5, "worse": 3, "p_value": 93 / 256}
    md, _ = mc.render(stayed)
    assert f"This version did not take the alias (stayed): {reason}." in md
    assert "| exact McNemar p (one-sided) | 0.363 | < 0.05 |" in md
    assert f"not the champion: {reason}" in md  # the summary at the top says it too

    first = copy.deepcopy(inputs)
    first.registration["champion_decision"] = {
        "moved": True,
        "outcome": "first",
        "reason": "no 'champion' yet: version 3 takes it",
    }
    md, _ = mc.render(first)
    section = md[md.index("## Champion decision") : md.index("## Limitations")]
    assert "This version holds `champion` (first): no 'champion' yet: version 3 takes it." in section
    assert "McNemar" not in section.replace(mc.CHAMPION_RULE, "")  # nothing was compared


def test_train_and_val_label_issues_when_the_folds_ran_else_why_not(inputs):
    md, _ = mc.render(inputs)
    section = md[md.index("### Label issues") : md.index("## Metrics")]
    assert mc.NO_TRAIN_LABEL_ISSUES in section and "in the train split" not in section
    inputs.train_label_issues = {
        "train_label_issue_count": 812,
        "train_label_issue_fraction": 0.018044,
        "val_label_issue_count": 97,
        "val_label_issue_fraction": 0.0194,
        "label_issue_folds": 4,
        "out_of_fold_accuracy": 0.86125,
    }
    md, page = mc.render(inputs)
    section = md[md.index("### Label issues") : md.index("## Metrics")]
    assert "| suspected label errors in the train split | 812 (1.80%) |" in section
    assert "| suspected label errors in the val split | 97 (1.94%) |" in section
    assert "| out-of-fold accuracy on train+val | 86.12% |" in section
    assert "4-fold cross-validated probabilities" in section and mc.NO_TRAIN_LABEL_ISSUES not in section
    assert (
        "| suspected label errors in the test split | 4 (1.33%) |" in section
    )  # the test split's still there
    assert "suspected label errors in the train split" in page


def test_optional_parts_missing(inputs):
    bare = copy.deepcopy(inputs)
    bare.audit = bare.robustness = None
    bare.versions = {}
    bare.export = {k: v for k, v in bare.export.items() if not k.startswith(("temperature", "test_ece"))}
    bare.manifest["source_revision"] = "unknown"
    for key in mc.CALIBRATION_KEYS | mc.LABEL_ISSUE_KEYS:  # an evaluation from before they were measured
        del bare.evaluation[key]
    md, page = mc.render(bare)
    assert "No dataset audit ran in this workflow" in md
    assert "### Robustness\n\nNot measured in this run." in md
    assert "Hardest corruptions" not in md and "temperature-scaled" not in md
    assert "No job recorded its versions." in md and "unknown (not built from a git checkout)" in md
    assert "### Calibration\n\n" + mc.NO_CALIBRATION in md and "Probabilities:" not in md
    assert "### Label issues\n\n" + mc.NO_LABEL_ISSUES in md and "suspected label errors in" not in md
    assert "<h2>Limitations</h2>" in page
    del bare.registration["champion_decision"]  # a registration.json from before the paired test
    md, _ = mc.render(bare)
    assert "## Champion decision\n\n" + mc.NO_DECISION in md


def test_text_is_escaped(inputs):
    inputs.meta["class_names"] = ["a<b>", "c|d", "frog"]
    for split in inputs.meta["counts"].values():
        split.update({"a<b>": 1, "c|d": 1})
    for kind in ("precision", "recall"):
        inputs.evaluation[f"{kind}_a<b>"] = inputs.evaluation[f"{kind}_c|d"] = 0.5
    md, page = mc.render(inputs)
    assert "a<b>" not in page and "a&lt;b&gt;" in page
    assert "| c\\|d |" in md


def test_the_card_and_the_report_tables_share_one_page_shell_and_one_rule_for_missing_figures():
    from cifarflow import tables

    def style(page: str) -> str:
        return page[page.index("<style>") : page.index("</style>")]

    card = mc.to_html([("h1", "Model card: m version 1"), ("p", "text")])
    table = tables.html_page("a table", "<table></table>")
    assert style(card) == style(table) and ".document" in style(card)
    assert '<main class="document">' in card and "<h1>a table</h1>" in table
    for value in (None, float("nan")):  # not measured: the card shows it as the tables do
        assert mc.pct(value) == tables.pct(value) == "n/a"
    assert mc.pct(0.91234) == tables.pct(0.91234) == "91.23%"


def section(md: str, title: str) -> str:
    start = md.index(title)
    return md[start : md.index("\n#", start + 1)]


def test_the_training_figures_say_how_the_epochs_were_chosen(inputs):
    fixed = section(mc.render(inputs)[0], "### Training")
    assert "| epochs | 4 |" in fixed and "| training arithmetic | bf16 |" in fixed
    assert "| training seconds (evaluation excluded) | 41.2" in fixed  # 41.25 to one digit
    assert "| time budget | none: the fixed number of epochs of the recipe |" in fixed

    budgeted = copy.deepcopy(inputs)
    budgeted.train |= {
        "budget_s": 60.0,
        "budget_fit_epochs": 3,
        "budget_images_per_second": 1091.4,
        "budget_predicted_seconds": 57.25,
        "wall_seconds": 58.5,
        "epochs": 3,
    }
    md = section(mc.render(budgeted)[0], "### Training")
    assert (
        "| time budget | 60 s: 3 epochs (all that fit; 3 fit) chosen from 1,091 images/s measured on the "
        "machine that trained; another machine may choose another number |"
    ) in md
    assert "| wall seconds of the training job (its start to model.pt) | 58.5 (predicted 57.2" in md
    budgeted.train |= {"budget_fit_epochs": 9, "epochs": 4}  # the recipe's epochs (4) capped it
    assert "4 epochs (at most the recipe's 4; 9 fit)" in mc.render(budgeted)[0]
