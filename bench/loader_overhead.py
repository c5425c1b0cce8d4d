"""Benchmark: train_model's images/s against a minimal loop over pre-materialised tensors.

    python bench/loader_overhead.py [--images 10000] [--epochs 2]

Both use the default recipe's model, batch size and optimizer on the same synthetic images.
The minimal loop gets float, channels_last batches made before timing starts, and does nothing
but forward, backward and the optimiser step; train_model also indexes the uint8 tensor, converts,
augments (flip + translate), keeps the EMA and checks for divergence. Target: >= 95%.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from cifarflow import synthetic  # noqa: E402
from cifarflow.config import Recipe, validate_config  # noqa: E402
from cifarflow.dataset import load_meta, write_dataset  # noqa: E402
from cifarflow.models import build_model  # noqa: E402
from cifarflow.serving.logs import setup_logging  # noqa: E402
from cifarflow.training import make_optimizer, train  # noqa: E402


def minimal_loop(recipe: Recipe, meta: dict, n_images: int, epochs: int) -> float:
    torch.manual_seed(0)
    model = build_model(recipe.model, meta["mean"], meta["std"], 10, recipe.widths, False)
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = make_optimizer(model, recipe)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    batch = recipe.batch_size
    steps = n_images // batch
    batches = [
        torch.rand(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last) for _ in range(steps)
    ]
    labels = [torch.randint(0, 10, (batch,)) for _ in range(steps)]
    start = time.perf_counter()
    for _ in range(epochs):
        for x, y in zip(batches, labels, strict=True):
            loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return steps * batch * epochs / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    setup_logging()  # train()'s progress on stderr, as in a rule's log; the figures go to stdout
    torch.set_num_threads(args.threads)
    config = validate_config(
        yaml.safe_load((ROOT / "config/config.yaml").read_text()), ROOT / "config/schema.yaml"
    )
    recipe = Recipe.from_config({**config["train"], "epochs": args.epochs, "device": "cpu"})
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        per_class = args.images // 9  # 10% goes to val
        write_dataset(
            synthetic.generate(per_class, 10),
            data,
            dataset_id="bench",
            settings={"source": "synthetic", "val_fraction": 0.1, "seed": 0},
        )
        meta = load_meta(data)
        n_train = meta["sizes"]["train"]
        results = {"minimal": [], "train_model": []}
        for _ in range(2):  # interleaved, to even out machine noise
            results["minimal"].append(minimal_loop(recipe, meta, n_train, args.epochs))
            # a finished train() leaves no resume.pt behind: the next round trains from scratch
            metrics = train(data, recipe, Path(tmp) / "run", threads=args.threads)
            results["train_model"].append(metrics["images_per_second"])
    best = {k: max(v) for k, v in results.items()}
    print(
        json.dumps(
            {
                "images": n_train,
                "batch_size": recipe.batch_size,
                "widths": list(recipe.widths),
                "images_per_second": results,
                "ratio": round(best["train_model"] / best["minimal"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
