"""bench/compare_recipes.py in its smoke mode: three recipes side by side on toy data, one invocation."""

import json
import re
import subprocess
import sys

from conftest import ROOT


def test_compare_recipes_prints_ours_vgg11_and_airbench94_with_ratios(tmp_path):
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [
            sys.executable,
            ROOT / "bench" / "compare_recipes.py",
            "--synthetic",
            "--budget",
            "1",
            "--json",
            out,
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("recipe"))
    assert lines[header].split() == [
        "recipe",
        "epochs",
        "train",
        "s",
        "images/s",
        "test",
        "acc",
        "acc",
        "/",
        "ours",
        "img/s",
        "/",
        "ours",
    ]
    number = r"[0-9][0-9,]*\.?[0-9]*"
    for line, name in zip(
        lines[header + 1 : header + 4], ["ours", "vgg11-original", "airbench94"], strict=True
    ):
        assert re.fullmatch(
            rf"{name}\s+{number}\s+{number}\s+{number}\s+{number}%\s+{number}\s+{number}", line
        ), line
    assert lines[header + 1].split()[-2:] == ["1.000", "1.000"]  # ours against itself
    rows = json.loads(out.read_text())
    assert [r["recipe"] for r in rows] == ["ours", "vgg11-original", "airbench94"]
    for row in rows:
        assert 0 <= row["test_accuracy"] <= 1 and row["images_per_second"] > 0 and row["train_seconds"] > 0
    assert rows[1]["precision"] == "fp32"  # the original's recipe trains in fp32, as it did
    assert {(r["budget_s"], r["data"]) for r in rows} == {(1.0, "synthetic")} and all(r["cpu"] for r in rows)

    # the budget figure's script reads these rows: one line per recipe, and a PNG
    seed1 = [dict(row, seed=1, test_accuracy=row["test_accuracy"] + 0.02) for row in rows]
    (tmp_path / "seed1.json").write_text(json.dumps(seed1))
    png = tmp_path / "budgets.png"
    plot = subprocess.run(
        [sys.executable, ROOT / "bench" / "plot_budgets.py", out, tmp_path / "seed1.json", "--png", png],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert plot.returncode == 0, plot.stderr[-3000:]
    points = [line.split() for line in plot.stdout.splitlines() if line.split()[:1] == ["1"]]
    assert sorted(p[1] for p in points) == ["airbench94", "ours", "vgg11-original"]
    ours = next(p for p in points if p[1] == "ours")
    mean = 100 * (rows[0]["test_accuracy"] + 0.01)
    assert ours[2] == "2" and ours[5] == f"{mean:.2f}%" and ours[7] == "1.41", ours  # sd of ±1 point
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
