"""Every rule in the pipeline image: containers/pipeline built with Podman from the local debootstrap
base, then the offline demo (with int8 quantisation, so that every rule with a container runs) end to
end with `snakemake --use-singularity`, Apptainer played by tests/apptainer_via_podman (Apptainer
cannot be installed on Debian 12; Podman runs the image instead, the working directory bound at the
same path, as Apptainer binds it).

Proof that each containerised job ran inside the image: its log says so (CIFARFLOW_IMAGE, set only
by the image, and Python at /opt/venv, which the host lacks), the stand-in recorded one `podman run`
of the image per job, and MLflow tagged the job with the image. The two rules that drive a container
engine ran on the host. The results equal those of a run without containers: same dataset
checksums, bit-identical training (same seed, same CPU, same torch), the same ONNX weights.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import yaml
from conftest import ROOT, Run, _stop_group, copy_workflow, image_build
from mlflow import MlflowClient
from onnx import numpy_helper
from test_mlflow_hook import runs_of, sqlite_uri
from test_training import without_timings

pytestmark = pytest.mark.workflow
BIN = Path(sys.executable).parent
STAND_IN = ROOT / "tests" / "apptainer_via_podman"
BUILD = ROOT / "containers" / "pipeline" / "build.py"
DEMO = ("--configfile", "config/demo.yaml", "local.yaml")
# They drive Podman/Docker/Apptainer themselves (rules/serve.smk): on the host, never in the image.
HOST_RULES = {"build_serving_image", "evaluate_served_model"}
# The demo DAG end to end with export.quantize int8: every rule but download_cifar10 (cifar10 source
# only; it needs the internet or a hand-placed archive, so this offline test cannot run it).
DEMO_RULES = {
    "prepare_dataset",
    "audit_dataset",
    "train_model",
    "export_onnx",
    "quantize_onnx",
    "build_serving_image",
    "evaluate_served_model",
    "register_model",
    "evaluate_robustness",
    "plot_dataset",
    "plot_training",
    "tabulate_export",
    "tabulate_manifest",
    "plot_evaluation",
    "plot_robustness",
    "tabulate_versions",
    "compare_experiments",
}


def pipeline_ref() -> str:
    """The image the build below tags (build.py's default: no --tag), known before it is built."""
    spec = importlib.util.spec_from_file_location("pipeline_build", BUILD)
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return f"localhost/{build.default_tag(os.environ.get('TORCH_VARIANT', 'cuda'))}"


def settings(podman: dict) -> dict:
    return {
        "container": {"image": f"docker://{pipeline_ref()}"},
        "serving": podman,  # the serving image's base and build options, for build_serving_image
        "export": {"quantize": "int8"},
        # What no test here looks at, made small: the demo's 100 latency requests, 300 robustness
        # images and 100 test images a class. Every job still runs in the image, training on the
        # demo's data, and the min_accuracy gate still applies.
        "dataset": {"synthetic": {"test_per_class": 50}},
        "evaluate": {"latency_requests": 10},
        "robustness": {"images": 50},
    }


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("containers")


@pytest.fixture(scope="module")
def plain_started(base, podman):
    """The same config without --use-singularity, to export: container.image is set, and not used.
    It needs no image, so it starts before the pipeline image is ready and runs beside the rest of
    its build (conftest.py starts it when the session begins) and beside the run in the image."""
    plain = copy_workflow(base / "plain")
    (plain / "local.yaml").write_text(yaml.safe_dump(settings(podman)))
    # The trace would show it if anything ran through the stand-in.
    tracing = {"APPTAINER_VIA_PODMAN_TRACE": str(base / "podman-runs.jsonl")}
    run = Run(plain, "plain", ("--until", "export_onnx", *DEMO), dict(os.environ, **tracing, PATH=path(BIN)))
    yield plain, run
    if run.proc.poll() is None:  # a test stopped before `runs` waited for it
        _stop_group(run.proc)


@pytest.fixture(scope="module")
def pipeline_image(podman, plain_started) -> dict:
    """The CUDA variant (the one buildable here: the CPU wheels' index is not reachable), on the
    local base; the host's local wheel directories are mounted into the build (build.py)."""
    build = image_build("pipeline_image")
    image = json.loads(build.stdout.strip().splitlines()[-1])
    print(f"pipeline image: {image}")
    assert f"localhost/{image['image']}" == pipeline_ref()  # what the runs' config names
    return {**image, "ref": f"localhost/{image['image']}"}


def path(*first: Path) -> str:
    return os.pathsep.join([*map(str, first), os.environ["PATH"]])


@pytest.fixture(scope="module")
def runs(base, podman, pipeline_image, plain_started):
    stand_in = base / "bin"
    stand_in.mkdir()
    (stand_in / "apptainer").symlink_to(STAND_IN)
    trace = base / "podman-runs.jsonl"
    boxed = copy_workflow(base / "boxed")
    (boxed / "local.yaml").write_text(yaml.safe_dump(settings(podman)))
    in_image = Run(
        boxed,
        "in-image",
        # --nv as on a GPU node (docs/hpc-and-containers.md); the stand-in ignores it
        ("--use-singularity", "--apptainer-args=--nv", *DEMO),
        dict(os.environ, APPTAINER_VIA_PODMAN_TRACE=str(trace), PATH=path(stand_in, BIN)),
    ).succeeded(1500)
    plain, plain_run = plain_started
    plain_run.succeeded(1500)
    return {"boxed": boxed, "plain": plain, "output": in_image.output, "run": in_image, "trace": trace}


def job_logs(workdir: Path, rule: str) -> list[Path]:
    logs = sorted(p for p in (workdir / "logs" / rule).glob("*.log") if not p.name.endswith(".server.log"))
    assert logs, f"no log of {rule}"
    return logs


def test_the_image_holds_the_rules_dependencies_but_not_snakemake_or_this_project(pipeline_image):
    probe = (
        "import importlib.util as u, os, torch, onnxruntime, mlflow;"
        "print(json.dumps({'snakemake': u.find_spec('snakemake') is not None,"
        " 'cifarflow': u.find_spec('cifarflow') is not None, 'torch': torch.__version__,"
        " 'cuda': torch.version.cuda, 'image': os.environ['CIFARFLOW_IMAGE']}))"
    )
    out = subprocess.run(
        ["podman", "run", "--rm", pipeline_image["ref"], "python", "-c", "import json;" + probe],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    import torch

    assert found == {
        "snakemake": False,
        "cifarflow": False,
        "torch": torch.__version__,  # the host's torch: same build, same results
        "cuda": torch.version.cuda,
        "image": pipeline_image["image"],
    }
    inspect = subprocess.run(
        ["podman", "image", "inspect", pipeline_image["ref"]], capture_output=True, text=True
    )
    labels = json.loads(inspect.stdout)[0]["Config"]["Labels"]
    version = pipeline_image["image"].split(":")[1]
    assert labels["org.opencontainers.image.title"] == "cifarflow-pipeline"
    assert labels["org.opencontainers.image.version"] == version and version.endswith("-cuda")
    assert labels["io.cifarflow.torch.variant"] == "cuda"
    assert "org.opencontainers.image.revision" in labels
    print(f"image size: {pipeline_image['size_bytes'] / 2**30:.2f} GiB")


def test_the_demo_ran_end_to_end_every_containerised_job_inside_the_image(runs, pipeline_image):
    boxed = runs["boxed"]
    jobs = runs["run"].jobs()
    assert set(jobs) - {"all"} == DEMO_RULES, jobs
    in_image = sum(n for rule, n in jobs.items() if rule in DEMO_RULES - HOST_RULES)
    where = f"running in image {pipeline_image['image']}: Python "
    for rule in DEMO_RULES:
        for log in job_logs(boxed, rule):
            first = log.read_text().splitlines()[0]
            if rule in HOST_RULES:
                assert "no container image" in first and first.endswith(f" at {sys.prefix}"), (log, first)
            else:
                assert where in first and first.endswith(" at /opt/venv"), (log, first)
    # The stand-in ran each of them with `podman run` of exactly this image, in this directory.
    records = [json.loads(line) for line in runs["trace"].read_text().splitlines()]
    assert len(records) == in_image and runs["output"].count("Activating singularity image") == in_image
    assert {(r["image"], r["id"], r["cwd"], r["nv"]) for r in records} == {
        (pipeline_image["ref"], pipeline_image["id"], str(boxed), True)  # --nv: --apptainer-args reached it
    }
    # The MLflow hook tagged every containerised job with the image, and only those.
    image = f"docker://{pipeline_image['ref']}"
    for run in runs_of(sqlite_uri(boxed), "cifar10").children:
        rule = run.info.run_name.split("/")[0]
        assert run.data.tags.get("container.image") == (None if rule in HOST_RULES else image), rule


def test_every_job_recorded_the_software_it_really_ran_with(runs, pipeline_image):
    """The versions each job recorded (its MLflow run's version.* tags, the report's table, the model
    card) are those of where it ran: the image's Python and pins for jobs in the image, the host's for
    the two host rules."""
    import importlib.metadata
    import platform

    from cifarflow.versions import from_log
    from lockfile import read_lock
    from test_tables import Cells

    boxed = runs["boxed"]
    probe = "import json, platform; print(json.dumps(platform.python_version()))"
    image_python = json.loads(
        subprocess.run(
            ["podman", "run", "--rm", pipeline_image["ref"], "python", "-c", probe],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    pins = read_lock()  # what the image installs (containers/pipeline: `-c constraints.txt`)
    for run in runs_of(sqlite_uri(boxed), "cifar10").children:
        rule, tags = run.info.run_name.split("/")[0], run.data.tags
        versions = {k.removeprefix("version."): v for k, v in tags.items() if k.startswith("version.")}
        (log,) = job_logs(boxed, rule)  # one job of each rule: one experiment
        assert versions == from_log(log.read_text()), rule  # the tags are the log's record
        if rule in HOST_RULES:
            assert versions["image"] == "none (the host's environment)" and "image_file" not in versions
            assert versions["python"] == platform.python_version() and versions["kserve"] != "not installed"
        else:
            assert versions["image"] == pipeline_image["image"], rule
            assert versions["python"] == image_python, rule
            assert versions["image_file"].startswith(str(boxed / ".snakemake" / "singularity")), rule
            assert versions["image_digest"] == "unknown inside the job", rule
            for package in ("torch", "torchvision", "onnx", "onnxruntime", "mlflow", "numpy"):
                assert versions[package] == pins[package], (rule, package)
            assert versions["snakemake"] == versions["kserve"] == "not installed", rule  # not in the image
        assert versions["torch"] == importlib.metadata.version("torch")  # image and host: the same build
    # the report's table: the image's column and the host's, each job under the one it ran in
    rows = Cells((boxed / "results/report/versions/software_versions.html").read_text()).rows
    assert rows[0] == ["software", pipeline_image["image"], "host"]
    table = {row[0]: row[1:] for row in rows[1:] if len(row) == 3}
    assert table["python"] == [image_python, platform.python_version()]
    assert table["kserve"] == ["not installed", importlib.metadata.version("kserve")]
    placed = {row[0]: row[1] for row in rows if len(row) == 2}
    assert placed["train_model/default"] == pipeline_image["image"]
    assert placed["evaluate_served_model/default"] == "host"
    card = (boxed / "results/register/default/model_card.md").read_text()
    assert f"| python | {image_python} | {image_python} |" in card  # prepare_dataset, train_model


def test_register_model_registered_from_inside_the_image(runs, pipeline_image):
    boxed = runs["boxed"]
    registration = json.loads((boxed / "results/register/default/registration.json").read_text())
    version = MlflowClient(sqlite_uri(boxed)).get_model_version(registration["name"], registration["version"])
    manifest = json.loads((boxed / "results/image/default/manifest.json").read_text())
    assert version.tags["image"] == manifest["image"] and registration["champion"] is True


def test_without_use_singularity_the_configured_image_is_not_used(runs):
    plain = runs["plain"]
    for rule in ("prepare_dataset", "train_model", "export_onnx"):
        first = job_logs(plain, rule)[0].read_text().splitlines()[0]
        assert "no container image" in first and first.endswith(f" at {sys.prefix}"), first
    assert not any((plain / ".snakemake" / "singularity").iterdir())  # nothing pulled


def test_results_equal_a_run_without_containers(runs):
    boxed, plain = runs["boxed"], runs["plain"]
    (meta,) = (plain / "results" / "data").glob("*/meta.json")
    relative = meta.relative_to(plain)
    # meta.json holds the sha256 of every array
    assert json.loads((boxed / relative).read_text()) == json.loads(meta.read_text())

    def metrics(workdir: Path, stage: str) -> dict:
        return json.loads((workdir / "results" / stage / "default" / "metrics.json").read_text())

    # same seed, same CPU, same threads, same torch: training is bit-identical
    trained = without_timings(metrics(boxed, "train"))
    assert trained == without_timings(metrics(plain, "train")) and trained["test_accuracy"] > 0.9
    unequal = {"latency_ms_p50", "latency_ms_p99", "throughput_images_per_second"}
    exported = {k: v for k, v in metrics(boxed, "export").items() if k not in unequal}
    assert exported == {k: v for k, v in metrics(plain, "export").items() if k not in unequal}
    ops, weights = graph(boxed / "results/export/default/model.onnx")
    assert ops and weights and (ops, weights) == graph(plain / "results/export/default/model.onnx")


def graph(path: Path) -> tuple[list[str], dict[str, bytes]]:
    """An ONNX graph's operators in order and its weights, byte for byte."""
    model = onnx.load(path)
    weights = {i.name: numpy_helper.to_array(i).tobytes() for i in model.graph.initializer}
    return [node.op_type for node in model.graph.node], weights


def test_the_stand_in_never_pulls_and_refuses_what_it_does_not_do(tmp_path, podman):
    def stand_in(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(STAND_IN), *args], cwd=tmp_path, capture_output=True, text=True)

    assert stand_in("--version").stdout == "apptainer version 1.3.4\n"  # what Snakemake parses
    missing = stand_in("pull", "--name", "x.simg", "docker://localhost/cifarflow-no-such-image:0")
    assert missing.returncode != 0 and "never pulls" in missing.stderr and not (tmp_path / "x.simg").exists()
    unknown = stand_in("exec", "--containall", "docker://localhost/whatever:0", "true")
    assert unknown.returncode != 0 and "--containall is not supported" in unknown.stderr
