"""Rule rank_sweep: a sweep's trials ranked by validation accuracy, the best `sweep.promote` named
for export, serving and registration (ranking.json, which the workflow reads as a checkpoint)."""

import argparse
import json
from pathlib import Path

from cifarflow.errors import PipelineError
from cifarflow.runtime import log, run_cli, write_json, write_metrics
from cifarflow.sweep import Sweep, rank, ranking_metrics


def main(args: argparse.Namespace) -> None:
    sweep = Sweep.from_json(args.sweep)
    if len(args.metrics) != len(sweep.trials):
        raise PipelineError(f"--metrics has {len(args.metrics)} files for {len(sweep.trials)} trials")
    results = {
        name: json.loads(Path(path).read_text())
        for name, path in zip(sweep.trials, args.metrics, strict=True)
    }
    ranking = rank(sweep, results)
    for row in ranking["trials"]:
        figure = f"val accuracy {row['val_accuracy']:.4f}" if row["outcome"] == "ok" else row["reason"]
        log.info("%s %s: %s, %s", row["rank"] or "-", row["trial"], row["outcome"], figure)
    write_json(args.ranking, ranking)
    write_metrics(args.summary, ranking_metrics(ranking))
    log.info("sweep %s: promoted %s (by validation accuracy)", sweep.name, ", ".join(ranking["promoted"]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sweep", required=True, help="the expanded sweep, JSON (cifarflow.sweep.Sweep)")
    parser.add_argument(
        "--metrics", nargs="+", required=True, help="results/train/<trial>/metrics.json, in trial order"
    )
    parser.add_argument("--ranking", required=True, help="where to write ranking.json")
    parser.add_argument("--summary", required=True, help="where to write the sweep's metrics.json")
    run_cli(main, parser)
