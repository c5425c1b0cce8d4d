"""Benchmark: train_model on real CIFAR-10 images, wall time and accuracy.

    python bench/train_cifar10.py --carve accuracy|timing [--set epochs=12 --set widths=[48,128,256] ...]
    python bench/train_cifar10.py --carve timing --budget 120        # train.budget_s: wall against budget

Uses the real 50,000 training JPEGs (--archive or $CIFARFLOW_JPEG_ARCHIVE: a tarball of
train/<class>/<nnnn>.jpg), carved as bench/carves.py describes: `accuracy`
(40,000 train / 5,000 val / 5,000 test never used for a choice) or `timing` (45,000 train /
5,000 val, as users train on CIFAR-10). Prepares the carve once (cached under --cache), then runs
the rule's own command (`python scripts/train_model.py ...`, timed from process start to exit)
with the default recipe from config/config.yaml, overridden by any --set key=value (YAML values).
With --budget (train.budget_s), it also prints the epochs chosen, the throughput they were chosen
from, the predicted seconds and `within_budget`: the wall time from process start to exit against
the budget.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "bench")]

from carves import ARCHIVE, CARVES, prepare_carve  # noqa: E402
from cifarflow.config import Recipe, validate_config  # noqa: E402

SCHEMA = ROOT / "config" / "schema.yaml"


def default_train(configfile: Path | None = None) -> dict:
    """config/config.yaml's `train`, with a config overlay's `train` keys when given."""
    train = validate_config(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), SCHEMA)["train"]
    if configfile:
        train = train | yaml.safe_load(configfile.read_text()).get("train", {})
    return dict(train)


def make_recipe(train: dict, overrides: dict) -> Recipe:
    return Recipe.from_config(validate_config({"train": {**train, **overrides}}, SCHEMA)["train"])


def run_train_model(data: Path, recipe: Recipe, outdir: Path, threads: int, quiet: bool = False) -> dict:
    """The rule's own command from a fresh start; its metrics and the wall time from process start to exit."""
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "resume.pt").unlink(missing_ok=True)
    cmd = [
        sys.executable,
        ROOT / "scripts" / "train_model.py",
        "--data",
        data,
        "--recipe",
        recipe.to_json(),
        "--outdir",
        outdir,
        "--threads",
        str(threads),
        "--log",
        outdir / "train.log",
    ]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL if quiet else None)
    wall = time.perf_counter() - start
    metrics = json.loads((outdir / "metrics.json").read_text())
    budget = {}
    if recipe.budget_s is not None:
        budget = {
            "epochs": metrics["epochs"],
            "budget_s": metrics["budget_s"],
            "budget_fit_epochs": metrics["budget_fit_epochs"],
            "budget_images_per_second": metrics["budget_images_per_second"],
            "budget_predicted_seconds": metrics["budget_predicted_seconds"],
            "job_wall_seconds": metrics["wall_seconds"],  # train()'s count: script start to model.pt
            "within_budget": wall <= metrics["budget_s"],
        }
    return {
        "recipe": recipe.asdict(),
        "recipe_sha256": recipe.sha256(),
        "wall_seconds": round(wall, 1),
        "train_seconds": metrics["train_seconds"],
        "test_accuracy": metrics["test_accuracy"],
        "val_accuracy": metrics["val_accuracy"],
        "images_per_second": metrics["images_per_second"],
        "parameters": metrics["parameters"],
        "precision": metrics.get("precision"),
        **budget,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--archive", type=Path, default=ARCHIVE, help="the CIFAR-10 training JPEGs ($CIFARFLOW_JPEG_ARCHIVE)"
    )
    parser.add_argument("--carve", choices=sorted(CARVES), default="accuracy")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/cifarflow-bench"))
    parser.add_argument("--configfile", type=Path, help="a config overlay whose train keys apply")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a train key"
    )
    parser.add_argument("--budget", type=float, help="train.budget_s: seconds (same as --set budget_s=...)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="default")
    args = parser.parse_args()
    data = prepare_carve(args.carve, args.cache, args.archive)
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    if args.budget is not None:
        overrides["budget_s"] = args.budget
    recipe = make_recipe(default_train(args.configfile), overrides)
    result = run_train_model(data, recipe, args.cache / "runs" / args.carve / args.name, args.threads)
    print(json.dumps({"name": args.name, "carve": args.carve, **result}))


if __name__ == "__main__":
    main()
