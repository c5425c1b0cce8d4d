"""Rule plot_sweep: the report's sweep section: every trial ranked (HTML), validation accuracy
against each swept parameter (PNG), the learning curves of the best trials (PNG), every trial's
settings against its validation accuracy in parallel coordinates (PNG) and, for successive halving,
where each trial stopped (PNG)."""

import argparse
import json
from pathlib import Path

import pandas as pd
from cifarflow.errors import PipelineError
from cifarflow.plots import save_png, sweep_coordinates, sweep_curves, sweep_parameters, sweep_rungs
from cifarflow.runtime import log, run_cli, write_text
from cifarflow.tables import sweep_ranking_html

BEST = 3  # trials whose learning curves are drawn (more when more are promoted)


def main(args: argparse.Namespace) -> None:
    ranking = json.loads(Path(args.ranking).read_text())
    metrics = dict(zip(args.trials, args.metrics, strict=True))
    finished = [row["trial"] for row in ranking["trials"] if row["outcome"] == "ok"]
    best = finished[: max(BEST, ranking["promote"])]
    histories = {
        name: pd.DataFrame(json.loads(Path(path).read_text())["history"]) for name, path in metrics.items()
    }
    write_text(args.table, sweep_ranking_html(ranking))
    save_png(sweep_parameters(ranking), args.parameters)
    save_png(sweep_curves({name: histories[name] for name in best}, ranking["sweep"]), args.curves)
    save_png(sweep_coordinates(ranking), args.coordinates)
    written = [args.table, args.parameters, args.curves, args.coordinates]
    if args.rungs:
        if "rungs" not in ranking:
            raise PipelineError("--rungs: the sweep is not a halving one (its ranking has no rungs)")
        save_png(sweep_rungs(ranking, histories), args.rungs)
        written.append(args.rungs)
    log.info("sweep %s: %d trials; wrote %s", ranking["sweep"], len(ranking["trials"]), ", ".join(written))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ranking", required=True, help="results/sweep/<sweep>/ranking.json")
    parser.add_argument("--trials", nargs="+", required=True, help="the trials' names, in --metrics order")
    parser.add_argument("--metrics", nargs="+", required=True, help="results/train/<trial>/metrics.json")
    parser.add_argument("--table", required=True, help="where to write the ranking (HTML)")
    parser.add_argument("--parameters", required=True, help="where to write accuracy by setting (PNG)")
    parser.add_argument("--curves", required=True, help="where to write the best trials' curves (PNG)")
    parser.add_argument("--coordinates", required=True, help="where to write the parallel coordinates (PNG)")
    parser.add_argument("--rungs", help="halving: where to write where each trial stopped (PNG)")
    run_cli(main, parser)
