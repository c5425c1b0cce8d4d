"""cifarflow.ports in the servers the tests start themselves: the MLflow tracking server and Slurm's
daemons move to other ports when theirs is taken between picking and binding (the model server's
engine is tested in test_engines.py)."""

import logging
import socket

import pytest
from cifarflow import ports
from test_mlflow_hook import mlflow_server  # noqa: F401  (fixture)


def test_pick_gives_different_ports_that_nothing_is_bound_to():
    chosen = ports.pick(20)
    assert len(set(chosen)) == 20
    for port in chosen:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free: binding it works


@pytest.fixture
def first_port_taken(monkeypatch):
    """The first pick's first port is taken by a socket that listens and never answers."""
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken, real_pick = blocker.getsockname()[1], ports.pick

    def pick(count=1, host=ports.LOOPBACK):
        chosen = real_pick(count, host)
        if not pick.done:
            pick.done, chosen[0] = True, taken
        return chosen

    pick.done = False
    monkeypatch.setattr(ports, "pick", pick)
    yield taken
    blocker.close()


def retries(caplog) -> list[str]:
    records = caplog.get_records("setup") + caplog.get_records("call")
    return [r.getMessage() for r in records if "trying again on other ports" in r.getMessage()]


def test_the_mlflow_server_moves_to_another_port_when_its_first_is_taken(
    caplog,
    first_port_taken,
    mlflow_server,  # noqa: F811
):
    caplog.set_level(logging.WARNING)
    assert not mlflow_server.endswith(f":{first_port_taken}")
    (message,) = retries(caplog)
    assert message.startswith("mlflow server:") and "address already in use" in message


@pytest.mark.slurm
@pytest.mark.parametrize("daemon", ["slurmctld", "slurmd"])
def test_the_slurm_cluster_moves_to_other_ports_when_one_is_taken(monkeypatch, tmp_path, caplog, daemon):
    from slurm_cluster import slurm_cluster

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken, real_pick, which = blocker.getsockname()[1], ports.pick, ["slurmctld", "slurmd"].index(daemon)

    def pick(count=1, host=ports.LOOPBACK):
        chosen = real_pick(count, host)
        if count == 2 and not pick.done:
            pick.done, chosen[which] = True, taken
        return chosen

    pick.done = False
    monkeypatch.setattr(ports, "pick", pick)
    try:
        with slurm_cluster(tmp_path, ["cpu"]) as cluster:
            conf = (cluster.root / "slurm.conf").read_text()
            assert f"Port={taken}\n" not in conf
            assert cluster.node_idle()
            assert cluster.run("sbatch", "--wrap", "true", "--partition", "cpu").returncode == 0
    finally:
        blocker.close()
    (message,) = retries(caplog)
    assert message.startswith("slurmctld and slurmd:") and "Address already in use" in message
