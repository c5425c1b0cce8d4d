"""The serving engines. `serving.engine: auto` on a machine with Podman: it takes Podman when the base
image is at hand, and the process engine, saying why in one log line, when the base image is neither
here nor pullable (offline, or Docker Hub out of reach), so that the offline demo still finishes.
The process engine's server through `engines.running`: loopback only, and no port races (several
servers started at once, a port taken by another process between picking and binding, a clear error
when every try finds one taken). Real servers (scripts/serve.py) on real ports, real intruding
processes."""

import ipaddress
import logging
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
from cifarflow import ports
from cifarflow.engines import ServerSpec, choose, running
from cifarflow.errors import PipelineError
from test_serving import model, offline, port_free, tiny_data  # noqa: F401  (fixtures)

# A registry on loopback that refuses connections: the pull fails at once, online or offline.
UNPULLABLE = "localhost/cifarflow-no-such-base:never"


def test_auto_takes_podman_when_the_base_image_is_here(podman):
    assert choose("auto", podman["base_image"]) == "podman"


def test_auto_falls_back_to_the_process_engine_without_a_base_image_saying_why(podman, caplog):
    caplog.set_level(logging.INFO, logger="cifarflow")
    assert choose("auto", UNPULLABLE) == "process"
    (line,) = [r.getMessage() for r in caplog.records if "serving engine:" in r.getMessage()]
    assert line.startswith("serving engine: auto took process (")
    assert f"not podman: its base image {UNPULLABLE} is not here and cannot be pulled" in line
    assert "containers/base/make-local-base.sh" in line
    # an explicit engine is taken at its word: the build then fails on the missing image itself
    assert choose("podman", UNPULLABLE) == "podman"


# Another process on a port: `ready` answers every GET with 200 {"ready": true} (it would pass for our
# server's readiness), `silent` listens and never answers, `reuseport` is silent with SO_REUSEPORT set
# (as gRPC servers bind, so a gRPC server starts on the same port without an error).
INTRUDER = """
import http.server, socket, sys, time
port, mode = int(sys.argv[1]), sys.argv[2]
if mode == "ready":
    class Ready(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"ready": true}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    server = http.server.HTTPServer(("127.0.0.1", port), Ready)
    print("listening", flush=True)
    server.serve_forever()
sock = socket.socket()
if mode == "reuseport":
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
sock.bind(("127.0.0.1", port))
sock.listen()
print("listening", flush=True)
time.sleep(3600)
"""


@pytest.fixture
def intruder():
    """take(port, mode) starts another process listening on `port`; all are killed at the end."""
    started = []

    def take(port: int, mode: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", INTRUDER, str(port), mode], stdout=subprocess.PIPE, text=True
        )
        started.append(proc)
        assert proc.stdout.readline().strip() == "listening"
        return proc

    yield take
    for proc in started:
        proc.kill()
        proc.wait()


def spec(model, name: str = "test", host: str = ports.LOOPBACK) -> ServerSpec:  # noqa: F811
    return ServerSpec(
        engine="process",
        image=str(model),
        name=name,
        model_name="cifar10",
        threads=1,
        max_request_mb=8,
        host=host,
    )


def listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every listening socket of `pid` and its children."""
    found = set()
    for member in ports.family_tree([pid]):
        connections = psutil.Process(member).connections()
        found |= {(c.laddr.ip, c.laddr.port) for c in connections if c.status == "LISTEN"}
    return found


def assert_own_ports(server) -> None:
    """Our server, and nobody else, listens on both its ports."""
    for port in (server.http_port, server.grpc_port):
        assert ports.listeners(port) <= ports.family_tree([server.pid]), port
    assert {server.http_port, server.grpc_port} <= {port for _, port in listening(server.pid)}


def infer(server, images: np.ndarray) -> np.ndarray:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    tensor = grpcclient.InferInput("image", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)
    try:
        return client.infer("cifar10", [tensor]).as_numpy("probabilities")
    finally:
        client.close()


def server_processes() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if "serve.py" in " ".join(p.cmdline())]


IMAGES = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_the_process_engine_listens_on_serving_host_only(model, tmp_path, host):  # noqa: F811
    with running(spec(model, host=host), log_file=tmp_path / "server.log", ready_timeout_s=60) as server:
        sockets = listening(server.pid)
        np.testing.assert_array_equal(infer(server, IMAGES), offline(model, IMAGES))
    assert {port for _, port in sockets} == {server.http_port, server.grpc_port}
    # gRPC's IPv6 socket shows an IPv4 address as ::ffff:127.0.0.1
    addresses = {ipaddress.ip_address(ip) for ip, _ in sockets}
    addresses = {getattr(a, "ipv4_mapped", None) or a for a in addresses}
    assert addresses == {ipaddress.ip_address(host)}, sockets
    assert all(a.is_loopback for a in addresses)


def test_a_host_that_is_not_this_machines_is_a_clear_error(model, tmp_path):  # noqa: F811
    wrong = spec(model, host="192.0.2.1")  # TEST-NET-1: nobody's address
    with (
        pytest.raises(PipelineError, match=r"serving.host '192.0.2.1' is not an address this machine can"),
        running(wrong, log_file=tmp_path / "server.log", ready_timeout_s=60),
    ):
        pass
    assert server_processes() == []


@pytest.mark.parametrize(
    ("taken", "mode", "noticed"),
    [
        ("http", "ready", ("is held by another process too",)),  # it answers our readiness probe
        ("http", "silent", ("address already in use",)),  # uvicorn's bind fails
        # our gRPC server does not share ports; gRPC words its failed bind either way
        ("grpc", "reuseport", ports.BIND_FAILURES),
        ("grpc", "silent", ports.BIND_FAILURES),  # gRPC's bind fails
    ],
)
def test_a_port_taken_between_pick_and_bind_is_noticed_and_the_start_retried(
    model,  # noqa: F811
    intruder,
    monkeypatch,
    tmp_path,
    caplog,
    taken,
    mode,
    noticed,
):
    real_pick, taken_ports = ports.pick, []

    def pick_then_take(count, host=ports.LOOPBACK):
        chosen = real_pick(count, host)
        if count == 2 and not taken_ports:  # the server's first pick: another process takes one
            taken_ports.append(chosen[0 if taken == "http" else 1])
            intruder(taken_ports[0], mode)
        return chosen

    monkeypatch.setattr(ports, "pick", pick_then_take)
    with running(spec(model), log_file=tmp_path / "server.log", ready_timeout_s=60) as server:
        assert taken_ports[0] not in (server.http_port, server.grpc_port)
        assert_own_ports(server)
        np.testing.assert_array_equal(infer(server, IMAGES), offline(model, IMAGES))
    retries = [r.getMessage() for r in caplog.records if "trying again on other ports" in r.getMessage()]
    assert len(retries) == 1 and "(1 of 5 tries)" in retries[0], retries
    assert any(words in retries[0].lower() for words in noticed), retries
    assert port_free(server.http_port) and port_free(server.grpc_port) and server_processes() == []


def test_several_servers_started_at_once_each_end_up_on_ports_of_their_own(
    model,  # noqa: F811
    monkeypatch,
    tmp_path,
    caplog,
):
    """Four evaluations start together and their first pick collides on purpose: the same two ports."""
    count, real_pick = 4, ports.pick
    shared, first_pick, lock = real_pick(2), set(), threading.Lock()

    def colliding_pick(n, host=ports.LOOPBACK):
        with lock:
            if n == 2 and threading.get_ident() not in first_pick:
                first_pick.add(threading.get_ident())
                return list(shared)
        return real_pick(n, host)

    monkeypatch.setattr(ports, "pick", colliding_pick)
    start, all_up = threading.Barrier(count, timeout=120), threading.Barrier(count, timeout=240)

    def evaluation(i: int):
        try:
            start.wait()
            with running(
                spec(model, f"e{i}"), log_file=tmp_path / f"s{i}.log", ready_timeout_s=120
            ) as server:
                probabilities = infer(server, IMAGES[i : i + 1])
                all_up.wait()  # every server is up at this moment: their ports must all differ
                assert_own_ports(server)
                return server.http_port, server.grpc_port, server.pid, probabilities
        except BaseException:
            start.abort()
            all_up.abort()
            raise

    with ThreadPoolExecutor(count) as pool:
        results = list(pool.map(evaluation, range(count)))
    used = [port for http, grpc, _, _ in results for port in (http, grpc)]
    assert len(set(used)) == 2 * count, results
    assert len({pid for _, _, pid, _ in results}) == count
    expected = offline(model, IMAGES[:count])
    for i, (*_, probabilities) in enumerate(results):
        np.testing.assert_array_equal(probabilities[0], expected[i])
    retries = [r for r in caplog.records if "trying again on other ports" in r.getMessage()]
    assert len(retries) >= count - 1  # at most one of them could keep the shared ports
    assert all(port_free(p) for p in used) and server_processes() == []


def test_when_every_try_finds_a_port_taken_the_error_says_so_and_nothing_is_left(
    model,  # noqa: F811
    intruder,
    monkeypatch,
    tmp_path,
):
    blocked = ports.pick(1)[0]
    intruder(blocked, "silent")
    real_pick = ports.pick
    monkeypatch.setattr(ports, "pick", lambda n, host=ports.LOOPBACK: [blocked, *real_pick(n - 1, host)])
    monkeypatch.setattr(ports, "TRIES", 2)
    with (
        pytest.raises(ports.PortsUnavailable) as err,
        running(spec(model), log_file=tmp_path / "server.log", ready_timeout_s=60),
    ):
        pytest.fail("the server cannot have started")
    message = str(err.value)
    assert "the server found its ports on 127.0.0.1 taken by another process in each of 2 tries" in message
    assert message.count(f"[{blocked}, ") == 2 and "address already in use" in message
    assert isinstance(err.value, PipelineError)  # the rule prints the message, not a traceback
    assert server_processes() == []
