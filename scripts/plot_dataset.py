"""Rule plot_dataset: a grid of sample training images per class (PNG) and images per class and
split (HTML) for the report."""

import argparse
import logging
from pathlib import Path

from cifarflow.dataset import load_meta, load_split
from cifarflow.plots import sample_grid, save_png
from cifarflow.runtime import run_cli, write_text
from cifarflow.tables import class_counts_html

log = logging.getLogger("cifarflow")


def main(args: argparse.Namespace) -> None:
    meta = load_meta(args.data)
    train = load_split(args.data, "train")
    grid = sample_grid(train.images, train.labels, meta["class_names"], args.per_class, args.seed)
    save_png(grid, args.samples)
    write_text(args.counts, class_counts_html(meta))
    log.info("%s: wrote %s and %s", meta["dataset_id"], args.samples, args.counts)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, type=Path, help="results/data/<dataset-id>")
    parser.add_argument("--samples", required=True, help="where to write the sample grid (PNG)")
    parser.add_argument("--counts", required=True, help="where to write the class counts (HTML)")
    parser.add_argument("--per-class", type=int, default=10, help="sample images per class")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample choice")
    run_cli(main, parser)
