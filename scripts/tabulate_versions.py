"""Rule tabulate_versions: the software versions every job ran with, as one HTML table for the report
(read from each job's log, where the job recorded them)."""

import argparse
import logging

from cifarflow.runtime import run_cli, write_text
from cifarflow.tables import versions_html
from cifarflow.versions import from_logs

log = logging.getLogger("cifarflow")


def main(args: argparse.Namespace) -> None:
    jobs = from_logs(args.logs)
    write_text(args.out, versions_html(jobs))
    log.info("wrote %s (%d jobs)", args.out, len(jobs))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--logs", nargs="+", required=True, help="JOB=LOG of every job to list")
    parser.add_argument("--out", required=True, help="where to write the table (HTML)")
    run_cli(main, parser)
