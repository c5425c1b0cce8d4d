"""Rule prepare_dataset: read a source (cifar10 | folder | synthetic), split off val, write arrays."""

import argparse
import json
import logging
import time
from pathlib import Path

from cifarflow import cifar10, folder, synthetic
from cifarflow.dataset import RawDataset, write_dataset
from cifarflow.errors import PipelineError
from cifarflow.runtime import run_cli, write_metrics

log = logging.getLogger("cifarflow")


def read_source(settings: dict, archive: str | None, threads: int) -> RawDataset:
    source = settings["source"]
    if source == "cifar10":
        if not archive:
            raise PipelineError("dataset.source is cifar10: pass the archive's path")
        return cifar10.read_archive(archive, settings["md5"])
    if source == "folder":
        return folder.read_folder(settings["path"], settings["resize"], threads, settings["max_image_pixels"])
    return synthetic.generate(**settings["synthetic"])


def main(args: argparse.Namespace) -> None:
    settings = json.loads(args.settings)
    start = time.perf_counter()
    raw = read_source(settings, args.archive, args.threads)
    log.info(
        "read %d train + %d test images, %d classes from %s",
        len(raw.train.labels),
        len(raw.test.labels),
        len(raw.class_names),
        settings["source"],
    )
    meta = write_dataset(raw, Path(args.outdir), dataset_id=args.dataset_id, settings=settings)
    seconds = time.perf_counter() - start
    total = sum(meta["sizes"].values())
    log.info("wrote %s: %s; mean %s std %s", args.outdir, meta["sizes"], meta["mean"], meta["std"])
    write_metrics(
        Path(args.outdir) / "metrics.json",
        {
            **{f"{split}_images": n for split, n in meta["sizes"].items()},
            "num_classes": meta["num_classes"],
            "seconds": round(seconds, 3),
            "images_per_second": round(total / seconds, 1),
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("archive", nargs="?", help="cifar-10-python.tar.gz (source cifar10 only)")
    parser.add_argument(
        "--settings",
        required=True,
        help="JSON from cifarflow.config.prepare_settings (the validated dataset config)",
    )
    parser.add_argument("--dataset-id", required=True, help="id recorded in meta.json")
    parser.add_argument("--outdir", required=True, help="results/data/<dataset-id>")
    parser.add_argument("--threads", type=int, default=1, help="decoding processes (folder source)")
    run_cli(main, parser)
