"""Accuracy against training time: bench/compare_recipes.py's rows (--json), over budgets and seeds,
as a table (mean ± standard deviation per CPU, recipe and budget) and a figure.

    python bench/plot_budgets.py bench/data/budget_runs.json --png docs/budget-accuracy.png

One panel per CPU (as bench/carves.py names it: model, cores, bf16 instructions) and --precision
setting (auto: bf16 where the CPU has native bf16; fp32: forced); on it each recipe
is a line through its budgets, a point at the mean training seconds and mean test accuracy of its
seeds, with a bar of ± one standard deviation where there are several.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def summarise(rows: list[dict]) -> dict[str, dict[str, list[dict]]]:
    """Panel (CPU and --precision) -> recipe -> one entry per budget (ascending): budget, seeds, mean
    and sd of test accuracy (sd 0 for one seed), mean training seconds and epochs."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        panel = f"{row['cpu']}; --precision {row['precision_setting']}"
        groups[panel, row["recipe"], row["budget_s"]].append(row)
    out: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for (panel, recipe, budget), runs in sorted(groups.items()):
        acc = [r["test_accuracy"] for r in runs]
        out[panel][recipe].append(
            {
                "budget_s": budget,
                "seeds": sorted(r["seed"] for r in runs),
                "accuracy": statistics.mean(acc),
                "sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                "train_seconds": statistics.mean(r["train_seconds"] for r in runs),
                "epochs": statistics.mean(r["epochs"] for r in runs),
            }
        )
    return out


def table(summary: dict) -> str:
    lines = []
    for panel, recipes in summary.items():
        lines += [panel, "budget s  recipe        seeds  epochs  train s  test acc"]
        points = sorted((p["budget_s"], recipe, p) for recipe, ps in recipes.items() for p in ps)
        for budget, recipe, p in points:
            spread = f" ± {100 * p['sd']:.2f}" if len(p["seeds"]) > 1 else ""
            lines.append(
                f"{budget:8.0f}  {recipe:<12}  {len(p['seeds']):5d}  {p['epochs']:6.2f}  "
                f"{p['train_seconds']:7.1f}  {100 * p['accuracy']:.2f}%{spread}"
            )
    return "\n".join(lines)


def plot(summary: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summary), figsize=(6.5 * len(summary), 4.5), squeeze=False)
    for ax, (panel, recipes) in zip(axes[0], summary.items(), strict=True):
        for recipe, points in recipes.items():
            x = [p["train_seconds"] for p in points]
            y = [100 * p["accuracy"] for p in points]
            seeds = max(len(p["seeds"]) for p in points)
            label = f"{recipe} ({seeds} seed{'s' if seeds > 1 else ''})"
            ax.errorbar(x, y, yerr=[100 * p["sd"] for p in points], marker="o", capsize=3, label=label)
            for p, xi, yi in zip(points, x, y, strict=True):
                ax.annotate(
                    f"{p['epochs']:.3g} ep", (xi, yi), textcoords="offset points", xytext=(4, -12), fontsize=8
                )
        ax.set(xlabel="training seconds (mean over seeds)", ylabel="test accuracy, % (accuracy carve)")
        ax.set_title(panel, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Accuracy against training time: each point one budget, mean ± sd over seeds")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("rows", type=Path, nargs="+", help="compare_recipes.py --json files (lists of rows)")
    parser.add_argument("--png", type=Path, help="write the figure here")
    args = parser.parse_args()
    rows = [row for path in args.rows for row in json.loads(path.read_text())]
    summary = summarise(rows)
    print(table(summary))
    if args.png:
        plot(summary, args.png)
        print(f"figure: {args.png}")


if __name__ == "__main__":
    main()
