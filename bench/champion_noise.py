"""How the champion rule (cifarflow.registry.champion_decision) behaves on noise, by simulation.

Two models are scored on the same validation images. Each image has a chance q of being classified
right, drawn from Beta(a, b) with mean `--accuracy` (images hard for one model are hard for the
other); each model gets it right with probability q, independently, and states confidence q (so
both are calibrated by construction). A challenger `--edge` points better has q raised by the edge
on every image (capped at 1). For `--trials` draws this prints how often the challenger would take
the alias under the old rule (any higher validation accuracy) and under the exact McNemar rule at
`--alpha`, and the spread of the difference of the two models' ECEs (15 bins, top label): the noise
that register.challenger.max_ece_increase must stand above. Needs no data; seconds on a CPU.

    python bench/champion_noise.py --images 5000 --trials 2000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from cifarflow.calibration import bin_index  # noqa: E402
from cifarflow.paired import mcnemar  # noqa: E402


def ece(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE with calibration.py's bins, from each image's confidence and right/wrong."""
    index = bin_index(confidence, bins)
    total = 0.0
    for m in range(bins):
        members = index == m
        if members.any():
            total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=5000, help="validation images (CIFAR-10: 5,000)")
    parser.add_argument("--accuracy", type=float, default=0.9, help="mean chance of an image being right")
    parser.add_argument("--concentration", type=float, default=2.0, help="a + b of the Beta of q")
    parser.add_argument("--edges", type=float, nargs="+", default=[0.0, 0.005, 0.01, 0.02])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    a = args.accuracy * args.concentration
    b = (1 - args.accuracy) * args.concentration
    print(f"{args.images} images, accuracy {args.accuracy}, Beta({a:g}, {b:g}), {args.trials} trials each")
    print(
        "edge | old rule moves | McNemar moves | discordant images (median)"
        " | ECE difference: sd, 95th pct of |d|"
    )
    for edge in args.edges:
        old = new = 0
        discordant, ece_diffs = [], []
        for _ in range(args.trials):
            q = rng.beta(a, b, args.images)
            q_challenger = np.minimum(q + edge, 1.0)
            holder = rng.random(args.images) < q
            challenger = rng.random(args.images) < q_challenger
            old += challenger.mean() > holder.mean()
            test = mcnemar(challenger, holder)
            new += test.p_value < args.alpha
            discordant.append(test.better + test.worse)
            ece_diffs.append(ece(q_challenger, challenger) - ece(q, holder))
        d = np.asarray(ece_diffs)
        print(
            f"{edge:.3f} | {old / args.trials:.3f} | {new / args.trials:.3f} | {np.median(discordant):.0f} | "
            f"{d.std():.4f}, {np.quantile(np.abs(d), 0.95):.4f}"
        )


if __name__ == "__main__":
    main()
