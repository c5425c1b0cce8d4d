"""Experiment: does a second audit pass on the trained model's penultimate features (as Barz and
Denzler's ciFAIR did) find more planted duplicates than the pixel pass at the same precision?

    python bench/audit_model_pass.py [--epochs 8] [--pairs 60]

Generates the planted set (tests/planted_pairs.py), trains the default `fast` recipe on its train
split (CPU), embeds every image by the model's pooled penultimate features (averaged with its
mirror image's, as the model's own TTA does), and finds each image's nearest neighbours by cosine.
The pass's threshold is the loosest that keeps its precision at the pixel pass's; printed: recall
per planted kind of both passes, precision, and how many look-alikes each reports.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "scripts")]

import torch  # noqa: E402
import yaml  # noqa: E402
from cifarflow.audit import find_duplicates  # noqa: E402
from cifarflow.checkpoint import load_checkpoint  # noqa: E402
from cifarflow.config import Recipe, validate_config  # noqa: E402
from cifarflow.dataset import RawDataset, Split, write_dataset  # noqa: E402
from cifarflow.training import train  # noqa: E402
from planted_pairs import KINDS, planted_dataset  # noqa: E402

SPLITS = ("test", "val", "train")


@torch.no_grad()
def embed(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    body = model.body
    out = []
    for start in range(0, len(images), 512):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + 512])).permute(0, 3, 1, 2).float()
        views = []
        for view in (x, x.flip(-1)):
            h = body.layers(body.whiten(model.normalize(view)))
            views.append(body.pool(h).flatten(1))
        f = 0.5 * (views[0] + views[1])
        out.append(torch.nn.functional.normalize(f, dim=1).numpy())
    return np.concatenate(out)


def score(found: dict, planted, pool_of) -> tuple[dict, float, int]:
    """(recall per kind, precision, look-alikes reported) of a set of reported pairs."""
    keys = {tuple(sorted((pool_of[a], pool_of[b]))) for a, b in found}
    truth = {
        kind: {tuple(sorted((pool_of[a], pool_of[b]))) for a, b in pairs}
        for kind, pairs in planted.pairs.items()
    }
    lookalikes = {tuple(sorted((pool_of[a], pool_of[b]))) for a, b in planted.lookalikes}
    every = set().union(*truth.values())
    recall = {kind: len(keys & pairs) / len(pairs) for kind, pairs in truth.items()}
    precision = len(keys & every) / max(len(keys), 1)
    return recall, precision, len(keys & lookalikes)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    planted = planted_dataset(
        pairs_per_kind=args.pairs, lookalike_pairs=2 * args.pairs, background=(600, 200, 2400)
    )
    offsets = np.cumsum([0] + [len(planted.images[s]) for s in SPLITS])
    pool_of = {
        (s, i): int(offsets[k] + i) for k, s in enumerate(SPLITS) for i in range(len(planted.images[s]))
    }
    pool = np.concatenate([planted.images[s] for s in SPLITS])

    pixel = find_duplicates(planted.images, planted.labels)
    pixel_found = {((r.split_a, r.index_a), (r.split_b, r.index_b)) for r in pixel.itertuples()}
    recall1, precision1, looks1 = score(pixel_found, planted, pool_of)

    config = validate_config(
        yaml.safe_load((ROOT / "config/config.yaml").read_text()), ROOT / "config/schema.yaml"
    )
    recipe = Recipe.from_config({**config["train"], "epochs": args.epochs, "device": "cpu"})
    with tempfile.TemporaryDirectory() as tmp:
        train_images = np.concatenate([planted.images["train"], planted.images["val"]])
        train_labels = np.concatenate([planted.labels["train"], planted.labels["val"]])
        raw = RawDataset(
            Split(train_images, train_labels),
            Split(planted.images["test"], planted.labels["test"]),
            [str(c) for c in range(10)],
            "none:planted",
        )
        data = Path(tmp) / "data"
        write_dataset(
            raw, data, dataset_id="planted", settings={"source": "synthetic", "val_fraction": 0.1, "seed": 0}
        )
        metrics = train(data, recipe, Path(tmp) / "train", threads=args.threads)
        model, _ = load_checkpoint(Path(tmp) / "train" / "model.pt")
    features = embed(model, pool)
    similarity = features @ features.T
    np.fill_diagonal(similarity, -1)
    neighbours = np.argsort(-similarity, axis=1)[:, :5]
    candidates = {}
    for i, row in enumerate(neighbours):
        for j in row:
            candidates[tuple(sorted((i, int(j))))] = float(similarity[i, j])
    inverse = {v: k for k, v in pool_of.items()}
    ordered = sorted(candidates.items(), key=lambda kv: -kv[1])
    every = set().union(
        *({tuple(sorted((pool_of[a], pool_of[b]))) for a, b in p} for p in planted.pairs.values())
    )
    # the loosest threshold whose precision is still the pixel pass's
    best, kept = None, 0
    hits = 0
    for n, (pair, value) in enumerate(ordered, start=1):
        hits += pair in every
        if hits / n >= precision1:
            best, kept = value, n
    found2 = {(inverse[a], inverse[b]) for (a, b), _ in ordered[:kept]}
    recall2, precision2, looks2 = score(found2, planted, pool_of)
    print(f"model: {args.epochs} epochs, test accuracy {metrics['test_accuracy']:.3f}")
    print(f"pixel pass:   precision {precision1:.3f}, look-alikes {looks1}, recall " + _fmt(recall1))
    print(
        f"feature pass: precision {precision2:.3f} at cosine >= {best}, look-alikes {looks2}, recall "
        + _fmt(recall2)
    )


def _fmt(recall: dict) -> str:
    return ", ".join(f"{kind} {recall.get(kind, 0):.3f}" for kind in KINDS)


if __name__ == "__main__":
    main()
