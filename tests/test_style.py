"""Project hygiene that CI enforces: snakefmt, ruff, and conda envs pinned like pyproject.toml."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from conftest import ROOT

BIN = Path(sys.executable).parent


def test_snakefmt_clean():
    run = subprocess.run(
        [BIN / "snakefmt", "--check", "Snakefile", "rules"], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_ruff_clean():
    run = subprocess.run(
        [BIN / "ruff", "check", "scripts", "tests", "bench"], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr


def _pins() -> dict[str, str]:
    """pyproject's dependencies as name -> specifier, e.g. {'numpy': '>=2.4,<3', 'torch': '==2.14.1'}."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {
        m["name"].lower(): m["spec"]
        for m in (re.match(r"(?P<name>[A-Za-z0-9_.-]+)(?P<spec>.*)", d) for d in deps)
    }


def test_conda_envs_pin_what_pyproject_pins():
    pins = _pins()
    conda_names = {"pytorch": "torch"}  # conda-forge names that differ from PyPI's
    envs = sorted((ROOT / "envs").glob("*.yaml"))
    assert envs, "envs/ holds no conda environments"
    for env in envs:
        deps = yaml.safe_load(env.read_text())["dependencies"]
        # a `pip:` subsection holds what conda-forge lacks, written as pyproject writes it
        pip = [(d, "==") for entry in deps if isinstance(entry, dict) for d in entry.get("pip", [])]
        conda = [(d, "=") for d in deps if isinstance(d, str) and not d.startswith("python=") and d != "pip"]
        for dep, exact in conda + pip:
            name, spec = re.match(r"([A-Za-z0-9_.-]+)(.*)", dep).groups()
            name = conda_names.get(name, name).lower()
            assert name in pins, f"{env.name}: {name} is not a dependency in pyproject.toml"
            expected = pins[name].replace("==", exact)
            assert spec == expected, f"{env.name}: {name}{spec} differs from pyproject's {name}{pins[name]}"
