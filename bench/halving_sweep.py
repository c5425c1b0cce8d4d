"""Successive halving against a full sweep: the same trials (a 3 x 3 x 3 grid of lr, weight_decay and
label_smoothing: 27 trials) trained through the workflow up to the sweep's ranking, once as a grid
that trains every trial to the end (sweep.method grid) and once by successive halving
(sweep.method halving, min_epochs 1, eta 3: rungs 1, 3, 9 of a 9-epoch schedule), on a carve of
the real CIFAR-10 training JPEGs small enough for a 2-core CPU: the first --per-class images of
each class for train and val (a sixth of them held out as val), the last --test-per-class for a
test split that nothing here reads.

    python bench/halving_sweep.py --archive cifar10-train-jpeg.tar.gz       # or $CIFARFLOW_JPEG_ARCHIVE
    python bench/halving_sweep.py --archive ... --executor slurm   # as root: the one-node Slurm of the tests
    python bench/halving_sweep.py --synthetic --values 2 --epochs 3 --per-class 30 --widths 8 16 16
                                                             # a check of the script itself (8 trials)

Prints, as JSON, for each sweep: the best trial and its validation accuracy, the trial epochs (every
epoch any trial trained, summed: the compute), the trainings' own seconds (their benchmark files)
and the wall time (the data prepared beforehand, untimed, the same for both); then the gap in
validation accuracy and the ratio of trial epochs. The full sweep's figure for the halving winner
is printed too: a trial that survives every rung ends identical to its uninterrupted training, so
the two must be equal.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "bench"), str(ROOT / "tests")]

from carves import unpacked_train  # noqa: E402
from conftest import copy_workflow  # noqa: E402
from prepare_speed import ARCHIVE_ENV, jpeg_archive  # noqa: E402

BIN = Path(sys.executable).parent
PARAMETERS = {  # 27 trials around the CPU recipe's lr 0.3, weight_decay 5e-4, label_smoothing 0.2
    "lr": [0.1, 0.3, 1.0],
    "weight_decay": [5e-5, 5e-4, 5e-3],
    "label_smoothing": [0.0, 0.1, 0.2],
}


def carve(archive: Path, root: Path, per_class: int, test_per_class: int) -> Path:
    """train/<class>/ with the first `per_class` images of each class, test/<class>/ the last
    `test_per_class` (disjoint), from the archive's train/<class>/<n>.jpg. Made once."""
    folder = root / f"carve-{per_class}-{test_per_class}"
    if (folder / "done").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    source = unpacked_train(archive, root / "all")
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        files = sorted(class_dir.iterdir())
        if len(files) < per_class + test_per_class:
            raise SystemExit(
                f"{class_dir} holds {len(files)} images, fewer than {per_class} + {test_per_class}"
            )
        for split, chunk in (("train", files[:per_class]), ("test", files[-test_per_class:])):
            target = folder / split / class_dir.name
            target.mkdir(parents=True, exist_ok=True)
            for path in chunk:
                shutil.copyfile(path, target / path.name)
    (folder / "done").touch()
    return folder


def config(args: argparse.Namespace, data: dict, method: str) -> dict:
    parameters = {key: values[: args.values] for key, values in PARAMETERS.items()}
    sweep = {"name": "bench", "parameters": parameters, "max_trials": 64, "method": method}
    if method == "halving":
        sweep["halving"] = {"sample": "grid", "min_epochs": 1, "eta": 3}
    return {
        "experiments": {"default": None},
        "dataset": data,
        "train": {
            "epochs": args.epochs,
            "widths": args.widths,
            "batch_size": args.batch_size,
            "device": "cpu",
        },
        "sweep": sweep,
    }


def snakemake(workdir: Path, args: tuple[str, ...], env: dict[str, str]) -> float:
    start = time.monotonic()
    proc = subprocess.run(
        [str(BIN / "snakemake"), "--cores", "2", "--configfile", "bench.yaml", *args],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=6 * 3600,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(
            f"snakemake {' '.join(args)} failed in {workdir}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return time.monotonic() - start


def benchmark_seconds(workdir: Path) -> float:
    """The trainings' own seconds (train_model and train_rung jobs), from their benchmark files."""
    total = 0.0
    for rule in ("train_model", "train_rung"):
        for path in (workdir / "benchmarks" / rule).glob("*.tsv"):
            header, row = path.read_text().splitlines()[:2]
            total += float(dict(zip(header.split("\t"), row.split("\t"), strict=False))["s"])
    return total


def run_sweep(base: Path, name: str, settings: dict, extra: tuple[str, ...], env: dict[str, str]) -> dict:
    workdir = copy_workflow(base / name)
    (workdir / "bench.yaml").write_text(yaml.safe_dump(settings))
    snakemake(workdir, ("--until", "prepare_dataset", *extra), env)  # untimed: the same for both
    wall = snakemake(workdir, ("--until", "rank_sweep", *extra), env)
    ranking = json.loads((workdir / "results/sweep/bench/ranking.json").read_text())
    best = ranking["trials"][0]
    rows = ranking["trials"]
    return {
        "trials": len(rows),
        "best_trial": best["trial"],
        "best_val_accuracy": best["val_accuracy"],
        "trial_epochs": sum(row["epochs"] or 0 for row in rows),
        "trainings_s": round(benchmark_seconds(workdir), 1),
        "wall_s": round(wall, 1),
        "val_accuracy": {row["trial"]: row["val_accuracy"] for row in rows if row["outcome"] == "ok"},
        "stopped_at_rung": {
            row["trial"]: row.get("stopped_at_rung") for row in rows if row.get("stopped_at_rung") is not None
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--archive", type=Path, default=Path(os.environ[ARCHIVE_ENV]) if os.environ.get(ARCHIVE_ENV) else None
    )
    parser.add_argument(
        "--synthetic", action="store_true", help="synthetic data instead of the carve (a check)"
    )
    parser.add_argument("--per-class", type=int, default=600, help="train+val images per class (a sixth val)")
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=9, help="the full schedule (rungs 1, 3, 9 at 9)")
    parser.add_argument("--widths", type=int, nargs=3, default=[32, 96, 192])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--values", type=int, default=3, choices=(1, 2, 3), help="values per parameter (3: 27 trials)"
    )
    parser.add_argument("--executor", choices=("local", "slurm"), default="local")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "cifarflow-halving-bench")
    args = parser.parse_args()

    if args.synthetic:
        per = {"train_per_class": args.per_class, "test_per_class": args.test_per_class}
        data = {"source": "synthetic", "synthetic": per, "val_fraction": 1 / 6}
    else:
        archive = jpeg_archive(args.archive, "--archive")
        args.cache.mkdir(parents=True, exist_ok=True)
        folder = carve(archive, args.cache, args.per_class, args.test_per_class)
        data = {"source": "folder", "path": str(folder), "val_fraction": 1 / 6}
    base = Path(tempfile.mkdtemp(prefix="cifarflow-halving-bench-"))
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    env.pop("MLFLOW_TRACKING_URI", None)
    results = {}
    with ExitStack() as stack:
        extra: tuple[str, ...] = ()
        if args.executor == "slurm":
            from slurm_cluster import profile_shape, slurm_cluster
            from test_slurm import config_overrides, slurm_args

            (base / "slurm-cluster").mkdir()
            cluster = stack.enter_context(
                slurm_cluster(base / "slurm-cluster", **profile_shape(ROOT / "profiles" / "slurm"))
            )
            env = dict(cluster.env, PATH=f"{BIN}{os.pathsep}{cluster.env['PATH']}")
            extra = (*slurm_args(cluster), *config_overrides())
        for method in ("grid", "halving"):
            results["full" if method == "grid" else "halving"] = run_sweep(
                base, method, config(args, data, method), extra, env
            )
    full, halving = results["full"], results["halving"]
    report = {
        "data": "synthetic"
        if args.synthetic
        else f"carve: {args.per_class} per class (a sixth val), CIFAR-10 JPEGs",
        "executor": args.executor,
        "epochs": args.epochs,
        "widths": args.widths,
        **{
            name: {k: v for k, v in r.items() if k not in ("val_accuracy", "stopped_at_rung")}
            for name, r in results.items()
        },
        "halving_stopped_at_rung": halving["stopped_at_rung"],
        "gap_points": round(100 * (full["best_val_accuracy"] - halving["best_val_accuracy"]), 2),
        "trial_epochs_ratio": round(halving["trial_epochs"] / full["trial_epochs"], 3),
        "wall_ratio": round(halving["wall_s"] / full["wall_s"], 3),
        # identical to its uninterrupted training: the full sweep's figure of the halving winner
        "halving_best_in_full_sweep": full["val_accuracy"].get(halving["best_trial"]),
        "full_sweep_rank_of_halving_best": sorted(
            full["val_accuracy"], key=full["val_accuracy"].get, reverse=True
        ).index(halving["best_trial"])
        + 1,  # fmt: skip
        "workdir": str(base),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
