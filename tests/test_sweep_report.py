"""The report's sweep section: the ranking table, validation accuracy by setting, learning curves."""

import io

import pandas as pd
from cifarflow import plots
from cifarflow.sweep import Sweep, rank
from cifarflow.tables import sweep_ranking_html
from PIL import Image


def result(val: float, test: float, seconds: float = 12.5) -> dict:
    figures = {"val_accuracy": val, "val_loss": 1 - val, "test_accuracy": test, "train_seconds": seconds}
    return {"outcome": "ok", **figures, "epochs": 4}


def diverged(reason: str) -> dict:
    return {"outcome": "diverged", "reason": f"training diverged: {reason}", "epochs": 0}


GRID = Sweep(
    "lrw",
    "grid",
    ("lr", "widths"),
    {
        "lrw-lr0.1-w8x16x32": {"epochs": 4, "lr": 0.1, "widths": [8, 16, 32]},
        "lrw-lr0.1-w16x32x64": {"epochs": 4, "lr": 0.1, "widths": [16, 32, 64]},
        "lrw-lr1000.0-w8x16x32": {"epochs": 4, "lr": 1000.0, "widths": [8, 16, 32]},
        "lrw-lr1000.0-w16x32x64": {"epochs": 4, "lr": 1000.0, "widths": [16, 32, 64]},
    },
    promote=1,
)
RESULTS = {
    "lrw-lr0.1-w8x16x32": result(0.81, 0.97),
    "lrw-lr0.1-w16x32x64": result(0.92, 0.90),
    "lrw-lr1000.0-w8x16x32": diverged("loss is nan <at> epoch 1"),
    "lrw-lr1000.0-w16x32x64": diverged("loss is inf"),
}


def png_size(fig) -> tuple[int, int]:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=plots.DPI)
    plots.plt.close(fig)
    return Image.open(io.BytesIO(buffer.getvalue())).size


def test_ranking_table_lists_every_trial_best_first_with_settings_figures_and_reasons():
    page = sweep_ranking_html(rank(GRID, RESULTS))
    rows = page.split("<tbody>")[1].split("</tr>")[:-1]
    assert len(rows) == 4
    assert ">lrw-lr0.1-w16x32x64<" in rows[0] and 'class="best"' in rows[0] and ">promoted<" in rows[0]
    assert ">92.00%<" in rows[0] and ">90.00%<" in rows[0] and ">12.5<" in rows[0] and ">16x32x64<" in rows[0]
    assert ">lrw-lr0.1-w8x16x32<" in rows[1] and 'class="best"' not in rows[1] and ">97.00%<" in rows[1]
    for row in rows[2:]:
        assert 'class="weak"' in row and ">-<" in row and '<td class="wrap">training diverged: loss is' in row
    assert "&lt;at&gt;" in page and "<at>" not in page  # reasons are escaped
    assert "Every trial: epochs=4" in page  # a key fixed for all trials goes in the note
    assert "never used to choose" in page


def test_accuracy_by_setting_has_a_panel_per_swept_parameter_with_every_trial():
    ranking = rank(GRID, RESULTS)
    fig = plots.sweep_parameters(ranking)
    lr, widths = fig.axes
    assert (lr.get_xlabel(), widths.get_xlabel()) == ("lr", "widths")
    assert lr.get_xscale() == "log" and [t.get_text() for t in lr.get_xticklabels()] == ["0.1", "1000"]
    assert [t.get_text() for t in widths.get_xticklabels()] == ["8x16x32", "16x32x64"]
    # two finished dots (one a star) and two crosses per panel: every trial is drawn
    drawn = [len(collection.get_offsets()) for collection in lr.collections]
    assert sorted(drawn) == [1, 1, 2]
    low, high = lr.get_xlim()
    assert low < 0.1 and high > 1000  # the stopped trials' crosses lie inside the axis
    assert min(png_size(fig)) >= 250


def test_accuracy_by_setting_of_a_random_sweep_with_many_values():
    trials = {f"r-{i:03d}": {"lr": 0.001 * 1.5**i, "optimizer": ["sgd", "adamw"][i % 2]} for i in range(20)}
    results = {name: result(0.5 + i / 100, 0.5) for i, name in enumerate(trials)}
    ranking = rank(Sweep("r", "random", ("lr", "optimizer"), trials, promote=2), results)
    fig = plots.sweep_parameters(ranking)
    assert [ax.get_xlabel() for ax in fig.axes] == ["lr", "optimizer"]
    assert fig.axes[0].get_xscale() == "log"
    assert [t.get_text() for t in fig.axes[1].get_xticklabels()] == ["adamw", "sgd"]
    png_size(fig)


def test_learning_curves_draw_each_best_trial():
    histories = {
        name: pd.DataFrame({"epoch": [1, 2, 3], "val_accuracy": [0.3, 0.5, v], "train_loss": [2.0, 1.5, 1.2]})
        for name, v in (("a", 0.9), ("b", 0.8))
    }
    fig = plots.sweep_curves(histories, "s")
    accuracy, loss = fig.axes
    assert [line.get_label() for line in accuracy.lines] == ["a", "b"]
    assert list(accuracy.lines[0].get_ydata()) == [0.3, 0.5, 0.9] and len(loss.lines) == 2
    assert "the 2 best trials" in fig._suptitle.get_text()
    png_size(fig)
