"""Shared fixtures: the library on sys.path, a copy of the workflow to run snakemake in, image trees,
the system parts the tests need (skip or fail when missing), and a timing summary by phase."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "tests")]
# Podman's settings for the tests (runc, host network, no default nofile ulimit), as `make` passes them
os.environ.setdefault("CONTAINERS_CONF", str(ROOT / "containers" / "containers.conf"))

from setup_system import why_missing  # noqa: E402  (tests/ is on sys.path from here on)

NOTHING_TO_BE_DONE = "Nothing to be done (all requested files are present and up to date)."


def require_system_part(part: str) -> None:
    """Skip the test when a Debian part it needs (tests/setup_system.py: chromium, podman, slurm) is
    missing, naming it and the install command; in CI (CI set) a missing part fails instead."""
    reason = why_missing(part)
    if reason:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(reason)


# What a checkout holds that snakemake runs read (constraints.txt: the serving image installs by it).
WORKFLOW_PARTS = ["Snakefile", "config", "rules", "scripts", "envs", "profiles", "report", "containers"]
WORKFLOW_PARTS += ["constraints.txt"]


def copy_workflow(target: Path) -> Path:
    """A fresh copy of the workflow, as a user would have it checked out, to run snakemake in."""
    target.mkdir(parents=True)
    for part in WORKFLOW_PARTS:
        src = ROOT / part
        if src.is_dir():
            shutil.copytree(src, target / part, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, target / part)
    return target


@pytest.fixture(autouse=True)
def _no_mlflow_uri_leaks():
    """mlflow.set_tracking_uri() / set_registry_uri() set process-wide defaults and export them to
    os.environ, which later tests and every later snakemake subprocess would inherit: each test
    starts without them and leaves no default behind. Nor may a test write MLflow's default store
    (./mlflow.db, ./mlruns) into the checkout, where a user's own runs would mix with it."""
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = {name: os.environ.pop(name, None) for name in names}
    stray = [ROOT / "mlflow.db", ROOT / "mlruns"]  # MLflow's default store, relative to the cwd
    before = [path.exists() and path.stat().st_mtime_ns for path in stray]
    yield
    after = [path.exists() and path.stat().st_mtime_ns for path in stray]
    written = [path.name for path, old, new in zip(stray, before, after, strict=True) if new and new != old]
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(None)
        sys.modules["mlflow"].set_registry_uri(None)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    assert not written, f"this test wrote MLflow's default store {written} into the checkout: give it a URI"


@pytest.fixture
def workflow(tmp_path: Path) -> Path:
    return copy_workflow(tmp_path / "wf")


def copy_run(source: Path, target: Path) -> Path:
    """A copy of a workdir after a run, to go on from without running its jobs again: outputs with
    their times and Snakemake's records (so nothing reruns), and its MLflow store with the artifact
    paths of its experiments and runs moved to the copy (MLflow stores them absolute), so that runs
    in the copy never write into `source`. For workdirs without registered models."""
    shutil.copytree(source, target, symlinks=True)
    with sqlite3.connect(target / "mlflow.db") as store:
        for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri")):
            moved = f"UPDATE {table} SET {column} = replace({column}, ?, ?)"
            store.execute(moved, (str(source), str(target)))
    store.close()
    return target


# The demo's training and export stages: --until first, so that config files given after it extend
# --configfile.
DEMO_TO_EXPORT = ("--until", "export_onnx", "quantize_onnx", "--configfile", "config/demo.yaml")


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """config/demo.yaml's data, training and export, run once per session: the modules that need the
    demo model trained go on from a copy_run of it (test_workflow_train, test_workflow_serve) or only
    read it (test_slurm); nobody changes it."""
    workdir = copy_workflow(tmp_path_factory.mktemp("demo-run") / "wf")
    start = time.perf_counter()
    run = snakemake(workdir, *DEMO_TO_EXPORT)
    print(f"demo DAG to export: {time.perf_counter() - start:.1f} s")
    assert jobs_run(run) == {"prepare_dataset": 1, "train_model": 1, "export_onnx": 1}
    return workdir


@pytest.fixture(scope="session")
def slurm_profile_cluster(tmp_path_factory):
    """One real Slurm cluster for the session, shaped like profiles/slurm (tests/slurm_cluster.py),
    started in the background as the session begins (pytest_collection_finish) or else now; a start
    that failed or skipped fails or skips here. Defined here, not imported into each test module: an
    imported fixture is a fixture of that module, and each module would start a cluster of its own."""
    started = _background_slurm.get("slurm_profile_cluster")
    stack, cluster = started.result() if started else _start_cluster(tmp_path_factory)
    with stack:
        yield cluster


@pytest.fixture(scope="session")
def sweep_on_slurm(slurm_profile_cluster, tmp_path_factory):
    """config/sweep-demo.yaml on the Slurm cluster, started (as the session begins, where it can) and
    not waited for: tests/test_slurm_sweep.py reads it, and tests/test_slurm.py's runs go beside it if
    it still runs. Most of a run on Slurm is the executor waiting between status checks (2 s, then 10 s
    longer after each check that finds no job finished): begun with the session, it runs in the
    minutes that the unit tests leave the CPUs idle."""
    started = _background_slurm.get("sweep_on_slurm")
    run = started.result() if started else _start_sweep(tmp_path_factory, slurm_profile_cluster)
    yield run
    if run.proc.poll() is None:  # a test stopped early: snakemake cancels its jobs on SIGINT
        run.proc.send_signal(signal.SIGINT)
        run.wait(120)


@pytest.fixture(scope="session")
def slurm_runs(slurm_profile_cluster, tmp_path_factory):
    """The demo on the Slurm cluster, a run that Slurm fails and its rerun (slurm_cluster.failed_and_rerun),
    for tests/test_slurm.py: done in the background since the session began, beside the sweep (mostly
    the executor waiting between status checks), or else now."""
    started = _background_slurm.get("slurm_runs")
    return started.result() if started else _failed_and_rerun(tmp_path_factory, slurm_profile_cluster)


def _start_cluster(tmp_path_factory) -> tuple[contextlib.ExitStack, object]:
    """A cluster shaped like profiles/slurm, entered on an ExitStack: closing it stops the cluster."""
    from slurm_cluster import profile_cluster

    stack = contextlib.ExitStack()
    return stack, stack.enter_context(profile_cluster(tmp_path_factory.mktemp("slurm")))


def _start_sweep(tmp_path_factory, cluster) -> Run:
    from slurm_cluster import start_sweep

    return start_sweep(cluster, copy_workflow(tmp_path_factory.mktemp("sweep-on-slurm") / "wf"))


def _failed_and_rerun(tmp_path_factory, cluster):
    from slurm_cluster import failed_and_rerun

    return failed_and_rerun(cluster, copy_workflow(tmp_path_factory.mktemp("on-slurm") / "wf"))


def jobs_run(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule -> number of jobs, from the 'Job stats' table snakemake prints (its rows must add up to its
    total); {} when that total is 0 or snakemake said "Nothing to be done". Neither a readable table
    nor that message: AssertionError, so that a changed output format cannot pass for "nothing ran"."""
    output = proc.stdout + proc.stderr
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Job stats:"):
            counts: dict[str, int] = {}
            for row in lines[i + 3 :]:
                parts = row.split()
                if len(parts) != 2 or not parts[1].isdigit():
                    break
                if parts[0] == "total":
                    if sum(counts.values()) == int(parts[1]):
                        return counts
                    break
                counts[parts[0]] = int(parts[1])
            raise AssertionError(
                f"snakemake's 'Job stats' table does not read as rule/count rows:\n{output[-4000:]}"
            )
    if NOTHING_TO_BE_DONE in output:
        return {}
    raise AssertionError(
        f"snakemake printed neither 'Job stats' nor {NOTHING_TO_BE_DONE!r}:\n{output[-4000:]}"
    )


def nothing_to_do(proc: subprocess.CompletedProcess) -> bool:
    """Snakemake said "Nothing to be done", or its job table totals 0 (as with --until when all is
    done); jobs_run fails on output that is neither."""
    return jobs_run(proc) == {}


def snakemake(
    workdir: Path, *args: str, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run the real snakemake CLI in `workdir` with the venv's tools first on PATH.

    It runs in a session of its own: on a timeout the whole group (snakemake and the jobs it started)
    gets SIGTERM, then SIGKILL, so that no job outlives the test.
    """
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    with subprocess.Popen(
        [str(Path(sys.executable).parent / "snakemake"), "--cores", "2", *args],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as popen:
        try:
            stdout, stderr = popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop_group(popen)
            raise
    proc = subprocess.CompletedProcess(popen.args, popen.returncode, stdout, stderr)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        )
    return proc


def _stop_group(popen: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM to the process group (snakemake cancels its jobs), SIGKILL to what is left after `grace`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(popen.pid, sig)
        except ProcessLookupError:
            return
        try:
            popen.communicate(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


# Processes started in their own process group (Run, image builds), stopped at the session's end
_background: list[subprocess.Popen] = []
_finishing = False


@dataclass
class Run:
    """One snakemake invocation in the background, its stdout and stderr in one file in the workdir.
    It has its own process group, so that a run stopped for its time stops its jobs too."""

    workdir: Path
    name: str
    args: tuple[str, ...]
    env: dict[str, str]
    proc: subprocess.Popen = field(init=False)
    started: float = field(init=False)
    seconds: float = 0.0
    returncode: int | None = None

    def __post_init__(self) -> None:
        assert not _finishing, f"the test session is ending: snakemake ({self.name}) not started"
        self.log = self.workdir / f"snakemake-{self.name}.out"
        # a file, not a pipe: nobody reads a run that goes on beside others, and a full pipe would stop it
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [Path(sys.executable).parent / "snakemake", "--cores", "2", *self.args],
                cwd=self.workdir,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _background.append(self.proc)
        self.started = time.monotonic()

    @property
    def output(self) -> str:
        return self.log.read_text()

    def wait(self, timeout: float = 300) -> Run:
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _stop_group(self.proc)
            message = f"snakemake ({self.name}) ran over {timeout} s:\n{self.output[-6000:]}"
            raise AssertionError(message) from None
        self.seconds = time.monotonic() - self.started
        return self

    def succeeded(self, timeout: float = 300) -> Run:
        """wait(), and the run must have succeeded."""
        self.wait(timeout)
        assert self.returncode == 0, f"snakemake ({self.name}) {self.args} failed:\n{self.output[-10000:]}"
        return self

    def jobs(self) -> dict[str, int]:
        return jobs_run(subprocess.CompletedProcess(self.args, self.returncode, self.output, ""))


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def make_image_tree(
    root: Path, fmt: str, classes=("cat", "dog", "frog"), per_class=(6, 3), size=32, seed=0
) -> dict:
    """train/<class>/*.fmt and test/<class>/*.fmt with class-dependent colours; returns pixels by path."""
    rng = np.random.default_rng(seed)
    pixels = {}
    for split, n in zip(("train", "test"), per_class, strict=True):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                array = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                array[..., c % 3] = 200 + c
                path = folder / f"{i:04d}.{fmt}"
                Image.fromarray(array).save(path, quality=95) if fmt == "jpg" else Image.fromarray(
                    array
                ).save(path)
                pixels[path] = np.asarray(Image.open(path).convert("RGB"))
    return pixels


LOCAL_BASE = "localhost/cifarflow-base:bookworm"
# The images the suite builds with Podman, by the fixture that needs them: the local base (podman),
# then on it the pipeline image (tests/test_workflow_containers.py). containers/pipeline/build.py prints
# the image's name and id as its last line.
IMAGE_BUILDS = {
    "podman": [str(ROOT / "containers" / "base" / "make-local-base.sh"), LOCAL_BASE],
    "pipeline_image": [
        sys.executable, str(ROOT / "containers" / "pipeline" / "build.py"), "--engine", "podman",
        "--base-image", LOCAL_BASE,
    ],
}  # fmt: skip
_background_builds: dict[str, Future] = {}
_background_slurm: dict[str, Future] = {}  # by the fixture that takes its result


def _build(command: list[str]) -> subprocess.CompletedProcess:
    pipe = subprocess.PIPE
    proc = subprocess.Popen(command, stdout=pipe, stderr=pipe, text=True, start_new_session=True)
    _background.append(proc)
    stdout, stderr = proc.communicate(timeout=1500)
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def image_build(fixture: str) -> subprocess.CompletedProcess:
    """IMAGE_BUILDS[fixture]'s result: the build started when the session began, else one run now.
    Once built, an image's build is a cache hit (seconds)."""
    future = _background_builds.get(fixture)
    build = future.result() if future else _build(IMAGE_BUILDS[fixture])
    failed = f"{' '.join(build.args)} failed:\n{build.stdout[-3000:]}\n{build.stderr[-6000:]}"
    assert build.returncode == 0, failed
    return build


def pytest_collection_finish(session) -> None:
    """Start what the collected tests need and what takes minutes, in the background, while the tests
    collected before the ones that need it run: the image builds (one after the other: a fresh pipeline
    image is mostly pip unpacking wheels and Podman writing layers), and the Slurm cluster with the
    sweep and the demo's runs on it. Nothing starts for --collect-only, and nothing without its system
    part (or, for Slurm, root): the fixtures then start it themselves and say why they cannot."""
    needed = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    if session.config.option.collectonly:
        return
    _start_image_builds(needed)
    if "slurm_profile_cluster" in needed and not why_missing("slurm") and os.geteuid() == 0:
        factory = session.config._tmp_path_factory  # what the tmp_path_factory fixture returns
        starter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slurm-start")
        cluster = _background_slurm["slurm_profile_cluster"] = starter.submit(_start_cluster, factory)
        # the sweep first: it is started, not waited for; then the demo's two runs beside it
        for fixture, start in (("sweep_on_slurm", _start_sweep), ("slurm_runs", _failed_and_rerun)):
            if fixture in needed:
                _background_slurm[fixture] = starter.submit(lambda s=start: s(factory, cluster.result()[1]))
        starter.shutdown(wait=False)


def _start_image_builds(needed: set[str]) -> None:
    wanted = [fixture for fixture in IMAGE_BUILDS if fixture in needed]
    if not wanted or why_missing("podman"):
        return
    if subprocess.run(["podman", "info"], capture_output=True).returncode != 0:
        return
    builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="image-build")
    for fixture in ("podman", *wanted):  # the base first: the pipeline image is built on it
        _background_builds.setdefault(fixture, builder.submit(_build, IMAGE_BUILDS[fixture]))
    builder.shutdown(wait=False)


def pytest_sessionfinish(session) -> None:
    """A session that ends early (a failure with -x, Ctrl-C) leaves no build, Run or cluster going on
    (a cluster whose fixture ran is stopped by it; closing its stack again does nothing)."""
    global _finishing
    _finishing = True  # no new Run starts from here on
    for future in [*_background_builds.values(), *_background_slurm.values()]:
        future.cancel()
    for _ in range(2):  # again once the background starts have ended (their Runs stopped, they end soon)
        for proc in _background:
            if proc.poll() is None:
                _stop_group(proc)
        for future in _background_slurm.values():
            if not future.cancelled():
                future.exception()
    cluster = _background_slurm.get("slurm_profile_cluster")
    if cluster and not cluster.cancelled() and cluster.exception() is None:
        cluster.result()[0].close()


@pytest.fixture(scope="session")
def podman() -> dict:
    """Podman with the local base image (built once per machine); config overrides for the serving image.

    Skipped only outside CI on a machine without a working Podman; in CI a missing Podman fails.
    """
    require_system_part("podman")
    info = subprocess.run(["podman", "info"], capture_output=True, text=True)
    if info.returncode != 0:
        reason = (
            f"`podman info` fails with CONTAINERS_CONF={os.environ['CONTAINERS_CONF']}: {info.stderr.strip()}"
        )
        (pytest.fail if os.environ.get("CI") else pytest.skip)(reason)
    image_build("podman")
    return {
        "base_image": LOCAL_BASE,
        # the host's CA bundle, for pip inside the build: where PyPI is reached through a CA that only the
        # host trusts (e.g. a TLS-inspecting proxy), the base image's own bundle fails verification
        "build_options": ["-v", "/etc/ssl/certs:/etc/ssl/certs:ro"],
    }


# Timing summary by phase, at the end of the run. Set-up times come from `make test`
# (CIFARFLOW_SETUP_TIMES: "install <s>" and "system <s>" lines); a test's phase is its module's,
# else "Slurm" for tests marked slurm, "workflow" for tests marked workflow (real snakemake runs),
# else "unit".
PHASE_OF_MODULE = {
    "test_serving": "serving",
    "test_engines": "serving",
    "test_workflow_serve": "serving",
    "test_workflow_containers": "containers",
    "test_slurm": "Slurm",
}
MARK_PHASES = (("slurm", "Slurm"), ("workflow", "workflow"))
PHASES = ("install", "system", "unit", "workflow", "serving", "containers", "Slurm")
_seconds: dict[str, float] = defaultdict(float)
_started = time.monotonic()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    module = Path(report.nodeid.split("::")[0]).stem
    phase = PHASE_OF_MODULE.get(module) or next(
        (name for mark, name in MARK_PHASES if mark in report.keywords), "unit"
    )
    _seconds[phase] += report.duration  # setup (fixtures included), call and teardown


def pytest_terminal_summary(terminalreporter) -> None:
    times = dict(_seconds)
    setup = os.environ.get("CIFARFLOW_SETUP_TIMES")
    if setup and Path(setup).exists():
        for line in Path(setup).read_text().splitlines():
            name, _, seconds = line.partition(" ")
            times[name] = float(seconds)

    def clock(seconds: float) -> str:
        minutes, seconds = divmod(round(seconds), 60)
        return f"{minutes}:{seconds:02d}"

    shown = [f"{phase} {clock(times[phase])}" for phase in PHASES if phase in times]
    total = time.monotonic() - _started + times.get("install", 0) + times.get("system", 0)
    terminalreporter.write_sep("-", "time by phase (m:ss)")
    terminalreporter.write_line(f"{'   '.join(shown)}   | total {clock(total)}")
