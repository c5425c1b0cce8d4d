"""Rule download_cifar10: fetch the official CIFAR-10 python archive once, MD5-verified.

Its only output is the archive (no metrics.json), so that an archive placed by hand is never
deleted by a rerun; the job's benchmark file records its timing.
"""

import argparse

from cifarflow import cifar10
from cifarflow.runtime import run_cli


def main(args: argparse.Namespace) -> None:
    cifar10.download(args.url, args.archive, args.md5, timeout=args.timeout)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default=cifar10.OFFICIAL_URL)
    parser.add_argument("--md5", default=cifar10.OFFICIAL_MD5, help="expected MD5 of the archive")
    parser.add_argument("--archive", required=True, help="where to put cifar-10-python.tar.gz")
    parser.add_argument("--timeout", type=float, default=30.0, help="network timeout, seconds")
    run_cli(main, parser)
