#!/usr/bin/env python3
"""Build the pipeline image with Podman or Docker (`make pipeline-image` runs this).

    python containers/pipeline/build.py [--engine podman|docker] [--variant cuda|cpu]
        [--base-image IMAGE] [--tag NAME:TAG] [--no-host-pip]

The tag defaults to cifarflow-pipeline:<version in pyproject.toml>-<variant>. The build context is
the repository root: the image installs by the lock, constraints.txt (.dockerignore keeps the context
to the files the Dockerfile copies). Beyond a plain `podman build`, it hands the build what this
machine's pip uses: local wheel directories and indexes (`pip config list`: find-links,
extra-index-url) are mounted read-only at the same paths and passed as PIP_FIND_LINKS /
PIP_EXTRA_INDEX_URL, and the CA bundle directory (cert) is mounted, so that pip inside the build
installs from the files on disk instead of downloading gigabytes (Podman only: `docker build` cannot
mount host directories). Logs the command on stderr, then prints the image's id, size and build
time; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from urllib.parse import unquote, urlparse

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from cifarflow.serving.logs import setup_logging  # noqa: E402

log = logging.getLogger("cifarflow")
NAME = "cifarflow-pipeline"


def version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def default_tag(variant: str) -> str:
    return f"{NAME}:{version()}-{variant}"


def pip_config(python: str = sys.executable) -> dict[str, list[str]]:
    """find-links, extra-index-url and cert from `pip config list` (global, user, env; last wins)."""
    out = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True)
    settings: dict[str, list[str]] = {}
    for line in out.stdout.splitlines():
        key, _, value = line.partition("=")
        name = key.rpartition(".")[2]
        if name in ("find-links", "extra-index-url", "cert"):
            settings[name] = shlex.split(value)[0].split() if value else []
    return settings


def local_dir(entry: str) -> Path | None:
    """The host directory behind a local pip location (a path or file:// URL), else None."""
    path = Path(unquote(urlparse(entry).path)) if entry.startswith("file://") else Path(entry)
    if not path.is_absolute() or not path.exists():
        return None
    # A PEP 503 index (<dir>/simple) links to its files relative to itself (../../files/...).
    return path.parent if path.name == "simple" else path


def host_pip_options(engine: str, python: str = sys.executable) -> tuple[list[str], list[str]]:
    """(build options, notes): mounts and PIP_* build arguments that give the build the host's pip setup."""
    settings = pip_config(python)
    options: list[str] = []
    notes: list[str] = []
    mounts: list[Path] = []
    for name, arg in (("find-links", "PIP_FIND_LINKS"), ("extra-index-url", "PIP_EXTRA_INDEX_URL")):
        entries = settings.get(name, [])
        kept = []
        for entry in entries:
            if "://" in entry and not entry.startswith("file://"):
                kept.append(entry)  # a remote index or page: reachable from the build as from here
                continue
            directory = local_dir(entry)
            if directory is None:
                continue  # a local location that does not exist on this machine
            if engine != "podman":
                notes.append(f"{entry}: docker build cannot mount host directories; left out")
                continue
            mounts.append(directory)
            kept.append(entry)
        if kept:
            options += ["--build-arg", f"{arg}={' '.join(kept)}"]
    cert = settings.get("cert")
    if engine == "podman" and cert and Path(cert[0]).exists():
        mounts.append(Path(cert[0]).parent)  # pip's CA bundle, for any download over HTTPS
    for directory in dict.fromkeys(mounts):
        options += ["-v", f"{directory}:{directory}:ro"]
    return options, notes


def git_revision() -> str | None:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or None if out.returncode == 0 else None


def build(
    engine: str, variant: str, base_image: str | None, tag: str, host_pip: bool, extra: list[str]
) -> dict:
    command = [engine, "build", "-f", str(HERE / "Dockerfile"), "-t", tag]
    command += ["--build-arg", f"TORCH_VARIANT={variant}", "--build-arg", f"VERSION={version()}"]
    if base_image:
        command += ["--build-arg", f"BASE_IMAGE={base_image}"]
    if revision := git_revision():
        # a label, not a build argument: a new commit must not invalidate the dependency layer
        command += ["--label", f"org.opencontainers.image.revision={revision}"]
    if host_pip:
        options, notes = host_pip_options(engine)
        command += options
        for note in notes:
            log.warning("%s", note)
    command += [*extra, str(ROOT)]
    log.info("+ %s", shlex.join(command))
    before = image_id(engine, tag)
    start = time.monotonic()
    subprocess.run(command, check=True)
    seconds = time.monotonic() - start
    inspect = subprocess.run([engine, "image", "inspect", tag], capture_output=True, text=True, check=True)
    image = json.loads(inspect.stdout)[0]
    if before and before != image["Id"]:
        # The tag moved (a rebuild always commits anew: --label): drop the old image, which kept
        # its own copy of the dependency layer if that changed. Not if a container still uses it.
        subprocess.run([engine, "rmi", before], capture_output=True)
    return {"image": tag, "id": image["Id"], "size_bytes": image["Size"], "build_seconds": round(seconds, 1)}


def image_id(engine: str, tag: str) -> str | None:
    inspect = [engine, "image", "inspect", "--format", "{{.Id}}", tag]
    out = subprocess.run(inspect, capture_output=True, text=True)
    return out.stdout.strip() or None if out.returncode == 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    engines = [e for e in ("podman", "docker") if shutil.which(e)]
    parser.add_argument("--engine", choices=["podman", "docker"], default=(engines or ["podman"])[0])
    parser.add_argument("--variant", choices=["cuda", "cpu"], default=os.environ.get("TORCH_VARIANT", "cuda"))
    parser.add_argument("--base-image", help="BASE_IMAGE build argument (default: the Dockerfile's)")
    parser.add_argument("--tag", help=f"default {NAME}:<version>-<variant>")
    parser.add_argument(
        "--no-host-pip", action="store_true", help="do not hand the build this machine's pip setup"
    )
    parser.add_argument("extra", nargs="*", help="further build options (after --)")
    args = parser.parse_args()
    setup_logging()  # the command and notes on stderr; the result on stdout
    result = build(
        args.engine,
        args.variant,
        args.base_image,
        args.tag or default_tag(args.variant),
        not args.no_host_pip,
        args.extra,
    )
    size = result["size_bytes"] / 2**30
    print(f"built {result['image']} ({result['id'][:12]}): {size:.2f} GiB in {result['build_seconds']} s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
