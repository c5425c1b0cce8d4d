"""Project hygiene that CI enforces: snakefmt, ruff, one lock (constraints.txt) that the venv, both
images and the conda envs follow, and a Snakefile that parses without the pipeline's heavy imports."""

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from lockfile import (
    CONDA_NAMES,
    LOCK,
    canonical,
    lock_problems,
    pin_env_text,
    project_requirements,
    read_lock,
)

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


def _project_requirements() -> list[str]:
    """What `make install` asks for: pyproject's dependencies and its test extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["dependencies"] + project["optional-dependencies"]["test"]


def _closure(requirements: list[str]) -> dict[str, str]:
    """name -> installed version of these requirements and everything they need, transitively, read
    from the installed packages' metadata (markers evaluated here, extras followed)."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement

    found: dict[str, str] = {}
    extras_seen: dict[str, set[str]] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        name, extras = canonical(requirement.name), set(requirement.extras)
        if name in extras_seen and extras <= extras_seen[name]:
            continue
        extras_seen.setdefault(name, set()).update(extras)
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            raise AssertionError(f"{requirement} is needed but not installed: run `make install`") from None
        found[name] = dist.version
        for spec in dist.requires or []:
            dep = Requirement(spec)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in extras | {""}):
                todo.append(dep)
    return found


def _installed() -> dict[str, str]:
    from importlib.metadata import distributions

    installed: dict[str, str] = {}
    for dist in distributions():  # the first of a name on sys.path is the one imported
        installed.setdefault(canonical(dist.metadata["Name"]), dist.version)
    return installed


def test_the_lock_holds_exactly_what_pyproject_needs_inside_its_ranges():
    from packaging.requirements import Requirement

    lock = read_lock()
    for requirement in map(Requirement, _project_requirements()):
        name = canonical(requirement.name)
        assert name in lock, f"{requirement} is not in {LOCK.name}: run `make lock`"
        assert requirement.specifier.contains(lock[name], prereleases=True), (
            f"{LOCK.name} has {name}=={lock[name]}, outside pyproject's {requirement}: run `make lock`"
        )
    # direct and transitive, and nothing else (the venv must hold the lock: next test)
    needed = set(_closure(_project_requirements()))
    assert not needed - set(lock), (
        f"needed but not in {LOCK.name}: {sorted(needed - set(lock))}; run `make lock`"
    )
    assert not set(lock) - needed, f"in {LOCK.name} but needed by nothing: {sorted(set(lock) - needed)}"
    assert lock["torch"] == "2.14.1" and lock["torchvision"] == "0.29.1"  # pyproject's exact pins


def test_the_lock_is_what_make_lock_wrote_for_pyproject_as_it_is():
    """The lock's stamp (tests/lockfile.py) names the requirements it was resolved from and its pins:
    a lock that pyproject.toml has moved on from, or whose pins were edited by hand, fails, which
    the closure test above misses when the edit is consistent (a new requirement added by hand with
    the version the venv happens to hold). Offline: whether a fresh resolve today would choose
    the same versions depends on PyPI's state and is not tested (`make lock` shows it)."""
    requirements = _project_requirements()
    assert project_requirements() == requirements  # lockfile.py resolves what make install asks for
    text = LOCK.read_text()
    assert not lock_problems(text, requirements), lock_problems(text, requirements)

    def caught(edited: str, why: str, added: tuple[str, ...] = ()) -> bool:
        return any(why in problem for problem in lock_problems(edited, requirements + list(added)))

    pin = next(line for line in text.splitlines() if line.startswith("numpy=="))
    # the faiss-cpu case: a requirement added to pyproject.toml and its pin added to the lock by hand
    by_hand = text.replace(f"{pin}\n", f"{pin}\nfaiss-gpu==1.7.2\n")
    assert caught(by_hand, "pyproject.toml's dependencies", ("faiss-gpu>=1",))
    assert caught(by_hand, "edited after", ("faiss-gpu>=1",))
    assert caught(text.replace(pin, f"{pin}.post1"), "edited after")  # a version changed
    assert caught(text.replace(f"{pin}\n", ""), "edited after")  # a pin removed
    assert caught(text.replace("# Resolved from", "# Written from"), "not written by `make lock`")


def test_the_venv_is_exactly_the_lock():
    lock = read_lock()
    installed = {name: v for name, v in _installed().items() if name not in ("cifarflow", "pip")}
    drift = [
        f"{name}: lock {lock.get(name, '-')}, venv {installed.get(name, '-')}"
        for name in sorted(set(lock) | set(installed))
        if lock.get(name) != installed.get(name)
    ]
    assert not drift, (
        f"the venv ({sys.prefix}) differs from {LOCK.name}: {drift}. `make install` installs the lock "
        "(remove a package the lock lacks with pip uninstall; a new dependency: `make lock`)"
    )


# Deliberately not in the pipeline image (containers/pipeline/requirements.txt says why).
NOT_IN_PIPELINE_IMAGE = {"snakemake", "snakemake-executor-plugin-slurm", "kserve", "tritonclient"}


def _requirement_names(path: Path) -> list[str]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


@pytest.mark.parametrize("image", ["pipeline", "serving"])
def test_the_images_install_pyprojects_packages_at_the_locks_versions(image, tmp_path):
    names = _requirement_names(ROOT / "containers" / image / "requirements.txt")
    # names only: the versions, direct and transitive, come from the lock (pip install -c)
    assert all(re.fullmatch(r"[a-z0-9-]+", name) for name in names), names
    pins = _pins()
    if image == "pipeline":
        expected = set(pins) - NOT_IN_PIPELINE_IMAGE
        assert set(names) == expected, f"requirements.txt lists {sorted(names)}, pyproject {sorted(expected)}"
    else:
        assert set(names) <= set(pins), f"{sorted(set(names) - set(pins))} are not pyproject dependencies"
    lock = read_lock()
    outside = {name: v for name, v in _closure(names).items() if lock.get(name) != v}
    assert not outside, f"the {image} image would install {outside} beyond or off the lock"
    # the recipes install with the lock
    recipes = {
        "pipeline": {
            "Dockerfile": "/opt/cifarflow/requirements.txt /opt/cifarflow/constraints.txt",
            "pipeline.def": "/opt/cifarflow/requirements.txt \\\n        /opt/cifarflow/constraints.txt",
            "install-deps.sh": '-r "$requirements" -c "$constraints"',
        },
        "serving": {
            "Dockerfile": "-r /app/requirements.txt -c /app/constraints.txt",
            "serving.def": "-r /app/requirements.txt -c /app/constraints.txt",
        },
    }[image]
    for recipe, install in recipes.items():
        assert install in (ROOT / "containers" / image / recipe).read_text(), f"{image}/{recipe}: {install}"
    if image == "serving":  # the build context carries the lock, and a new lock rebuilds the image
        from cifarflow.engines import assemble_context
        from cifarflow.layout import serving_sources

        (tmp_path / "model.onnx").write_bytes(b"a model")
        (tmp_path / "context").mkdir()
        context = assemble_context(tmp_path / "model.onnx", tmp_path / "context")
        assert (context / "constraints.txt").read_bytes() == LOCK.read_bytes()
        assert LOCK in serving_sources()


def test_conda_envs_pin_the_locks_versions_of_pyprojects_packages():
    pins, lock = _pins(), read_lock()
    envs = sorted((ROOT / "envs").glob("*.yaml"))
    assert envs, "envs/ holds no conda environments"
    for env in envs:
        deps = yaml.safe_load(env.read_text())["dependencies"]
        # a `pip:` subsection holds what conda-forge lacks, written as pip writes it
        pip = [(d, "==") for entry in deps if isinstance(entry, dict) for d in entry.get("pip", [])]
        conda = [(d, "=") for d in deps if isinstance(d, str) and not d.startswith("python=") and d != "pip"]
        assert conda, f"{env.name} lists no packages"
        for dep, exact in conda + pip:
            name, spec = re.match(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?(.*)", dep).groups()
            name = canonical(CONDA_NAMES.get(name, name))
            assert name in pins, f"{env.name}: {name} is not a dependency in pyproject.toml"
            assert spec == f"{exact}{lock[name]}", f"{env.name}: {dep}, the lock has {name}=={lock[name]}"
        # and `make lock` would leave it as it is
        assert pin_env_text(env.read_text(), lock) == env.read_text()


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


def test_parsing_the_snakefile_imports_none_of_the_pipelines_heavy_dependencies():
    """What the Snakefile and the rules import from cifarflow while they parse (the file lists come from
    cifarflow.layout, the standard library only) pulls in none of psutil, tqdm, numpy or torch."""
    sources = [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]
    imported = r"^\s*(?:from (cifarflow[\w.]*) import|import (cifarflow[\w.]*))"
    modules = sorted({a or b for path in sources for a, b in re.findall(imported, path.read_text(), re.M)})
    assert {"cifarflow.config", "cifarflow.layout"} <= set(modules), modules
    probe = (
        "import importlib, json, sys\n"
        "for name in sys.argv[1:]:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(n for n in ('psutil', 'tqdm', 'numpy', 'torch') if n in sys.modules)))"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe, *modules],
        env={**os.environ, "PYTHONPATH": str(ROOT / "scripts")},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == [], f"importing {modules} imports {run.stdout.strip()}"
