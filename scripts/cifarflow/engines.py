"""Container engines for the serving image: pick one, build the image, run it, always stop it.

`serving.engine`: auto | docker | podman | apptainer | process. `auto` takes the first that works
here, in that order (docker and podman only with the base image at hand or pullable: offline, they
would fail at FROM), and says which and why the others were passed over. `process` runs the same
server code (scripts/serve.py) as a local subprocess, for machines with no container engine.

The server listens on `serving.host` (loopback by default: it has no authentication). Docker and
Podman run it in the network namespace `serving.network` names: `private` (the server listens on
0.0.0.0 inside it, the engine publishes its ports on serving.host) or `host`. Its ports come from
cifarflow.ports, which starts it again on other ports when another process took one first.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
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

from . import ports
from .errors import PipelineError
from .layout import CONTAINERS, LOCK, RECIPE_FILES, SCRIPTS, SERVE, serving_code
from .runtime import sha256_file

log = logging.getLogger("cifarflow")

ENGINES = ("docker", "podman", "apptainer", "process")
OCI = ("docker", "podman")
# serving.def takes the model's labels as build arguments of these names.
APPTAINER_ARGS = {
    "io.cifarflow.model.sha256": "MODEL_SHA256",
    "io.cifarflow.dataset.id": "DATASET_ID",
    "org.opencontainers.image.revision": "SOURCE_REVISION",
}


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
    """The build context: the recipe files, the lock, the serving code (scripts/serve.py and the
    package cifarflow.serving, as layout.serving_code lists them) and the model, nothing else."""
    for name in RECIPE_FILES:
        shutil.copy2(CONTAINERS / name, target / name)
    shutil.copy2(LOCK, target / LOCK.name)
    for path in serving_code():
        copy = target / path.relative_to(SCRIPTS)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, copy)
    shutil.copy2(model, target / "model.onnx")
    return target


def _flags(flag: str, values: dict[str, str]) -> list[str]:
    return [a for key, value in values.items() for a in (flag, f"{key}={value}")]


def build(
    *,
    engine: str,
    model: Path,
    reference: str,
    build_args: dict[str, str],
    labels: dict[str, str],
    extra: list[str],
    sif: Path,
) -> Built:
    """Build the serving image of `model` with `engine`, tagged `reference` (docker/podman); `labels`
    are its OCI labels, `extra` more build arguments, `sif` where apptainer writes its image file."""
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


NETWORKS = ("private", "host")


@dataclass(frozen=True, kw_only=True)
class ServerSpec:
    """What `running` starts: the served model (`image`, as Built.image), how, and where it listens.

    `host` is the address the server listens on (serving.host). `network` (serving.network) is for
    docker/podman: `private` gives the container its own network namespace, where the server listens
    on 0.0.0.0 (the engine's port forwarding reaches it on the container's address) and the engine
    publishes its ports on `host` only; `host` shares the host's namespace, and the server listens
    on `host` itself, as it does with the process and apptainer engines.
    """

    engine: str
    image: str
    name: str  # the container's name (docker/podman): container_name() keeps it stable per experiment
    model_name: str
    threads: int
    max_request_mb: float
    host: str = ports.LOOPBACK
    network: str = "private"

    @property
    def private_network(self) -> bool:
        return self.engine in OCI and self.network == "private"


@dataclass
class Server:
    host: str  # where a client on this machine connects
    http_port: int
    grpc_port: int
    logs: Callable[[], str]  # the server's output so far
    pid: int | None = None  # the server's main process, as the host sees it

    @property
    def url(self) -> str:
        return ports.host_port(self.host, self.http_port)

    @property
    def grpc_url(self) -> str:
        return ports.host_port(self.host, self.grpc_port)


def container_name(experiment: str, workdir: Path) -> str:
    """Deterministic per experiment and working directory, so a leftover from a killed run is found."""
    return f"cifarflow-eval-{experiment}-{hashlib.sha256(str(workdir.resolve()).encode()).hexdigest()[:8]}"


@contextmanager
def running(spec: ServerSpec, *, log_file: Path, ready_timeout_s: float) -> Iterator[Server]:
    """Start the server on free ports of spec.host, wait until it is ready, always stop it and free its ports.

    A port taken between picking and binding (by another evaluation or any other process) makes the
    start try again on new ports (cifarflow.ports), up to a few times.
    """
    if spec.network not in NETWORKS:
        raise PipelineError(f"serving.network is {spec.network!r}; choose one of {', '.join(NETWORKS)}")
    try:
        ports.pick(1, spec.host)
    except OSError as err:
        raise PipelineError(
            f"serving.host {spec.host!r} is not an address this machine can listen on ({err}); "
            "use 127.0.0.1 (loopback only, the default) or an address of this machine"
        ) from None
    log_file.parent.mkdir(parents=True, exist_ok=True)
    proc, server = ports.start_on_free_ports(
        lambda chosen: _start(spec, chosen, log_file, ready_timeout_s), 2, what="the server", host=spec.host
    )
    try:
        log.info("server ready on HTTP %s, gRPC %s", server.url, server.grpc_url)
        yield server
    finally:
        _stop(spec, proc, server)


def _command(spec: ServerSpec, http_port: int, grpc_port: int) -> tuple[list[str], dict[str, str]]:
    env = {
        # In its own network namespace the server must listen on the container's own address, where
        # the engine forwards the published ports; on the host's it listens on serving.host only.
        "CIFARFLOW_HOST": "0.0.0.0" if spec.private_network else spec.host,
        "CIFARFLOW_HTTP_PORT": str(http_port),
        "CIFARFLOW_GRPC_PORT": str(grpc_port),
        "CIFARFLOW_THREADS": str(spec.threads),
        "CIFARFLOW_MAX_REQUEST_MB": str(spec.max_request_mb),
        "CIFARFLOW_MODEL_NAME": spec.model_name,
    }
    if spec.engine in OCI:
        if spec.private_network:  # podman: its own default (bridge as root, slirp4netns/pasta rootless)
            network = ["--network", "private" if spec.engine == "podman" else "bridge"]
            for port in (http_port, grpc_port):
                network += ["-p", f"{ports.host_port(spec.host, port)}:{port}"]
        else:
            network = ["--network", "host"]
        no_health = ["--no-healthcheck"] if spec.engine == "podman" else []  # we poll readiness ourselves
        cmd = [spec.engine, "run", "--rm", "--name", spec.name, *no_health, *network, *_flags("-e", env)]
        return [*cmd, spec.image], env
    if spec.engine == "apptainer":  # the host's network namespace (its own needs root)
        return [apptainer_binary(), "run", "--cleanenv", *_flags("--env", env), spec.image], env
    return [sys.executable, str(SERVE), "--model", spec.image], env


def _start(
    spec: ServerSpec, chosen: list[int], log_file: Path, timeout_s: float
) -> tuple[subprocess.Popen, Server]:
    """One try: start the server on `chosen` ports and wait until it is ready and holds them."""
    http_port, grpc_port = chosen
    cmd, env = _command(spec, http_port, grpc_port)
    if spec.engine in OCI:
        # a leftover of a killed run
        subprocess.run([spec.engine, "rm", "-f", spec.name], capture_output=True)
    log.info("starting the server: %s", " ".join(cmd))
    server = Server(ports.connect_host(spec.host), http_port, grpc_port, lambda: _read(log_file))
    with open(log_file, "w") as out:  # the server keeps its own descriptor
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout_s
        while not (_ready(server) and _holds_ports(spec, proc, server)):
            if proc.poll() is not None:
                output = server.logs()
                if ports.bind_failed(output):
                    raise ports.PortTaken(f"its bind failed ({ports.bind_failure_line(output)})")
                raise PipelineError(
                    f"the server exited (code {proc.returncode}) before it was ready; its log:\n"
                    + _tail(output)
                )
            if time.monotonic() > deadline:
                raise PipelineError(
                    f"the server was not ready within {timeout_s:.0f} s (evaluate.ready_timeout_s); "
                    f"its log:\n{_tail(server.logs())}"
                )
            time.sleep(0.2)
    except BaseException as err:
        # a taken port is another process's: nothing of ours to wait for there
        _stop(spec, proc, server, wait_free=not isinstance(err, ports.PortTaken))
        raise
    server.pid = _container_pid(spec) if spec.engine in OCI else proc.pid
    return proc, server


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _ready(server: Server) -> bool:
    try:
        with urllib.request.urlopen(f"http://{server.url}/v2/health/ready", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def _inspect(spec: ServerSpec, field: str) -> str:
    proc = subprocess.run(
        [spec.engine, "inspect", "--format", f"{{{{{field}}}}}", spec.name], capture_output=True, text=True
    )
    return proc.stdout.strip()


def _container_pid(spec: ServerSpec) -> int | None:
    return int(_inspect(spec, ".State.Pid") or 0) or None


def _holds_ports(spec: ServerSpec, proc: subprocess.Popen, server: Server) -> bool:
    """Whether what answered is our server: not another process that holds one of our ports."""
    if spec.private_network:
        # The engine binds the published ports on the host before it starts the container, and
        # fails when one is taken: a running container holds them.
        return _inspect(spec, ".State.Running") == "true"
    pid = _container_pid(spec) if spec.engine in OCI else proc.pid
    return pid is not None and ports.held([server.http_port, server.grpc_port], [pid])


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:]) or "(empty)"


def _stop(spec: ServerSpec, proc: subprocess.Popen, server: Server, wait_free: bool = True) -> None:
    if spec.engine in OCI:
        subprocess.run([spec.engine, "rm", "-f", "-t", "3", spec.name], capture_output=True)
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
    log.info("server stopped")
    for port in (server.http_port, server.grpc_port) if wait_free else ():
        if not ports.wait_free(server.host, port):
            log.warning("port %d still answers 10 s after the server was stopped", port)
