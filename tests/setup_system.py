#!/usr/bin/env python3
"""The Debian packages the tests need beyond the venv; `make test` runs this before pytest.

    python3 tests/setup_system.py [--check]

    chromium  Debian's chromium                        the report test opens the HTML report in it
    podman    podman, runc, debootstrap                the serving and containers tests build images
    slurm     slurmctld, slurmd, slurm-client, munge   the Slurm test starts a one-node cluster

Idempotent. As root with apt-get: installs the missing parts, saying which, and nothing else (apt's
own output only when it fails). Otherwise: one message with the exact command to run, and exit 0;
the tests that need a missing part skip, naming it and the command (tests/conftest.py:
require_system_part), or fail where CI is set. --check: install nothing, exit 1 when a part is
missing. Podman's settings come from containers/containers.conf (CONTAINERS_CONF), not /etc.
Standard library only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")  # daemons and debootstrap, which a user's PATH may lack


@dataclass(frozen=True)
class Part:
    packages: tuple[str, ...]
    needs: tuple[str, ...]  # commands (or absolute paths) that must be there afterwards
    tests: str  # which tests need it, for the messages


PARTS = {
    "chromium": Part(("chromium",), ("/usr/bin/chromium",), "the report test (headless Chromium)"),
    "podman": Part(
        ("podman", "runc", "debootstrap"),
        ("podman", "runc", "debootstrap"),
        "the serving and containers tests (images built with Podman on a debootstrap base)",
    ),
    "slurm": Part(
        ("slurmctld", "slurmd", "slurm-client", "munge"),
        ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scancel", "scontrol", "sinfo"),
        "the Slurm test (a one-node cluster of its own)",
    ),
}


def find(command: str) -> str | None:
    if os.path.isabs(command):
        return command if os.access(command, os.X_OK) else None
    return shutil.which(command) or shutil.which(command, path=os.pathsep.join(SBIN))


def missing(part: str) -> list[str]:
    """What `part` lacks here (commands or paths); empty when it is complete."""
    return [need for need in PARTS[part].needs if find(need) is None]


def install_command(parts: list[str]) -> str:
    packages = [package for part in parts for package in PARTS[part].packages]
    return f"sudo apt-get update && sudo apt-get install -y {' '.join(packages)}"


def why_missing(part: str) -> str | None:
    """None when `part` is installed, else one line naming what is missing and the command that fixes it."""
    lacking = missing(part)
    if not lacking:
        return None
    return (
        f"{part} is not installed ({', '.join(lacking)} missing), needed by {PARTS[part].tests}: "
        f"run `{install_command([part])}` (as root, `make test` installs it)"
    )


def apt_get(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return subprocess.run(["apt-get", *args], env=env, capture_output=True, text=True)


def install(parts: list[str]) -> None:
    packages = [package for part in parts for package in PARTS[part].packages]
    print(f"setup: installing Debian packages for the tests: {' '.join(packages)}", flush=True)
    start = time.monotonic()
    command = ["install", "-y", "-qq", *packages]
    done = apt_get(command)
    if done.returncode != 0:  # a fresh machine may have no (or stale) package lists yet
        update = apt_get(["update", "-qq"])
        done = apt_get(command) if update.returncode == 0 else update
    if done.returncode != 0:
        sys.exit(f"setup: `apt-get {' '.join(command)}` failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    still = {part: missing(part) for part in parts if missing(part)}
    if still:
        sys.exit(f"setup: installed {' '.join(packages)}, but still missing: {still}")
    print(f"setup: installed in {time.monotonic() - start:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="install nothing; exit 1 when a part is missing")
    args = parser.parse_args()
    lacking = [part for part in PARTS if missing(part)]
    if not lacking:
        return
    if not args.check and os.geteuid() == 0 and shutil.which("apt-get"):
        install(lacking)
        return
    details = "; ".join(f"{part} ({', '.join(missing(part))})" for part in lacking)
    who = "--check" if args.check else "no apt-get" if shutil.which("apt-get") is None else "not root"
    skipped = "fail (CI is set)" if os.environ.get("CI") else "skip, saying so"
    print(
        f"setup ({who}): missing for the tests: {details}. Install with:\n"
        f"    {install_command(lacking)}\n"
        f"Until then the tests that need them {skipped}.",
        file=sys.stderr,
        flush=True,
    )
    sys.exit(1 if args.check else 0)


if __name__ == "__main__":
    main()
