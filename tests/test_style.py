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
        [BIN / "ruff", "check", "scripts", "tests", "bench", "containers", "tests/apptainer_via_podman"],
        cwd=ROOT,
        capture_output=True,
        text=True,
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


# Deliberately not in the pipeline image (containers/pipeline/requirements.txt says why).
NOT_IN_PIPELINE_IMAGE = {"snakemake", "snakemake-executor-plugin-slurm", "kserve", "tritonclient"}


def _requirements(path: Path) -> dict[str, str]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return dict(line.lower().split("==") for line in lines if line)


def test_pipeline_image_pins_what_pyproject_pins_at_the_versions_the_venv_runs():
    from importlib.metadata import version

    from packaging.specifiers import SpecifierSet

    pins = {name: re.sub(r"^\[[^]]*\]", "", spec) for name, spec in _pins().items()}  # extras dropped
    image = _requirements(ROOT / "containers" / "pipeline" / "requirements.txt")
    expected = set(pins) - NOT_IN_PIPELINE_IMAGE
    assert set(image) == expected, f"requirements.txt lists {sorted(image)}, pyproject {sorted(expected)}"
    for name, pinned in image.items():
        assert pinned in SpecifierSet(pins[name]), f"{name}=={pinned} is outside pyproject's {pins[name]}"
        # the image computes what the host computes (a test compares their results)
        assert version(name) == pinned, f"requirements.txt: {name}=={pinned}, the venv has {version(name)}"


def test_image_version_tags_follow_pyproject():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    dockerfile = (ROOT / "containers" / "pipeline" / "Dockerfile").read_text()
    definition = (ROOT / "containers" / "pipeline" / "pipeline.def").read_text()
    assert f"ARG VERSION={version}\n" in dockerfile and f"\n    VERSION={version}\n" in definition
    assert "ARG TORCH_VARIANT=cuda\n" in dockerfile and "\n    TORCH_VARIANT=cuda\n" in definition
    default = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())["properties"]["container"]
    assert default["properties"]["image"]["default"].endswith(f"/cifarflow-pipeline:{version}-cuda")


# Rules that drive a container engine themselves (rules/serve.smk): on the host, no container.
HOST_RULES = {"build_serving_image", "evaluate_served_model"}


def test_every_rule_has_a_conda_env_and_the_pipeline_image():
    rules = {}
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        for block in re.split(r"^(?=rule \w+:)", smk.read_text(), flags=re.M)[1:]:
            rules[re.match(r"rule (\w+):", block)[1]] = block
    assert len(rules) > 10, sorted(rules)
    for name, block in rules.items():
        env = re.search(r"^    conda:\n        \"\.\./(envs/\w+\.yaml)\"$", block, re.M)
        assert env and (ROOT / env[1]).exists(), f"rule {name} has no conda env in envs/"
        has_image = re.search(r"^    container:\n        PIPELINE_IMAGE$", block, re.M) is not None
        wanted = name not in HOST_RULES
        problem = "missing" if wanted else "unwanted: it runs on the host"
        assert has_image == wanted, f"rule {name}: container: PIPELINE_IMAGE {problem}"
