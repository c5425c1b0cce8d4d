"""Rule plot_sweep: the report's sweep section: every trial ranked (HTML), validation accuracy
against each swept parameter (PNG), the learning curves of the best trials (PNG)."""

import argparse
import json
from pathlib import Path

import pandas as pd
from cifarflow.plots import save_png, sweep_curves, sweep_parameters
from cifarflow.runtime import log, run_cli, write_text
from cifarflow.tables import sweep_ranking_html

BEST = 3  # trials whose learning curves are drawn (more when more are promoted)


def main(args: argparse.Namespace) -> None:
    ranking = json.loads(Path(args.ranking).read_text())
    metrics = dict(zip(args.trials, args.metrics, strict=True))
    finished = [row["trial"] for row in ranking["trials"] if row["outcome"] == "ok"]
    best = finished[: max(BEST, ranking["promote"])]
    histories = {name: pd.DataFrame(json.loads(Path(metrics[name]).read_text())["history"]) for name in best}
    write_text(args.table, sweep_ranking_html(ranking))
    save_png(sweep_parameters(ranking), args.parameters)
    save_png(sweep_curves(histories, ranking["sweep"]), args.curves)
    log.info("sweep %s: %d trials; wrote %s, %s, %s", ranking["sweep"], len(ranking["trials"]), args.table,
             args.parameters, args.curves)  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ranking", required=True, help="results/sweep/<sweep>/ranking.json")
    parser.add_argument("--trials", nargs="+", required=True, help="the trials' names, in --metrics order")
    parser.add_argument("--metrics", nargs="+", required=True, help="results/train/<trial>/metrics.json")
    parser.add_argument("--table", required=True, help="where to write the ranking (HTML)")
    parser.add_argument("--parameters", required=True, help="where to write accuracy by setting (PNG)")
    parser.add_argument("--curves", required=True, help="where to write the best trials' curves (PNG)")
    run_cli(main, parser)
