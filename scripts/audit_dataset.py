"""Rule audit_dataset: exact and near-duplicates within and across splits, anomalies, class balance,
and the leakage gate (audit.max_test_leakage)."""

import argparse
import json
import logging
from pathlib import Path

from cifarflow.audit import AuditSettings, audit, leakage_report
from cifarflow.dataset import load_meta, load_split
from cifarflow.errors import PipelineError
from cifarflow.plots import class_balance_chart, duplicate_pair_grid, save_png
from cifarflow.runtime import atomic_path, run_cli, write_metrics

log = logging.getLogger("cifarflow")

SPLIT_ORDER = ("test", "val", "train")  # pairs name the evaluation side first


def main(args: argparse.Namespace) -> None:
    config = json.loads(args.settings)
    meta = load_meta(args.data)
    class_names = meta["class_names"]
    splits = {name: load_split(args.data, name, mmap=False) for name in SPLIT_ORDER}
    images = {name: split.images for name, split in splits.items()}
    settings = AuditSettings(
        max_distance=config["max_distance"], mirrors=config["mirrors"], threads=args.threads
    )
    log.info("%s: auditing %s images", meta["dataset_id"], {name: len(x) for name, x in images.items()})
    result = audit(images, {name: split.labels for name, split in splits.items()}, class_names, settings)
    m = result.metrics

    cross = result.pairs[result.pairs["split_a"] != result.pairs["split_b"]].head(config["grid_pairs"])
    title = f"{meta['dataset_id']}: the {len(cross)} closest cross-split pairs"
    grid = duplicate_pair_grid(cross, images, class_names, title)
    text, leaky = leakage_report(m, config["max_test_leakage"])
    if leaky:  # the figures and the grid, and no output (a failed job's outputs are removed anyway)
        save_png(grid, args.failed_grid)
        raise PipelineError(f"{text}. The closest pairs: {args.failed_grid}")
    (log.warning if m["test_with_train_duplicate_count"] else log.info)("%s", text)
    log.info(
        "pairs: %d exact, %d near, %d mirrored; %d within train; %d with different labels; anomalies: %d",
        m["exact_duplicate_pairs"],
        m["near_duplicate_pairs"],
        m["mirrored_duplicate_pairs"],
        m["train_internal_duplicate_pairs"],
        m["duplicate_pairs_with_different_labels"],
        m["anomalies"],
    )

    out = Path(args.outdir)
    save_png(grid, out / "closest_pairs.png")
    save_png(
        class_balance_chart(result.balance, f"{meta['dataset_id']}: class shares per split"),
        out / "class_balance.png",
    )
    for name, frame in (("duplicates", result.pairs), ("anomalies", result.anomalies)):
        with atomic_path(out / f"{name}.parquet") as tmp:
            frame.to_parquet(tmp, index=False)
    write_metrics(out / "metrics.json", m)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, type=Path, help="results/data/<dataset-id>")
    parser.add_argument("--settings", required=True, help="config `audit`, JSON")
    parser.add_argument("--outdir", required=True, help="results/audit/<dataset-id>")
    parser.add_argument("--failed-grid", required=True, help="where the pair grid goes when the gate fails")
    parser.add_argument("--threads", type=int, default=1)
    run_cli(main, parser)
