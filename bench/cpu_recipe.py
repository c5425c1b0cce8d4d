"""The CPU recipe's ablation: every lever on its own, accuracy and time measured apart.

    python bench/cpu_recipe.py time-only [--rows ...] [--steps 30]    # a few minutes, needs a quiet machine
    python bench/cpu_recipe.py timing    [--rows default] [--seeds 0]  # the real command, 45,000 images
    python bench/cpu_recipe.py accuracy  [--rows ...] [--seeds 0 1 2] # deterministic: any load will do
    python bench/cpu_recipe.py tta --checkpoints .../model.pt          # the same weights, each TTA
    python bench/cpu_recipe.py table                                  # the README's table

Rows are overrides of config/config.yaml's `train` (ROWS below). Accuracy is the test accuracy on
the `accuracy` carve (40,000 train / 5,000 val / 5,000 test; bench/carves.py), never used for a
choice: choices were made on val. Time is measured on the `timing` carve (45,000 train / 5,000 val
/ 10,000 test, as users train on CIFAR-10):

- `timing` runs scripts/train_model.py (as the rule does) and reports its `train_seconds` (the
  training steps of every epoch, compilation included; no evaluation) and the command's wall time;
- `time-only` times `--steps` training steps of each row in this process, at 2 threads, on the
  same data with the same pieces as train_model (augmentation, EMA, lookahead, bf16), for each
  image size the row trains at, plus the first step and the evaluations, and predicts
  train_seconds = first-step overhead + steps x seconds per step. The `compile` row times the
  default with its network torch.compile'd (inductor; the first step compiles, or loads the
  compiled code from inductor's cache): torch.compile is not a recipe key, since it did not pay.

Results are appended to --results (JSON lines) and `table` prints the latest of each measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "bench")]

from carves import ARCHIVE, cpu_name, prepare_carve  # noqa: E402
from cifarflow import training  # noqa: E402
from cifarflow.checkpoint import load_checkpoint  # noqa: E402
from cifarflow.config import Recipe  # noqa: E402
from cifarflow.dataset import load_meta  # noqa: E402
from train_cifar10 import default_train, make_recipe, run_train_model  # noqa: E402

# What the previous default recipe (fp32, 12 epochs, none of the levers) was, as overrides.
PREVIOUS = {
    "epochs": 12,
    "precision": "fp32",
    "alternate_flip": False,
    "identity_init": False,
    "whiten_bias_epochs": 1000,
    "lookahead": False,
    "tta_translate": False,
    "early_crop_epochs": 0,
}
# name -> (what it is, overrides of the default recipe)
ROWS = {
    "previous": ("the previous default: fp32, 12 epochs", PREVIOUS),
    "previous-bf16": ("previous + bf16 autocast (AMX)", {**PREVIOUS, "precision": "bf16"}),
    "default": ("**the default**", {}),
    "no-lookahead": ("default without lookahead", {"lookahead": False}),
    "no-alternate-flip": ("default with random flips instead of alternating", {"alternate_flip": False}),
    "no-identity-init": ("default without identity init", {"identity_init": False}),
    "no-whiten-freeze": ("default, whitening bias trained throughout", {"whiten_bias_epochs": 1000}),
    "tta-translate": ("default + translate TTA", {"tta_translate": True}),
    "early-crop": (
        "default + progressive resizing (24 px, first 6 epochs)",
        {"early_crop": 24, "early_crop_epochs": 6},
    ),
    "early-crop-8": (
        "default + progressive resizing (24 px, first 8 epochs)",
        {"early_crop": 24, "early_crop_epochs": 8},
    ),
    "early-crop-20": (
        "default + progressive resizing (20 px, first 6 epochs)",
        {"early_crop": 20, "early_crop_epochs": 6},
    ),
    "wide": (
        "default at airbench94's widths 64/256/256, 12 epochs",
        {"widths": [64, 256, 256], "epochs": 12},
    ),
    "wider-16": ("default at widths 48/192/256", {"widths": [48, 192, 256]}),
    "compile": ("default + torch.compile (time only; not a recipe key: it did not pay)", {}),
    "fp32": ("default in fp32", {"precision": "fp32"}),
    "bf16": ("default in bf16 (what `auto` picks on CPUs with native bf16)", {"precision": "bf16"}),
}


def recipe_of(row: str, seed: int = 0) -> Recipe:
    return make_recipe(default_train(), {**ROWS[row][1], "seed": seed})


def record(path: Path, entry: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpu": cpu_name(),
        "load_average": round(os.getloadavg()[0], 1),
        "git": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        **entry,
    }
    with path.open("a") as fh:
        fh.write(json.dumps(entry) + "\n")
    print(json.dumps(entry), flush=True)


def run_full(args: argparse.Namespace, carve: str, seeds: list[int]) -> None:
    data = prepare_carve(carve, args.cache, args.archive)
    for row in args.rows:
        if row == "compile":
            continue  # time-only: the same recipe as the default
        for seed in seeds:
            recipe = recipe_of(row, seed)
            result = run_train_model(
                data, recipe, args.cache / "runs" / carve / f"{row}-s{seed}", args.threads
            )
            record(args.results, {"mode": carve, "row": row, "seed": seed, **result})


def _phases(recipe: Recipe) -> list[tuple[int | None, int, bool]]:
    """(crop size or None, epochs, whitening bias trained) for each distinct kind of epoch."""
    kinds: dict[tuple[int | None, bool], int] = {}
    for epoch in range(recipe.epochs):
        crop = recipe.early_crop if epoch < recipe.early_crop_epochs else None
        key = (crop, epoch < recipe.whiten_bias_epochs)
        kinds[key] = kinds.get(key, 0) + 1
    return [(crop, n, bias) for (crop, bias), n in kinds.items()]


class Stepper:
    """train_model's training step for one recipe, built from the same pieces (training.train)."""

    def __init__(
        self,
        recipe: Recipe,
        meta: dict,
        images: dict,
        labels: dict,
        device: torch.device,
        compile_: bool = False,
    ):
        self.recipe, self.images, self.labels = recipe, images["train"], labels["train"]
        self.model = training._make_model(recipe, meta, self.images, device)
        self.optimizer = training.make_optimizer(self.model, recipe)
        self.ema = (
            AveragedModel(self.model, multi_avg_fn=training.ema_update(recipe.ema), use_buffers=True)
            if recipe.ema
            else None
        )
        self.lookahead = training.Lookahead(self.model) if recipe.lookahead else None
        self.forward = torch.compile(self.model, dynamic=False) if compile_ else self.model
        self.autocast = training._autocast(device, training.trains_in_bf16(recipe.precision, device))
        self.criterion = torch.nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
        self.generator = torch.Generator().manual_seed(0)
        self.order = torch.randperm(len(self.labels), generator=self.generator)
        self.done = 0
        self.model.train()

    def step(self, crop: int | None) -> None:
        batch = self.recipe.batch_size
        start = (self.done * batch) % (len(self.order) - batch)
        idx = self.order[start : start + batch]
        x = training.to_float(self.images[idx])
        x = training.augment(x, self.recipe.flip, self.recipe.translate, self.generator, crop)
        with self.autocast:
            loss = self.criterion(self.forward(x).float(), self.labels[idx])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.done += 1
        if self.lookahead is not None:
            self.lookahead.step(self.done, self.done)  # as late in training: it averages every 5 steps
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        loss.item()  # the loop's divergence check waits for the device now and then


def time_row(
    recipe: Recipe, meta: dict, images: dict, labels: dict, steps: int, compile_: bool = False
) -> dict:
    """Seconds per step at each kind of epoch the recipe has, the first steps' extra (compilation),
    evaluation seconds, and the predicted train_seconds (see the module's docstring)."""
    device = torch.device("cpu")
    stepper = Stepper(recipe, meta, images, labels, device, compile_)
    steps_per_epoch = len(labels["train"]) // recipe.batch_size
    phases, overhead, seconds = [], 0.0, 0.0
    for crop, epochs, bias in _phases(recipe):
        if isinstance(stepper.model.body, training.FastNet):
            stepper.model.body.whiten.bias.requires_grad_(bias)
        first = time.perf_counter()
        stepper.step(crop)
        first = time.perf_counter() - first
        for _ in range(3):
            stepper.step(crop)
        start = time.perf_counter()
        for _ in range(steps):
            stepper.step(crop)
        per_step = (time.perf_counter() - start) / steps
        overhead += max(0.0, first - per_step)
        seconds += epochs * steps_per_epoch * per_step
        phases.append(
            {
                "crop": crop or 32,
                "epochs": epochs,
                "whiten_bias_trained": bias,
                "first_step_s": round(first, 2),
                "images_per_second": round(recipe.batch_size / per_step, 1),
            }
        )
    evaluated = stepper.ema.module if stepper.ema is not None else stepper.model
    evals = {}
    for split in ("val", "test"):
        start = time.perf_counter()
        training.evaluate(evaluated, images[split], labels[split], device)
        evals[split] = time.perf_counter() - start
    return {
        "phases": phases,
        "first_step_overhead_s": round(overhead, 1),
        "images_per_second": round(recipe.epochs * steps_per_epoch * recipe.batch_size / seconds, 1),
        "predicted_train_seconds": round(seconds + overhead, 1),
        "val_seconds": round(evals["val"], 2),
        "test_seconds": round(evals["test"], 2),
        "epochs": recipe.epochs,
    }


def time_only(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    data = prepare_carve("timing", args.cache, args.archive)
    meta = load_meta(data)
    images, labels = training._load_splits(data, torch.device("cpu"))
    start = time.perf_counter()  # start-up: the interpreter and train_model's imports
    subprocess.run(
        [sys.executable, "-c", "import cifarflow.training"],
        env={**os.environ, "PYTHONPATH": str(ROOT / "scripts")},
        check=True,
    )
    import_seconds = time.perf_counter() - start
    for row in args.rows:
        recipe = recipe_of(row)
        figures = time_row(recipe, meta, images, labels, args.steps, compile_=row == "compile")
        wall = (
            import_seconds
            + figures["predicted_train_seconds"]
            + recipe.epochs * figures["val_seconds"]
            + figures["test_seconds"]
        )
        record(
            args.results,
            {
                "mode": "time-only",
                "row": row,
                "threads": args.threads,
                "steps": args.steps,
                "recipe_sha256": recipe.sha256(),
                **figures,
                "predicted_wall_seconds": round(wall, 1),
            },
        )


def tta(args: argparse.Namespace) -> None:
    """Each checkpoint evaluated again with each test-time augmentation: one view, mirror, mirror +
    translate (the weights are the same: TTA needs no retraining), on the accuracy carve."""
    data = prepare_carve("accuracy", args.cache, args.archive)
    device = torch.device("cpu")
    images, labels = training._load_splits(data, device)
    for path in args.checkpoints:
        model, checkpoint = load_checkpoint(path)
        figures = {}
        for name, flip, translate in (
            ("none", False, False),
            ("flip", True, False),
            ("flip+translate", True, True),
        ):
            model.tta, model.tta_translate = flip, translate
            figures[name] = {
                split: round(training.evaluate(model, images[split], labels[split], device)[1], 5)
                for split in ("val", "test")
            }
        record(
            args.results,
            {"mode": "tta", "checkpoint": str(path), "recipe_sha256": checkpoint["recipe_sha256"], **figures},
        )


def table(args: argparse.Namespace) -> None:
    entries = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
    print("| recipe | test accuracy (seeds) | val accuracy | images/s | train_seconds | wall | measured |")
    print("|---|---|---|---|---|---|---|")
    for row, (what, _) in ROWS.items():
        sha = recipe_of(row).sha256()
        accs, vals, seeds = {}, {}, {}
        for e in entries:
            if e.get("row") == row and e["mode"] == "accuracy":
                seeds[e["seed"]] = e
        for seed, e in sorted(seeds.items()):
            accs[seed], vals[seed] = e["test_accuracy"] * 100, e["val_accuracy"] * 100
        timing = [
            e for e in entries if e.get("row") == row and e["mode"] == "timing" and e["recipe_sha256"] == sha
        ]
        fast = [
            e
            for e in entries
            if e.get("row") == row and e["mode"] == "time-only" and e["recipe_sha256"] == sha
        ]
        if accs:
            mean = statistics.mean(accs.values())
            spread = f" ± {statistics.stdev(accs.values()):.2f}" if len(accs) > 1 else ""
            acc = f"{mean:.2f}{spread}% ({', '.join(f'{a:.2f}' for a in accs.values())})"
            val = f"{statistics.mean(vals.values()):.2f}%"
        else:
            acc = val = ""
        if timing:
            t = timing[-1]
            ips, seconds, wall, load = (
                f"{t['images_per_second']:,.0f}",
                f"{t['train_seconds']:.0f}",
                f"{t['wall_seconds']:.0f} s",
                t["load_average"],
            )
        elif fast:
            t = fast[-1]
            ips, seconds, wall, load = (
                f"{t['images_per_second']:,.0f}",
                f"{t['predicted_train_seconds']:.0f} (predicted)",
                f"{t['predicted_wall_seconds']:.0f} s (predicted)",
                t["load_average"],
            )
        else:
            ips = seconds = wall = load = ""
        print(f"| {what} | {acc} | {val} | {ips} | {seconds} | {wall} | load {load} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=["time-only", "timing", "accuracy", "tta", "table"])
    parser.add_argument("--checkpoints", nargs="+", type=Path, default=[], help="tta: model.pt files")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=30, help="time-only: timed steps per phase")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--archive", type=Path, default=ARCHIVE, help="the CIFAR-10 training JPEGs")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/cifarflow-bench"))
    parser.add_argument("--results", type=Path, default=ROOT / "results" / "bench" / "cpu_recipe.jsonl")
    args = parser.parse_args()
    if args.mode == "time-only":
        time_only(args)
    elif args.mode == "timing":
        run_full(args, "timing", args.seeds)
    elif args.mode == "accuracy":
        run_full(args, "accuracy", args.seeds)
    elif args.mode == "tta":
        tta(args)
    else:
        table(args)


if __name__ == "__main__":
    main()
