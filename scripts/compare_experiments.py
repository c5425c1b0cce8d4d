"""Rule compare_experiments: every experiment side by side (HTML table, bar chart, recipes), the
headline results that report/workflow.rst includes (RST), and accuracy mean/std across experiments."""

import argparse
import json
import logging
from pathlib import Path

from cifarflow.errors import PipelineError
from cifarflow.plots import comparison_chart, save_png
from cifarflow.runtime import run_cli, write_metrics, write_text
from cifarflow.tables import (
    champion,
    comparison_frame,
    comparison_html,
    comparison_metrics,
    recipes_html,
    summary_rst,
)

log = logging.getLogger("cifarflow")
PER_EXPERIMENT = ("train", "export", "evaluate", "manifest", "registration")


def main(args: argparse.Namespace) -> None:
    recipes = json.loads(args.recipes)
    experiments = {name: {"recipe": recipes[name]} for name in args.experiments}
    for part in PER_EXPERIMENT:
        files = getattr(args, part)
        if len(files) != len(args.experiments):
            raise PipelineError(f"--{part} has {len(files)} files for {len(args.experiments)} experiments")
        for name, path in zip(args.experiments, files, strict=True):
            experiments[name][part] = json.loads(Path(path).read_text())
    frame = comparison_frame(experiments)
    champion_name, registration = champion(experiments)
    write_text(args.table, comparison_html(frame, champion_name))
    save_png(comparison_chart(frame), args.chart)
    write_text(args.recipes_table, recipes_html(recipes))
    write_text(args.summary, summary_rst(frame, champion_name, registration))
    write_metrics(args.metrics, comparison_metrics(frame))
    log.info("%d experiments, champion: %s; wrote %s", len(frame), champion_name, args.table)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--experiments", nargs="+", required=True, help="experiment names, in file order")
    parser.add_argument("--recipes", required=True, help="experiment -> resolved recipe, JSON")
    for part, path in (
        ("train", "results/train/<experiment>/metrics.json"),
        ("export", "results/export/<experiment>/metrics.json"),
        ("evaluate", "results/evaluate/<experiment>/metrics.json"),
        ("manifest", "results/image/<experiment>/manifest.json"),
        ("registration", "results/register/<experiment>/registration.json"),
    ):
        parser.add_argument(f"--{part}", nargs="+", required=True, help=f"{path}, one per experiment")
    parser.add_argument("--table", required=True, help="where to write the comparison (HTML)")
    parser.add_argument("--chart", required=True, help="where to write the bar chart (PNG)")
    parser.add_argument("--recipes-table", required=True, help="where to write the recipes (HTML)")
    parser.add_argument("--summary", required=True, help="where to write the headline results (RST)")
    parser.add_argument("--metrics", required=True, help="where to write metrics.json")
    run_cli(main, parser)
