"""Rule tabulate_export: the ONNX export's parity gate, latency, throughput and size (and int8
figures when quantised) as an HTML table."""

import argparse
import json
import logging
from pathlib import Path

from cifarflow.runtime import run_cli, write_text
from cifarflow.tables import export_html

log = logging.getLogger("cifarflow")


def main(args: argparse.Namespace) -> None:
    export = json.loads(Path(args.metrics).read_text())
    quantize = json.loads(Path(args.quantize).read_text()) if args.quantize else None
    write_text(args.out, export_html(export, json.loads(args.parity), args.experiment, quantize))
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--metrics", required=True, help="results/export/<experiment>/metrics.json")
    parser.add_argument("--quantize", help="results/quantize/<experiment>/metrics.json, when int8 is on")
    parser.add_argument("--parity", required=True, help="the `export.parity` gate, JSON")
    parser.add_argument("--experiment", required=True, help="the experiment's name (title)")
    parser.add_argument("--out", required=True, help="where to write the table (HTML)")
    run_cli(main, parser)
