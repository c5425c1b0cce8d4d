"""Container engines for the serving image: pick one, build the image, run it, always stop it.

`serving.engine`: auto | docker | podman | apptainer | process. `auto` takes the first that works
here, in that order (docker and podman only with the base image at hand or pullable: offline, they
would fail at FROM), and says which and why the others were passed over. `process` runs the same
server code (scripts/serve.py) as a local subprocess, for machines with no container engine.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import PipelineError
from .runtime import sha256_file

log = logging.getLogger("cifarflow")

ENGINES = ("docker", "podman", "apptainer", "process")
OCI = ("docker", "podman")
CONTAINERS = Path(__file__).resolve().parents[2] / "containers" / "serving"
SCRIPTS = Path(__file__).resolve().parents[1]
# What the image carries from this repository; a change to any of these rebuilds it.
SERVING_CODE = (
    "serve.py",
    "cifarflow/__init__.py",
    "cifarflow/inference.py",
    "cifarflow/logs.py",
    "cifarflow/serving.py",
    "cifarflow/images.py",
)
RECIPE_FILES = ("Dockerfile", "serving.def", "requirements.txt")
# The lock (make lock): the exact versions requirements.txt installs at, direct and transitive.
LOCK = CONTAINERS.parents[1] / "constraints.txt"
# serving.def takes the model's labels as build arguments of these names.
APPTAINER_ARGS = {
    "io.cifarflow.model.sha256": "MODEL_SHA256",
    "io.cifarflow.dataset.id": "DATASET_ID",
    "org.opencontainers.image.revision": "SOURCE_REVISION",
}


def serving_sources() -> list[Path]:
    return [SCRIPTS / name for name in SERVING_CODE] + [CONTAINERS / name for name in RECIPE_FILES] + [LOCK]


def _probe(cmd: list[str], timeout: float = 30) -> str | None:
    """None when `cmd` runs and exits 0, else why not (one line)."""
    if shutil.which(cmd[0]) is None:
        return f"`{cmd[0]}` is not on PATH"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"`{' '.join(cmd)}` did not answer in {timeout:.0f} s"
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        return f"`{' '.join(cmd)}` failed: {detail[-1] if detail else f'exit {proc.returncode}'}"
    return None


def unavailable(engine: str) -> str | None:
    """Why `engine` cannot be used on this machine, or None when it can."""
    if engine in OCI:
        return _probe([engine, "info"])
    if engine == "apptainer":
        reasons = [_probe([name, "--version"]) for name in ("apptainer", "singularity")]
        return None if None in reasons else reasons[0]
    if engine == "process":
        return None
    raise PipelineError(f"unknown serving engine {engine!r}; choose one of auto, {', '.join(ENGINES)}")


def no_base_image(engine: str, image: str) -> str | None:
    """None when `engine` has `image` or can pull it now, else why not (one line)."""
    if _probe([engine, "image", "inspect", image]) is None:
        return None
    reason = _probe([engine, "pull", "--quiet", image], timeout=600)
    if reason is None:
        return None
    local = "containers/base/make-local-base.sh builds a local one for serving.base_image"
    return f"its base image {image} is not here and cannot be pulled ({reason}; {local})"


def choose(requested: str, base_image: str | None = None) -> str:
    """Resolve `serving.engine`; an explicit engine that does not work here is an error. `auto`
    passes over docker and podman when they have not got `base_image` and cannot pull it."""
    if requested != "auto":
        reason = unavailable(requested)
        if reason:
            raise PipelineError(
                f"serving.engine is '{requested}', but it cannot be used here: {reason}. Install or "
                "start it, or set serving.engine to auto (first that works) or process (no container)"
            )
        log.info("serving engine: %s (from config)", requested)
        return requested
    passed = []
    for engine in ENGINES:
        reason = unavailable(engine)
        if reason is None and engine in OCI and base_image:
            reason = no_base_image(engine, base_image)
        if reason is None:
            log.info("serving engine: auto took %s%s", engine, f" ({'; '.join(passed)})" if passed else "")
            return engine
        passed.append(f"not {engine}: {reason}")
    raise AssertionError("the process engine is always available")


def apptainer_binary() -> str:
    return "apptainer" if shutil.which("apptainer") else "singularity"


@dataclass
class Built:
    image: str  # what `run` starts: an image reference, a .sif path, or the model path (process)
    image_id: str
    digest: str | None
    size_bytes: int | None


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> str:
    log.info("$ %s", " ".join(cmd))
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise PipelineError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def assemble_context(model: Path, target: Path) -> Path:
    """The build context: the recipe files, the serving code and the model, nothing else."""
    for name in RECIPE_FILES:
        shutil.copy2(CONTAINERS / name, target / name)
    shutil.copy2(LOCK, target / LOCK.name)
    for name in SERVING_CODE:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(SCRIPTS / name, target / name)
    shutil.copy2(model, target / "model.onnx")
    return target


def _flags(flag: str, values: dict[str, str]) -> list[str]:
    return [a for key, value in values.items() for a in (flag, f"{key}={value}")]


def build(
    engine: str,
    model: Path,
    reference: str,
    build_args: dict[str, str],
    labels: dict[str, str],
    extra: list[str],
    sif: Path,
) -> Built:
    """Build the serving image with `engine`; `sif` is where apptainer writes its image file."""
    if engine == "process":
        return Built(image=str(model), image_id=sha256_file(model), digest=None, size_bytes=None)
    with tempfile.TemporaryDirectory(prefix="cifarflow-serving-") as tmp:
        context = assemble_context(model, Path(tmp))
        if engine in OCI:
            fmt = ["--format", "docker"] if engine == "podman" else []  # keeps HEALTHCHECK
            cmd = [
                engine,
                "build",
                *fmt,
                *_flags("--build-arg", build_args),
                *_flags("--label", labels),
                *extra,
                "-t",
                reference,
                "-f",
                "Dockerfile",
                ".",
            ]
            _run(cmd, f"{engine} build", cwd=context)
            fields = _run([engine, "image", "inspect", reference, "--format", "{{.Id}} {{.Size}}"], "inspect")
            image_id, size = fields.split()
            digest = None
            if engine == "podman":
                digest = _run([engine, "image", "inspect", reference, "--format", "{{.Digest}}"], "inspect")
            return Built(reference, image_id, (digest or "").strip() or None, int(size))
        sif.parent.mkdir(parents=True, exist_ok=True)
        partial = sif.with_suffix(".sif.part")
        cmd = [
            apptainer_binary(),
            "build",
            "--force",
            *_flags("--build-arg", {**build_args, **{APPTAINER_ARGS[k]: v for k, v in labels.items()}}),
            *extra,
            str(partial.resolve()),
            "serving.def",
        ]
        _run(cmd, "apptainer build", cwd=context)
        os.replace(partial, sif)
        return Built(str(sif), sha256_file(sif), None, sif.stat().st_size)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    http_port: int
    grpc_port: int
    logs: Callable[[], str]  # the server's output so far
    pid: int | None = None  # the server's main process, as the host sees it

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def container_name(experiment: str, workdir: Path) -> str:
    """Deterministic per experiment and working directory, so a leftover from a killed run is found."""
    return f"cifarflow-eval-{experiment}-{hashlib.sha256(str(workdir.resolve()).encode()).hexdigest()[:8]}"


@contextmanager
def running(
    engine: str,
    image: str,
    name: str,
    threads: int,
    max_request_mb: float,
    model_name: str,
    timeout_s: float,
    log_file: Path,
) -> Iterator[Server]:
    """Start the server on free loopback ports, wait until ready, and always stop it and free its ports."""
    http_port, grpc_port = free_port(), free_port()
    env = {
        "CIFARFLOW_HTTP_PORT": str(http_port),
        "CIFARFLOW_GRPC_PORT": str(grpc_port),
        "CIFARFLOW_THREADS": str(threads),
        "CIFARFLOW_MAX_REQUEST_MB": str(max_request_mb),
        "CIFARFLOW_MODEL_NAME": model_name,
    }
    log_file.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_file, "w")  # noqa: SIM115 - closed in finally
    proc: subprocess.Popen | None = None
    if engine in OCI:
        subprocess.run([engine, "rm", "-f", name], capture_output=True)  # a leftover from a killed run
        ports = [a for p in (http_port, grpc_port) for a in ("-p", f"127.0.0.1:{p}:{p}")]
        no_health = ["--no-healthcheck"] if engine == "podman" else []  # we poll readiness ourselves
        cmd = [engine, "run", "--rm", "--name", name, *no_health, *ports, *_flags("-e", env), image]
    elif engine == "apptainer":
        cmd = [apptainer_binary(), "run", "--cleanenv", *_flags("--env", env), image]
    else:
        cmd = [sys.executable, str(SCRIPTS / "serve.py"), "--model", image]
    log.info("starting the server: %s", " ".join(cmd))
    try:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}, start_new_session=True
        )
        server = Server(http_port, grpc_port, lambda: log_file.read_text(errors="replace"))
        deadline = time.monotonic() + timeout_s
        while not _ready(http_port):
            if proc.poll() is not None:
                raise PipelineError(
                    f"the server exited (code {proc.returncode}) before it was ready; its log:\n"
                    + _tail(server.logs())
                )
            if time.monotonic() > deadline:
                raise PipelineError(
                    f"the server was not ready within {timeout_s:.0f} s (evaluate.ready_timeout_s); "
                    f"its log:\n{_tail(server.logs())}"
                )
            time.sleep(0.2)
        server.pid = proc.pid
        if engine in OCI:
            inspect = subprocess.run(
                [engine, "inspect", "--format", "{{.State.Pid}}", name], capture_output=True, text=True
            )
            server.pid = int(inspect.stdout.strip() or 0) or None
        log.info("server ready on HTTP %s, gRPC %s", server.url, server.grpc_url)
        yield server
    finally:
        _stop(engine, name, proc)
        out.close()
        _wait_port_free(http_port)
        _wait_port_free(grpc_port)


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:]) or "(empty)"


def _stop(engine: str, name: str, proc: subprocess.Popen | None) -> None:
    if engine in OCI:
        subprocess.run([engine, "rm", "-f", "-t", "3", name], capture_output=True)
    if proc is not None and proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
    log.info("server stopped")


def _wait_port_free(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.1)
    log.warning("port %d still answers %.0f s after the server was stopped", port, timeout)
