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


HALVING = Sweep(
    "sh",
    "halving",
    ("lr",),
    {f"sh-lr{lr}": {"lr": lr} for lr in (0.01, 0.1, 1.0, 1000.0)},
    promote=1,
    rungs=(1, 2, 4),
    eta=2,
)


def epochs(*accuracies: float) -> list[dict]:
    return [{"epoch": i, "val_accuracy": v, "train_loss": 1 - v} for i, v in enumerate(accuracies, start=1)]


HALVING_RESULTS = {  # 0.01 stopped after rung 0, 0.1 after rung 1, 1.0 finished, 1000 diverged in rung 0
    "sh-lr0.01": {
        "outcome": "stopped",
        "reason": "stopped",
        "val_accuracy": 0.3,
        "epochs": 1,
        "stopped_at_rung": 0,
        "history": epochs(0.3),
    },  # fmt: skip
    "sh-lr0.1": {
        "outcome": "stopped",
        "reason": "stopped",
        "val_accuracy": 0.6,
        "epochs": 2,
        "stopped_at_rung": 1,
        "history": epochs(0.4, 0.6),
    },  # fmt: skip
    "sh-lr1.0": {**result(0.9, 0.8), "history": epochs(0.5, 0.7, 0.8, 0.9)},
    "sh-lr1000.0": {**diverged("loss is nan"), "stopped_at_rung": 0, "history": []},
}


def test_parallel_coordinates_draw_every_trial_through_its_settings_to_its_accuracy():
    ranking = rank(HALVING, HALVING_RESULTS)
    fig = plots.sweep_coordinates(ranking)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["lr", "validation accuracy (where it stopped)"]
    lines = {
        tuple(round(float(y), 6) for y in line.get_ydata()): line
        for line in ax.lines
        if line.get_marker() == "o"
    }
    assert len(lines) == 4  # one line per trial
    # lr on a log axis: 0.01 at the bottom, 1000 at the top; accuracy 0.3 lowest, 0.9 highest, the
    # diverged trial below every accuracy
    assert set(lines) == {(0.0, 0.0), (0.2, 0.5), (0.4, 1.0), (1.0, -0.12)}
    assert lines[(0.4, 1.0)].get_linewidth() == 3  # the promoted
    assert lines[(1.0, -0.12)].get_linestyle() == "--"
    assert lines[(0.0, 0.0)].get_color() != lines[(0.2, 0.5)].get_color()  # stopped at rungs 0 and 1
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert (
        legend[0] == "promoted" and "stopped after rung 1 (2 epochs)" in legend and "did not train" in legend
    )
    png_size(fig)
    # a sweep without rungs: the same figure, no rung colours
    plain = plots.sweep_coordinates(rank(GRID, RESULTS))
    assert [t.get_text() for t in plain.axes[0].get_xticklabels()] == ["lr", "widths", "validation accuracy"]
    png_size(plain)


def test_the_rung_chart_draws_each_trial_up_to_the_rung_where_it_stopped():
    ranking = rank(HALVING, HALVING_RESULTS)
    histories = {name: pd.DataFrame(r["history"]) for name, r in HALVING_RESULTS.items()}
    fig = plots.sweep_rungs(ranking, histories)
    (ax,) = fig.axes
    lines = sorted((list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines)
    # the accuracy at each rung's end (epochs 1, 2, 4), up to where the trial stopped
    assert lines == [([0], [0.3]), ([0, 1], [0.4, 0.6]), ([0, 1, 2], [0.5, 0.7, 0.9])]
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "rung 0\n1 epoch\n4 trials",
        "rung 1\n2 epochs\n2 trials",
        "rung 2\n4 epochs\n1 trials",
    ]
    names = {t.get_text() for t in ax.texts}
    assert names == {"sh-lr0.01", "sh-lr0.1", "sh-lr1.0"}  # the diverged one is a red cross instead
    assert "did not train" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert "eta 2" in fig._suptitle.get_text()
    png_size(fig)
