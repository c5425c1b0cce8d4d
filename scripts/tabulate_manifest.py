"""Rule tabulate_manifest: the serving image's manifest.json as an HTML table for the report."""

import argparse
import json
import logging
from pathlib import Path

from cifarflow.runtime import run_cli, write_text
from cifarflow.tables import manifest_html

log = logging.getLogger("cifarflow")


def main(args: argparse.Namespace) -> None:
    write_text(args.out, manifest_html(json.loads(Path(args.manifest).read_text()), args.experiment))
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", required=True, help="results/image/<experiment>/manifest.json")
    parser.add_argument("--experiment", required=True, help="the experiment's name (title)")
    parser.add_argument("--out", required=True, help="where to write the table (HTML)")
    run_cli(main, parser)
