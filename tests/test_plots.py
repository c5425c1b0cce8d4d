"""The report's figures on synthetic data: what each one draws, and PNGs that are valid and stable."""

import numpy as np
import pandas as pd
import pytest
from cifarflow import plots
from PIL import Image

CLASSES = ["cat", "dog", "frog"]


def predictions(rows) -> pd.DataFrame:
    """(index, label, predicted, probabilities) rows, as evaluate_served_model writes them."""
    return pd.DataFrame(rows, columns=["index", "label", "predicted", "probabilities"])


def test_sample_indices_draw_each_class_only_from_its_members_and_repeat_with_the_seed():
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 0, 1])
    picks = plots.sample_indices(labels, 3, per_class=2, seed=5)
    assert [len(p) for p in picks] == [2, 2, 2]
    for cls, chosen in enumerate(picks):
        assert (labels[chosen] == cls).all()
    assert [p.tolist() for p in picks] == [p.tolist() for p in plots.sample_indices(labels, 3, 2, seed=5)]
    assert [len(p) for p in plots.sample_indices(labels, 4, per_class=10)] == [4, 3, 2, 0]  # as many as exist


def test_sample_grid_puts_each_class_on_its_row_at_full_resolution():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(30, 32, 32, 3), dtype=np.uint8)
    labels = np.repeat([0, 1, 2], 10)
    fig = plots.sample_grid(images, labels, CLASSES, per_class=4, seed=1)
    ax = fig.axes[0]
    mosaic = ax.images[0].get_array()
    assert mosaic.shape == (3 * 34 - 2, 4 * 34 - 2, 3)  # 2-pixel gaps, no resampling
    picks = plots.sample_indices(labels, 3, 4, seed=1)
    np.testing.assert_array_equal(mosaic[34:66, 34:66], images[picks[1][1]])  # row "dog", 2nd image
    assert [t.get_text() for t in ax.get_yticklabels()] == CLASSES


def test_training_curves_plot_train_and_val_loss_and_accuracy_per_epoch():
    history = pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "train_loss": [2.0, 1.2, 0.8],
            "val_loss": [1.5, 1.0, 0.9],
            "train_accuracy": [0.3, 0.6, 0.8],
            "val_accuracy": [0.4, 0.7, 0.75],
        }
    )
    fig = plots.training_curves(history, "fast")
    loss, acc = fig.axes
    assert [line.get_label() for line in acc.get_lines()] == ["train", "val"]
    assert list(loss.get_lines()[1].get_ydata()) == [1.5, 1.0, 0.9]
    assert list(acc.get_lines()[0].get_ydata()) == [0.3, 0.6, 0.8]
    assert "fast: val accuracy 75.0% after 3 epochs" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="val_loss"):
        plots.training_curves(history.drop(columns="val_loss"))


def test_most_confidently_wrong_ranks_misclassified_images_by_predicted_probability():
    frame = predictions(
        [
            (0, 0, 0, [0.9, 0.05, 0.05]),  # right
            (1, 0, 1, [0.3, 0.6, 0.1]),  # wrong, 0.6
            (2, 1, 2, [0.05, 0.05, 0.9]),  # wrong, 0.9
            (3, 2, 0, [0.6, 0.2, 0.2]),  # wrong, 0.6 (tie: lower index first)
        ]
    )
    wrong = plots.most_confidently_wrong(frame, limit=2)
    assert wrong["index"].tolist() == [2, 1]
    assert wrong["confidence"].tolist() == pytest.approx([0.9, 0.6])
    assert plots.most_confidently_wrong(frame, limit=10)["index"].tolist() == [2, 1, 3]


def test_confidently_wrong_grid_titles_each_image_with_true_and_predicted_class():
    images = np.zeros((4, 32, 32, 3), dtype=np.uint8)
    frame = predictions([(1, 0, 1, [0.3, 0.6, 0.1]), (2, 1, 2, [0.05, 0.05, 0.9])])
    wrong = plots.most_confidently_wrong(frame, limit=8)
    fig = plots.confidently_wrong_grid(images, wrong, CLASSES, misclassified=2, total=4, columns=3)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["test #2\ntrue: dog\npred: frog 90%", "test #1\ntrue: cat\npred: dog 60%"]
    assert "2 most confidently wrong of 2 misclassified test images (50.0% of 4)" in fig._suptitle.get_text()

    none = plots.confidently_wrong_grid(images, wrong.iloc[:0], CLASSES, misclassified=0, total=4)
    assert "no misclassified images among 4 test images" in none.axes[0].texts[0].get_text()


def test_label_issue_grid_titles_each_suspect_with_given_and_suggested_label():
    images = np.zeros((40, 32, 32, 3), dtype=np.uint8)
    issues = pd.DataFrame(
        {
            "split": "test",
            "index": [7, 31, 2],
            "file": pd.array([None] * 3, dtype="string"),
            "given_label": [0, 2, 1],
            "suggested_label": [1, 0, 2],
            "self_confidence": [0.012, 0.25, 0.4],
            "rank": [1, 2, 3],
        }
    )
    fig = plots.label_issue_grid(images, issues, CLASSES, total=40, limit=2, columns=3)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == [
        "test #7\ngiven: cat 1.2%\nsuggested: dog",
        "test #31\ngiven: frog 25.0%\nsuggested: cat",
    ]
    assert "The 2 most likely of 3 suspected label errors among 40 test images" in fig._suptitle.get_text()

    none = plots.label_issue_grid(images, issues.iloc[:0], CLASSES, total=40)
    assert "no suspected label errors among 40 test images" in none.axes[0].texts[0].get_text()


def test_comparison_chart_has_a_bar_per_experiment_and_says_what_was_not_measured():
    table = pd.DataFrame(
        {
            "test_accuracy": [0.9, 0.8],
            "train_seconds": [10.0, 5.0],
            "train_images_per_second": [1000.0, 2000.0],
            "model_megabytes": [0.5, 0.25],
            "served_images_per_second": [np.nan, np.nan],
        },
        index=["default", "short"],
    )
    fig = plots.comparison_chart(table)
    accuracy, *_, served = fig.axes
    assert [p.get_height() for p in accuracy.patches] == [0.9, 0.8]
    assert [t.get_text() for t in accuracy.get_xticklabels()] == ["default", "short"]
    assert not served.patches and "not measured" in served.texts[0].get_text()


def test_save_png_writes_the_same_bytes_for_the_same_figure_and_nothing_on_failure(tmp_path):
    def figure():
        fig = plots.plt.figure(figsize=(2, 2))
        fig.add_subplot().plot([0, 1], [1, 0])
        return fig

    plots.save_png(figure(), tmp_path / "a.png")
    plots.save_png(figure(), tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert Image.open(tmp_path / "a.png").format == "PNG"

    broken = figure()
    broken.axes[0].set_title("$\\notacommand$")  # mathtext fails while drawing
    with pytest.raises(ValueError):
        plots.save_png(broken, tmp_path / "c.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]


def test_reliability_diagram_draws_accuracy_per_confidence_bin_and_the_counts():
    from cifarflow.calibration import calibration_metrics, reliability

    probabilities = np.array([[0.9, 0.05, 0.05], [0.92, 0.04, 0.04], [0.2, 0.7, 0.1], [0.42, 0.3, 0.28]])
    labels = np.array([0, 1, 1, 2])
    figures = calibration_metrics(probabilities, labels)
    fig = plots.reliability_diagram(reliability(probabilities, labels), figures, "default: reliability")
    top, bottom = fig.axes
    accuracy_bars, gaps = top.containers[0].patches, top.containers[1].patches
    assert sorted(round(p.get_height(), 6) for p in accuracy_bars) == [0.0, 0.5, 1.0]  # bins 6, 13, 10
    starts = sorted(round(p.get_x(), 6) for p in accuracy_bars)
    assert starts == [round(m / 15, 6) for m in (6, 10, 13)]
    assert sorted(round(p.get_height(), 6) for p in gaps) == [-0.3, 0.41, 0.42]  # confidence - accuracy
    assert [p.get_height() for p in bottom.patches if p.get_height()] == [1, 1, 2]
    assert "ECE 0.3850" in top.texts[0].get_text() and top.get_title() == "default: reliability"


def test_robustness_heatmap_has_a_cell_per_corruption_and_severity():
    from cifarflow.robustness import Robustness

    result = Robustness(0.9, {"contrast": {1: 0.85, 5: 0.4}, "pixelate": {1: 0.9, 5: 0.7}}, 100, 0)
    fig = plots.robustness_heatmap(result, "default")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["85.0%", "40.0%", "90.0%", "70.0%"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["contrast (mean 62.5%)", "pixelate (mean 80.0%)"]
    assert "uncorrupted 90.0%, mean under corruption 71.2%" in ax.get_title()
