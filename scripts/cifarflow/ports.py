"""Free TCP ports for the servers we start (the model server, and in tests MLflow and Slurm), without races.

A port found by binding port 0 and closing the socket is free only at that moment: another pick,
another evaluation or any other process may take it before our server binds it. Keeping it
reserved until then is not possible in general: a subprocess, a container engine publishing a port
and slurmctld each bind their port themselves. So the start is retried instead:
`start_on_free_ports` picks fresh ports and starts again whenever the start raises `PortTaken`, and
fails with a clear error after a few tries.

A start finds out precisely that a port was taken: its server exits before it is ready with a bind
failure in its output (`bind_failed`), or, once something answers on the port, another process
listens there too (`held`). The second check matters: a foreign server on our port would answer
our readiness probe in our server's place, and a gRPC server binds with SO_REUSEPORT, so a second
one on the same port starts without an error and takes part of the traffic.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from typing import TypeVar

import psutil

from .errors import PipelineError

log = logging.getLogger("cifarflow")

LOOPBACK = "127.0.0.1"
TRIES = 5
# How servers word a bind that failed because the address is in use: EADDRINUSE's message as uvicorn,
# Go (podman, docker publishing a port), Slurm and most others print it, and gRPC's own wording,
# which drops the errno (it also covers an address that is not this machine's: `pick` rules that out).
BIND_FAILURES = ("address already in use", "failed to bind to address")

T = TypeVar("T")


class PortTaken(Exception):
    """A start found one of its ports taken by another process; it stopped what it had started."""


class PortsUnavailable(PipelineError):
    """Every try found a port taken."""


def pick(count: int = 1, host: str = LOOPBACK) -> list[int]:
    """`count` different ports nothing is bound to on `host` right now.

    They are bound all at once (so they differ from each other) and released on return: the server
    binds them itself. OSError when `host` is not an address this machine can listen on.
    """
    family = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0][0]
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(family, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]


def bind_failed(output: str) -> bool:
    """Whether a server's output says that it could not bind a port because the port was in use."""
    text = output.lower()
    return any(marker in text for marker in BIND_FAILURES)


def bind_failure_line(output: str) -> str:
    """The first line of `output` that reports the failed bind (for messages)."""
    return next((line.strip() for line in output.splitlines() if bind_failed(line)), "a bind failed")


def start_on_free_ports(
    start: Callable[[list[int]], T],
    count: int,
    *,
    what: str,
    host: str = LOOPBACK,
    tries: int | None = None,
) -> T:
    """`start(ports)` on `count` freshly picked ports of `host`, again on new ones while it raises PortTaken.

    `start` returns what it started, or stops it and raises PortTaken when a port was taken between
    the pick and its bind; any other exception ends the attempts at once.
    """
    tries = tries or TRIES
    failures = []
    for attempt in range(1, tries + 1):
        ports = pick(count, host)
        try:
            return start(ports)
        except PortTaken as err:
            failures.append(f"ports {ports}: {err}")
            log.warning("%s: %s; trying again on other ports (%d of %d tries)", what, err, attempt, tries)
    raise PortsUnavailable(
        f"{what} found its ports on {host} taken by another process in each of {tries} tries, between "
        f"picking them and binding them ({'; '.join(failures)}). Something on this machine takes ports "
        "as fast as they are freed: find it (`ss -ltnp`) or try again"
    )


def listeners(*ports: int) -> set[int | None]:
    """The processes listening on any of these TCP ports, on any address (None: a process this user
    cannot see)."""
    return {
        conn.pid
        for conn in psutil.net_connections("tcp")
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port in ports
    }


def _listeners_by_port(ports: Iterable[int]) -> dict[int, set[int | None]]:
    """listeners() of each port, from one scan of the machine's sockets."""
    found: dict[int, set[int | None]] = {port: set() for port in ports}
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port in found:
            found[conn.laddr.port].add(conn.pid)
    return found


def family_tree(pids: Iterable[int]) -> set[int]:
    """These processes and all their descendants, those still alive."""
    tree = set()
    for pid in pids:
        try:
            process = psutil.Process(pid)
            tree |= {pid, *(child.pid for child in process.children(recursive=True))}
        except psutil.NoSuchProcess:
            continue
    return tree


def _visible(pid: int) -> bool:
    """Whether this user can see the sockets of `pid` (not those of another user's processes)."""
    try:
        psutil.Process(pid).num_fds()
    except psutil.AccessDenied:
        return False
    except psutil.NoSuchProcess:
        pass
    return True


def held(ports: Iterable[int], pids: Iterable[int]) -> bool:
    """True when `pids` (or their descendants) listen on each of `ports`, and nobody else does.

    False while one is not listening yet. PortTaken when another process listens on one of them.
    When this user cannot see the sockets of `pids` (a rootful engine's container, for a user who is
    not root) it cannot tell: True once something listens on each port.
    """
    ours = family_tree(pids)
    if not ours:
        return False
    by_port = _listeners_by_port(ports)
    if not _visible(min(ours)):
        return all(by_port.values())
    for port, found in by_port.items():
        others = found - ours
        if others:
            who = ", ".join(
                f"pid {pid}" if pid else "another user's process" for pid in sorted(others, key=str)
            )
            raise PortTaken(f"port {port} is held by another process too ({who})")
        if not found:
            return False
    return True


def connect_host(host: str) -> str:
    """Where a client on this machine reaches a server bound on `host` (a wildcard means loopback)."""
    return {"0.0.0.0": LOOPBACK, "::": "::1", "": LOOPBACK}.get(host, host)


def host_port(host: str, port: int) -> str:
    """host:port, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def wait_free(host: str, port: int, timeout: float = 10) -> bool:
    """Wait until nothing accepts connections on host:port; False if something still does after `timeout`."""
    deadline = time.monotonic() + timeout
    address = connect_host(host)
    family = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)[0][0]
    while True:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            if sock.connect_ex((address, port)) != 0:
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
