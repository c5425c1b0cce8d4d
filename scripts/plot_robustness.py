"""Rule plot_robustness: the robustness table (HTML) and heat map (PNG) for the report, from
evaluate_robustness's robustness.json."""

import argparse
import json
import logging
from pathlib import Path

from cifarflow.plots import robustness_heatmap, save_png
from cifarflow.robustness import Robustness
from cifarflow.runtime import run_cli, write_text
from cifarflow.tables import robustness_html

log = logging.getLogger("cifarflow")


def main(args: argparse.Namespace) -> None:
    result = Robustness.from_json(json.loads(Path(args.table).read_text()))
    write_text(args.html, robustness_html(result, args.experiment))
    save_png(robustness_heatmap(result, args.experiment), args.heatmap)
    log.info("wrote %s and %s", args.html, args.heatmap)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--table", required=True, help="results/robustness/<experiment>/robustness.json")
    parser.add_argument("--experiment", required=True, help="the experiment's name (titles)")
    parser.add_argument("--html", required=True, help="where to write the table (HTML)")
    parser.add_argument("--heatmap", required=True, help="where to write the heat map (PNG)")
    run_cli(main, parser)
