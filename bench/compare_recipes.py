"""Three CIFAR-10 recipes side by side on this machine, each given the same training-time budget.

    python bench/compare_recipes.py [--budget 600] [--threads 2]      # real CIFAR-10 (the accuracy carve)
    python bench/compare_recipes.py --synthetic --budget 2            # toy data, seconds: a smoke run
    python bench/compare_recipes.py --budget 150 --seed 1 --recipes ours airbench94   # one seed of two
    python bench/compare_recipes.py --budget 150 --precision fp32     # the path of CPUs without bf16

- ours: the default recipe of config/config.yaml (train_model's own train()).
- ours-fill: the same recipe given every whole epoch that fits the budget, past its configured count
  (its schedule stretched over them): what `train.budget_s` with a large `train.epochs` does.
- vgg11-original: the original pipeline's recipe, with its training loop fixed: the project's
  `vgg11` (the original's architecture), batch 32, plain SGD (lr 0.01, momentum 0.9, no weight
  decay, constant rate), no augmentation, no EMA or TTA, fp32. (The original ran one epoch and,
  through its loop's defect, ended at chance, 10%.)
- airbench94: the published recipe (bench/airbench94.py, a re-implementation for CPUs: network,
  optimiser, schedule, lookahead, augmentation and TTA as published; bf16 on CPUs with native bf16, as ours).

Each recipe's throughput is measured first (a few steps); then it trains for as many epochs as fit
the budget: ours and vgg11-original whole epochs (ours at most its configured count), airbench94
fractional epochs up to its published 9.9. Data: the `accuracy` carve (bench/carves.py: 40,000
train, 5,000 test never used for a choice). Printed: test accuracy, training images/s, training
seconds (evaluation excluded), and the ratios to ours.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "bench")]

import airbench94  # noqa: E402
from carves import ARCHIVE, cpu_name, prepare_carve  # noqa: E402
from cifarflow import synthetic, training  # noqa: E402
from cifarflow.config import Recipe  # noqa: E402
from cifarflow.dataset import load_meta, write_dataset  # noqa: E402
from cpu_recipe import Stepper  # noqa: E402
from train_cifar10 import default_train, make_recipe  # noqa: E402

VGG11_ORIGINAL = {
    "model": "vgg11",
    "batch_size": 32,
    "optimizer": "sgd",
    "lr": 0.01,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 0.0,
    "schedule": "constant",
    "warmup": 0.0,
    "label_smoothing": 0.0,
    "flip": False,
    "translate": 0,
    "ema": 0.0,
    "tta": False,
    "tta_translate": False,
    "lookahead": False,
    "alternate_flip": False,
    "early_crop_epochs": 0,
    "precision": "fp32",
}


RECIPES = ("ours", "ours-fill", "vgg11-original", "airbench94")


def project_images_per_second(recipe: Recipe, data: Path, steps: int = 5) -> float:
    """train_model's training throughput for `recipe` (its steady full-size steps)."""
    meta = load_meta(data)
    images, labels = training._load_splits(data, torch.device("cpu"))
    stepper = Stepper(recipe, meta, images, labels, torch.device("cpu"))
    for _ in range(2):
        stepper.step(None)
    start = time.perf_counter()
    for _ in range(steps):
        stepper.step(None)
    return steps * recipe.batch_size / (time.perf_counter() - start)


def run_project(
    name: str, recipe: Recipe, data: Path, budget: float, threads: int, log_dir: Path, steps: int
) -> dict:
    n_train = load_meta(data)["sizes"]["train"]
    ips = project_images_per_second(recipe, data, steps)
    fit = max(1, math.floor(budget * ips / n_train))
    epochs = min(recipe.epochs, fit) if name == "ours" else fit
    sized = Recipe.from_config({**recipe.asdict(), "epochs": epochs})
    metrics = training.train(data, sized, log_dir / name, threads=threads)
    return {
        "recipe": name,
        "epochs": epochs,
        "test_accuracy": metrics["test_accuracy"],
        "images_per_second": metrics["images_per_second"],
        "train_seconds": metrics["train_seconds"],
        "precision": metrics["precision"],
    }


def run_airbench(data: Path, budget: float, bf16: bool, steps: int, seed: int) -> dict:
    n_train = load_meta(data)["sizes"]["train"]
    batch = min(airbench94.BATCH, n_train)
    ips = airbench94.images_per_second(bf16, steps, batch)
    epochs = min(airbench94.EPOCHS, max(1 / (n_train // batch), round(budget * ips / n_train, 2)))
    result = airbench94.run(data, epochs, bf16, seed=seed, batch=batch)
    return {"recipe": "airbench94", **result, "precision": "bf16" if bf16 else "fp32"}


def print_table(rows: list[dict]) -> None:
    ours = rows[0]
    print(
        f"{'recipe':16s} {'epochs':>7s} {'train s':>8s} {'images/s':>9s} {'test acc':>9s}"
        f" {'acc / ours':>10s} {'img/s / ours':>12s}"
    )
    for r in rows:
        print(
            f"{r['recipe']:16s} {r['epochs']:7.2f} {r['train_seconds']:8.1f} {r['images_per_second']:9,.0f}"
            f" {r['test_accuracy'] * 100:8.2f}% {r['test_accuracy'] / ours['test_accuracy']:10.3f}"
            f" {r['images_per_second'] / ours['images_per_second']:12.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget", type=float, default=600, help="training seconds each recipe may take")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--synthetic", action="store_true", help="toy synthetic data (a smoke run)")
    parser.add_argument("--archive", type=Path, default=ARCHIVE, help="the CIFAR-10 training JPEGs")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/cifarflow-bench"))
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--seed", type=int, default=0, help="every recipe's seed (weights, order, crops)")
    parser.add_argument(
        "--recipes",
        nargs="+",
        choices=RECIPES,
        default=["ours", "vgg11-original", "airbench94"],
        help="which to run (default: all but ours-fill, which equals ours below its configured epochs)",
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32"),
        default="auto",
        help="ours's precision, and airbench94's with it: fp32 measures, on a CPU with native bf16, the "
        "path that CPUs without it take",
    )
    args = parser.parse_args()
    if not {"ours", "ours-fill"} & set(args.recipes):
        parser.error("--recipes must name ours or ours-fill: the table's ratios are to it")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="compare-recipes-") as tmp:
        tmp = Path(tmp)
        if args.synthetic:
            data = tmp / "data"
            settings = {"source": "synthetic", "val_fraction": 0.1, "seed": 0}
            write_dataset(synthetic.generate(30, 10), data, dataset_id="synthetic-compare", settings=settings)
        else:
            data = prepare_carve("accuracy", args.cache, args.archive)
        ours = make_recipe(default_train(), {"seed": args.seed, "precision": args.precision})
        bf16 = training.trains_in_bf16(ours.precision, torch.device("cpu"))
        vgg = make_recipe(default_train(), {**VGG11_ORIGINAL, "seed": args.seed})
        steps = 2 if args.synthetic else 5  # for the throughput that sizes each run
        sizing = (data, args.budget, args.threads, tmp, steps)
        runs = {
            "ours": lambda: run_project("ours", ours, *sizing),
            "ours-fill": lambda: run_project("ours-fill", ours, *sizing),
            "vgg11-original": lambda: run_project("vgg11-original", vgg, *sizing),
            "airbench94": lambda: run_airbench(data, args.budget, bf16, steps, args.seed),
        }
        # in RECIPES' order: ours (or ours-fill) first, the row the ratios are to
        rows = [{**runs[name](), "seed": args.seed} for name in RECIPES if name in args.recipes]
    setting = {  # what bench/plot_budgets.py groups by and names
        "budget_s": args.budget,
        "cpu": cpu_name(),
        "data": "synthetic" if args.synthetic else "accuracy carve",
        "precision_setting": args.precision,
    }
    rows = [{**row, **setting} for row in rows]
    print(
        f"\nbudget {args.budget:.0f} s of training each, seed {args.seed}, {args.threads} threads, data: "
        f"{'synthetic (toy)' if args.synthetic else 'CIFAR-10 accuracy carve (40,000 train / 5,000 test)'}"
    )
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
