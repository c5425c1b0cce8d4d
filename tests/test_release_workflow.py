"""The forge's workflows (.github/workflows): `test.yml` runs `make test` on every push, `release.yml`
publishes the images on a version tag. No forge runs them here, so this checks what can be checked
without one: both are valid GitHub Actions workflows (check-jsonschema's copy of the format's schema,
and its rule that every job has a timeout); they start on what they should; the images the release
pushes are exactly those that config/config.yaml and docs/hpc-and-containers.md name, at
pyproject.toml's version (the one every image tag in the README and docs/ carries); the release's own
shell steps, run here with bash, accept only the tag of that version and package an Apptainer recipe
with every file it builds from; and the serving base it publishes (the serving image's dependency
stage) builds a serving image with no network, with Podman.
"""

from __future__ import annotations

import fnmatch
import itertools
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import onnx
import pytest
import yaml
from conftest import ROOT

WORKFLOWS = ROOT / ".github" / "workflows"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def workflow(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def triggers(flow: dict) -> dict:
    # YAML 1.1 (PyYAML) reads the key `on` as the boolean True
    return flow["on"] if "on" in flow else flow[True]


def resolve(text: str, contexts: dict[str, str]) -> str:
    """`${{ expression }}` replaced by its value; an expression not in `contexts` fails the test."""

    def value(match: re.Match) -> str:
        assert match[1] in contexts, f"unexpected expression ${{{{ {match[1]} }}}} in {text!r}"
        return contexts[match[1]]

    return EXPRESSION.sub(value, text)


def matrix_combinations(job: dict) -> list[dict[str, str]]:
    matrix = job.get("strategy", {}).get("matrix", {})
    keys = sorted(matrix)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(matrix[k] for k in keys))]


def job_env(job: dict, combination: dict[str, str]) -> dict[str, str]:
    """A job's `env` as the runner sets it for one matrix combination: the version job's output is
    pyproject.toml's version (test_the_version_step_accepts_only_the_tag_of_pyprojects_version)."""
    contexts = {"needs.version.outputs.version": VERSION}
    contexts |= {f"matrix.{key}": value for key, value in combination.items()}
    return {key: resolve(str(value), contexts) for key, value in job.get("env", {}).items()}


def step(job: dict, name: str) -> dict:
    (found,) = [s for s in job["steps"] if s.get("name") == name]
    return found


def expand(command: str, env: dict[str, str]) -> list[str]:
    """A step's command line, its $VARIABLES from `env` expanded (the runner's own ones kept)."""
    words = shlex.split(command.replace("\\\n", " "))
    return [re.sub(r"\$(\w+)", lambda m: env.get(m[1], m[0]), word) for word in words]


def pushed_images() -> dict[str, set[str]]:
    """Job -> every image reference its `docker push` steps push, over its matrix."""
    pushed: dict[str, set[str]] = {}
    for name, job in workflow("release.yml")["jobs"].items():
        for combination in matrix_combinations(job):
            env = job_env(job, combination)
            for s in job.get("steps", []):
                for line in s.get("run", "").splitlines():
                    if line.strip().startswith("docker push"):
                        (image,) = expand(line, env)[2:]
                        pushed.setdefault(name, set()).add(image)
    return pushed


def check_jsonschema(*args: str) -> subprocess.CompletedProcess:
    binary = Path(sys.executable).parent / "check-jsonschema"
    if not binary.exists():
        pytest.fail("check-jsonschema is missing: it is a test dependency (pip install -e '.[test]')")
    return subprocess.run([binary, *args], capture_output=True, text=True)


def test_workflows_are_valid_github_actions_workflows(tmp_path):
    files = sorted(str(path) for path in WORKFLOWS.glob("*.yml"))
    assert [Path(f).name for f in files] == ["release.yml", "test.yml"]
    for schema in ("vendor.github-workflows", "custom.github-workflows-require-timeout"):
        check = check_jsonschema("--builtin-schema", schema, *files)
        assert check.returncode == 0, f"{schema}:\n{check.stdout}\n{check.stderr}"
    # the validator does reject a malformed workflow: a job whose steps are misspelt
    broken = tmp_path / "broken.yml"
    broken.write_text((WORKFLOWS / "release.yml").read_text().replace("    steps:\n", "    step:\n", 1))
    check = check_jsonschema("--builtin-schema", "vendor.github-workflows", str(broken))
    assert check.returncode != 0 and "broken.yml" in check.stdout, check.stdout


def test_every_push_runs_make_test():
    flow = workflow("test.yml")
    on = triggers(flow)
    assert on["push"] == {"branches": ["**"]}, on  # every branch, no path filter
    assert "workflow_call" in on  # the release runs it before publishing (below)
    (job,) = flow["jobs"].values()
    (run,) = [s["run"] for s in job["steps"] if ".ci/run" in s.get("run", "")]
    assert "debian:bookworm" in run and "--privileged" in run, run  # the system the tests are written for
    ci_run = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert ci_run[-1] == "make test", ci_run[-1]
    makefile = (ROOT / "Makefile").read_text()
    assert makefile.count("\ntest:") == 1
    recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]  # the target's lines
    assert "install" in recipe and "setup_system.py" in recipe and "pytest" in recipe, recipe

    # a version tag does not start test.yml (branches only) but release.yml, which runs it first
    release = workflow("release.yml")["jobs"]
    (tests,) = [name for name, j in release.items() if j.get("uses") == "./.github/workflows/test.yml"]
    for name in ("pipeline-image", "serving-base"):
        assert tests in release[name]["needs"], (name, release[name]["needs"])
    assert set(release["release"]["needs"]) >= {"pipeline-image", "serving-base"}


def test_a_version_tag_and_nothing_else_starts_the_release():
    on = triggers(workflow("release.yml"))
    assert on == {"push": {"tags": ["v*"]}}, on
    (pattern,) = on["push"]["tags"]
    assert fnmatch.fnmatch(f"v{VERSION}", pattern) and not fnmatch.fnmatch(VERSION, pattern)


def test_the_release_pushes_the_images_that_config_and_docs_name():
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    schema = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())
    default = config["container"]["image"]
    assert schema["properties"]["container"]["properties"]["image"]["default"] == default
    assert default.startswith("docker://") and default.endswith(f":{VERSION}-cuda"), default
    pipeline = default.removeprefix("docker://").removesuffix("-cuda")  # ghcr.io/<org>/<name>:<version>
    registry = pipeline.rsplit("/", 1)[0]

    pushed = pushed_images()
    assert pushed == {
        "pipeline-image": {f"{pipeline}-cuda", f"{pipeline}-cpu"},
        "serving-base": {f"{registry}/cifarflow-serving-base:{VERSION}"},
    }
    releases = (ROOT / "docs" / "hpc-and-containers.md").read_text()
    for image in set().union(*pushed.values()):
        assert image in releases, f"docs/hpc-and-containers.md lacks {image}, which the release pushes"
    # and no page names an image of another version (the release's how-to lists the places to bump)
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        tags = re.findall(r"cifarflow-(?:pipeline|serving-base):([0-9][\w.-]*)", page.read_text())
        stale = sorted({tag for tag in tags if tag.removesuffix("-cuda").removesuffix("-cpu") != VERSION})
        assert not stale, f"{page.relative_to(ROOT)} names images of version(s) {stale}, not {VERSION}"

    # each pushing job builds what it pushes: the pipeline image as `make pipeline-image` does, per variant
    jobs = workflow("release.yml")["jobs"]
    variants = re.search(
        r'"--variant", choices=\[(.*?)\]', (ROOT / "containers/pipeline/build.py").read_text()
    )
    assert {c["variant"] for c in matrix_combinations(jobs["pipeline-image"])} == set(
        re.findall(r'"(\w+)"', variants[1])
    )
    for combination in matrix_combinations(jobs["pipeline-image"]):
        env = job_env(jobs["pipeline-image"], combination)
        build = expand(step(jobs["pipeline-image"], "Build")["run"], env)
        assert build[:2] == ["python3", "containers/pipeline/build.py"], build
        for option, value in (("--engine", "docker"), ("--variant", combination["variant"])):
            assert build[build.index(option) + 1] == value, build
        assert build[build.index("--tag") + 1] == env["IMAGE"] in pushed["pipeline-image"], build
    # the serving base: the Dockerfile's dependency stage (test_the_serving_base_... builds it)
    env = job_env(jobs["serving-base"], {})
    build = expand(step(jobs["serving-base"], "Build the dependency stage of the serving image")["run"], env)
    assert build[:4] == ["docker", "build", "--target", "dependencies"] and build[-1] == "build/serving-base"
    assert build[build.index("--tag") + 1] == env["IMAGE"] in pushed["serving-base"], build
    dockerfile = (ROOT / "containers" / "serving" / "Dockerfile").read_text()
    assert re.search(r"^FROM \$\{BASE_IMAGE\} AS dependencies$", dockerfile, re.M), dockerfile[:600]


def run_step(job: str, name: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """A release step's script, run as the runner runs it (bash -e), with the job's env and `env`."""
    flow = workflow("release.yml")["jobs"][job]
    script = step(flow, name)["run"]
    environment = {**os.environ, **job_env(flow, {}), **env}
    return subprocess.run(
        ["bash", "-e", "-c", script], cwd=cwd, env=environment, capture_output=True, text=True
    )


def test_the_version_step_accepts_only_the_tag_of_pyprojects_version(tmp_path):
    output = tmp_path / "github_output"
    ok = run_step(
        "version", "Read the version", ROOT, GITHUB_REF_NAME=f"v{VERSION}", GITHUB_OUTPUT=str(output)
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert output.read_text() == f"version={VERSION}\n"
    wrong = run_step(
        "version", "Read the version", ROOT, GITHUB_REF_NAME="v999.0.0", GITHUB_OUTPUT=str(output)
    )
    assert wrong.returncode == 1
    assert f"tag v999.0.0 is not v{VERSION}, the version in pyproject.toml" in wrong.stdout, wrong.stdout
    assert output.read_text() == f"version={VERSION}\n"  # nothing more written


def test_the_release_attaches_an_apptainer_recipe_with_every_file_it_builds_from(tmp_path):
    shutil.copytree(ROOT / "containers" / "pipeline", tmp_path / "containers" / "pipeline")
    shutil.copy2(ROOT / "constraints.txt", tmp_path / "constraints.txt")
    package = run_step("release", "Package the Apptainer recipe", tmp_path)
    assert package.returncode == 0, package.stdout + package.stderr
    definition = (ROOT / "containers" / "pipeline" / "pipeline.def").read_text()
    assert (tmp_path / "dist" / f"cifarflow-pipeline-{VERSION}.def").read_text() == definition
    with tarfile.open(tmp_path / "dist" / f"cifarflow-pipeline-{VERSION}-apptainer.tar.gz") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    # %files: "<source> <destination>" lines, sources relative to where `apptainer build` runs
    files = re.search(r"^%files\n(.*?)(?=^%)", definition, re.M | re.S)[1]
    sources = [line.split()[0] for line in files.splitlines() if line.strip()]
    assert sources and "containers/pipeline/pipeline.def" in members
    for source in sources:
        assert members[source] == (ROOT / source).read_bytes(), source
    notes = (tmp_path / "notes.md").read_text()
    for image in set().union(*pushed_images().values()):
        assert image in notes, image
    # what the release step attaches is what this step made
    job = workflow("release.yml")["jobs"]["release"]
    attached = [
        w for w in expand(step(job, "Create the release")["run"], job_env(job, {})) if w.startswith("dist/")
    ]
    assert sorted(attached) == sorted(f"dist/{p.name}" for p in (tmp_path / "dist").iterdir())


@pytest.fixture
def tiny_model(tmp_path) -> Path:
    """An ONNX file for the build context (the build only copies it)."""
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    tensor = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        [node], "g", [tensor("x", onnx.TensorProto.FLOAT, [1])], [tensor("y", onnx.TensorProto.FLOAT, [1])]
    )
    path = tmp_path / "model.onnx"
    onnx.save(onnx.helper.make_model(graph), path)
    return path


def test_the_serving_base_builds_serving_images_without_a_network(podman, tiny_model, tmp_path):
    from cifarflow import engines

    base = f"localhost/cifarflow-serving-base-test:{VERSION}"
    served = "localhost/cifarflow-serving-from-base-test:latest"
    try:
        # what the release's serving-base job builds, here from the local Debian base; --format docker
        # as build_serving_image: its builds then share this layer cache (and the other way round)
        checkout = tmp_path / "checkout"  # the job's context, assembled by its own step
        shutil.copytree(ROOT / "containers" / "serving", checkout / "containers" / "serving")
        shutil.copy2(ROOT / "constraints.txt", checkout / "constraints.txt")
        assembled = run_step("serving-base", "Assemble the build context", checkout)
        assert assembled.returncode == 0, assembled.stdout + assembled.stderr
        build = [
            "podman", "build", "--format", "docker", "--target", "dependencies", "--tag", base,
            "--build-arg", f"BASE_IMAGE={podman['base_image']}", *podman["build_options"],
            str(checkout / "build" / "serving-base"),
        ]  # fmt: skip
        done = subprocess.run(build, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        # no model and no code in the base; its venv has the server's dependencies
        check = "import kserve, onnxruntime, os; print(sorted(os.listdir('/app')))"
        inside = subprocess.run(
            ["podman", "run", "--rm", "--network", "none", base, "/opt/venv/bin/python", "-c", check],
            capture_output=True,
            text=True,
        )
        assert inside.returncode == 0, inside
        assert inside.stdout.strip() == "['constraints.txt', 'requirements.txt']", inside

        # a serving image from it, as build_serving_image builds one, with no network at all (and no
        # cache: its pip step runs, and finds everything installed)
        offline = ["--network", "none", "--no-cache"]
        args = {"BASE_IMAGE": base}
        built = engines.build(
            engine="podman",
            model=tiny_model,
            reference=served,
            build_args=args,
            labels={},
            extra=offline,
            sif=tmp_path / "x.sif",
        )
        labels = subprocess.run(
            ["podman", "image", "inspect", served, "--format", "{{json .Config.Labels}}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert built.image == served and '"org.opencontainers.image.title":"cifarflow-serving"' in labels, (
            labels
        )
    finally:
        # the served image goes; the base only loses its name: its layers stay as build cache, the
        # dependency layer of every serving image built from the same base (tests/test_serving.py)
        subprocess.run(["podman", "rmi", served], capture_output=True)
        subprocess.run(["podman", "untag", base], capture_output=True)
