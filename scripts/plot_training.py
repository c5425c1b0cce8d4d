"""Rule plot_training: loss and accuracy curves per epoch (PNG) and the history table (HTML) of one
experiment, from its history.csv; re-plotting never retrains."""

import argparse
import logging

import pandas as pd
from cifarflow.plots import save_png, training_curves
from cifarflow.runtime import run_cli, write_text
from cifarflow.tables import history_html

log = logging.getLogger("cifarflow")


def main(args: argparse.Namespace) -> None:
    history = pd.read_csv(args.history)
    save_png(training_curves(history, args.experiment), args.curves)
    write_text(args.table, history_html(history, args.experiment))
    log.info("%s: %d epochs; wrote %s and %s", args.experiment, len(history), args.curves, args.table)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--history", required=True, help="results/train/<experiment>/history.csv")
    parser.add_argument("--experiment", required=True, help="the experiment's name (titles)")
    parser.add_argument("--curves", required=True, help="where to write the curves (PNG)")
    parser.add_argument("--table", required=True, help="where to write the history table (HTML)")
    run_cli(main, parser)
