"""A real one-node Slurm cluster for the tests: munged, slurmctld and slurmd from Debian's packages,
started with a private configuration (SLURM_CONF) in a temp directory and stopped by pid.

Shaped like the cluster profiles/slurm describes: its partitions, a GPU of its GPU model and its node
features, so that the profile runs unedited. The GPU is a GRES backed by /dev/null: Slurm schedules
and accounts for it (`--gpus=a100:1` is honoured), but there is no device behind it, so jobs on it
compute on the CPU. No accounting daemon (slurmdbd): no sacct, so the executor polls squeue.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import yaml
from cifarflow import ports
from conftest import Run, require_system_part

ROOT = Path(__file__).resolve().parents[1]
SBIN = ("/usr/sbin", "/sbin")  # daemons live here, which a non-login PATH may lack


def find_binary(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))


def memory_mb() -> int:
    return psutil.virtual_memory().total // 2**20


def profile_shape(profile: Path) -> dict:
    """Partitions, GPU models and node features that a Snakemake Slurm profile asks for: partitions
    from its slurm-partition-config file (and any slurm_partition it sets), GPU models from the
    partitions with GPUs there (and any gpu_model), features from its constraints."""
    settings = yaml.safe_load((profile / "config.yaml").read_text())
    per_rule = [settings.get("default-resources", {}), *settings.get("set-resources", {}).values()]
    limits = {}
    if "slurm-partition-config" in settings:
        limits = yaml.safe_load((profile / settings["slurm-partition-config"]).read_text())["partitions"]
    partitions = [*limits, *(r["slurm_partition"] for r in per_rule if "slurm_partition" in r)]
    gpu_models = [m for p in limits.values() if p.get("max_gpu") for m in p.get("available_gpu_models", [])]
    gpu_models += [r["gpu_model"] for r in per_rule if "gpu_model" in r]
    return {
        "partitions": list(dict.fromkeys(partitions)),  # first = the default partition
        "gpu_models": sorted({str(model) for model in gpu_models}),
        "features": sorted({str(r["constraint"]) for r in per_rule if "constraint" in r}),
    }


@dataclass
class SlurmCluster:
    """A running cluster: `env` (SLURM_CONF set) is what every client command and snakemake needs."""

    root: Path
    node: str
    cpus: int
    env: dict[str, str]
    daemons: dict[str, subprocess.Popen] = field(default_factory=dict)

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(command, env=self.env, capture_output=True, text=True, check=check, timeout=60)

    def jobs(self) -> dict[str, dict[str, str]]:
        """Every job slurmctld still knows (finished ones stay MinJobAge = 1 h): id -> fields."""
        out = self.run("squeue", "--states=all", "--noheader", "--format=%i|%T|%j|%k|%P").stdout
        jobs = {}
        for line in out.splitlines():
            job_id, state, name, comment, partition = line.split("|")
            jobs[job_id] = {"state": state, "name": name, "comment": comment, "partition": partition}
        return jobs

    def job_details(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as key -> value (Partition, TresPerJob, MinMemoryNode, ...)."""
        out = self.run("scontrol", "show", "job", "--oneliner", job_id).stdout
        return dict(item.split("=", 1) for item in out.split() if "=" in item)

    def cancel_all(self, timeout: float = 60, name: str | None = None) -> None:
        """Cancel every job (of one snakemake run: job `name` = its run id, when given) and wait until
        none of them is pending, running or completing."""
        active = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED"}

        def mine() -> dict[str, dict[str, str]]:
            return {i: job for i, job in self.jobs().items() if name in (None, job["name"])}

        ids = [i for i, job in mine().items() if job["state"] in active]
        if ids:
            self.run("scancel", *ids, check=False)
        deadline = time.monotonic() + timeout
        while any(job["state"] in active for job in mine().values()):
            if time.monotonic() > deadline:
                raise AssertionError(f"jobs still active {timeout:.0f} s after scancel: {self.jobs()}")
            time.sleep(0.5)

    def node_idle(self) -> bool:
        states = self.run("sinfo", "--noheader", "--Node", "--format=%t", check=False).stdout.split()
        return bool(states) and set(states) == {"idle"}  # one line per partition

    def daemon_logs(self, lines: int = 30) -> str:
        parts = []
        for log in sorted(self.root.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name}\n" + "\n".join(tail))
        return "\n".join(parts)


def write_config(
    root: Path,
    socket_path: Path,
    node: str,
    cpus: int,
    partitions: list[str],
    gpu_models: list[str],
    features: list[str],
    daemon_ports: list[int],
) -> Path:
    for folder in ("state", "spool"):
        (root / folder).mkdir(exist_ok=True)
    gres = ",".join(f"gpu:{model}:1" for model in gpu_models)
    node_line = f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={int(memory_mb() * 0.8)}"
    node_line += f" Gres={gres}" if gres else ""
    node_line += f" Features={','.join(features)}" if features else ""
    lines = [
        "ClusterName=cifarflowtest",
        f"SlurmctldHost={node}(127.0.0.1)",
        f"SlurmctldPort={daemon_ports[0]}",
        f"SlurmdPort={daemon_ports[1]}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={socket_path}",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",  # --mem is scheduled against RealMemory
        "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        "JobCompType=jobcomp/none",
        "MpiDefault=none",
        "MailProg=/bin/true",
        "ReturnToService=2",
        # Finished jobs stay in squeue this long: the executor's only status source without sacct,
        # and what the tests read of jobs that ran in the background since the session began.
        "MinJobAge=3600",
        *(["GresTypes=gpu"] if gpu_models else []),
        node_line + " State=UNKNOWN",
        *(
            f"PartitionName={name} Nodes={node} Default={'YES' if i == 0 else 'NO'} MaxTime=INFINITE State=UP"
            for i, name in enumerate(partitions)
        ),
    ]
    conf = root / "slurm.conf"
    conf.write_text("\n".join(lines) + "\n")
    # A GPU per model with no device behind it (File=/dev/null): scheduled, never computed on.
    (root / "gres.conf").write_text(
        "".join(f"NodeName={node} Name=gpu Type={model} File=/dev/null\n" for model in gpu_models)
    )
    return conf


def srun_keeping_conf(root: Path, conf: Path) -> Path:
    """A folder with an `srun` that points the real one at this cluster's config.

    Inside a job, snakemake-executor-plugin-slurm-jobstep (0.6.1) clears every SLURM_* variable but
    the job's identity, SLURM_CONF included, before it calls srun. Clusters whose slurm.conf is
    in /etc/slurm (or served configless) do not notice; this one's is in a temp folder, so its srun
    would find no configuration. Everything else about srun is the real thing.
    """
    folder = root / "bin"
    folder.mkdir()
    wrapper = folder / "srun"
    wrapper.write_text(f'#!/bin/sh\nSLURM_CONF={conf} exec {find_binary("srun")} "$@"\n')
    wrapper.chmod(0o755)
    return folder


def stop(process: subprocess.Popen, timeout: float = 20) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


def job_steps_since(started: float) -> list[psutil.Process]:
    """slurmstepd processes created since `started` (they detach from slurmd and drop SLURM_CONF)."""
    found = []
    for proc in psutil.process_iter(["name", "create_time"]):
        if proc.info["name"] == "slurmstepd" and proc.info["create_time"] >= started - 1:
            found.append(proc)
    return found


def is_ours(proc: psutil.Process, root: Path) -> bool:
    """A job step of this cluster holds slurmd's log or a socket in its spool directory (under root)."""
    with contextlib.suppress(psutil.Error):
        paths = [f.path for f in proc.open_files()] + [c.laddr for c in proc.connections(kind="unix")]
        return any(str(path).startswith(f"{root}{os.sep}") for path in paths)
    return False


def stop_job_steps(root: Path, started: float, timeout: float = 15) -> list[int]:
    """Wait for this cluster's job steps (those started since it came up that hold its files) to exit,
    as they do after scancel; kill and return the pids of those still there. Another cluster's are
    left alone and not waited for (the session's cluster runs jobs while tests start their own)."""
    deadline = time.monotonic() + timeout

    def ours() -> list[psutil.Process]:
        return [proc for proc in job_steps_since(started) if is_ours(proc, root)]

    while ours() and time.monotonic() < deadline:
        time.sleep(0.25)
    left = ours()
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    return [proc.pid for proc in left]


NOT_ROOT = "slurmd and slurmctld run as root here (SlurmUser=root); run the Slurm tests as root"


def require_root() -> None:
    """Skip the test unless it runs as root, as conftest.require_system_part skips for a missing
    Debian part; in CI (CI set) not being root fails instead, so that CI cannot pass the Slurm tests
    by skipping them."""
    if os.geteuid() != 0:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(NOT_ROOT)


@contextlib.contextmanager
def slurm_cluster(
    root: Path, partitions: list[str], gpu_models: list[str] = (), features: list[str] = ()
) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd; on exit cancel every job and stop exactly those daemons."""
    require_system_part("slurm")  # Debian's Slurm and munge: tests/setup_system.py
    require_root()
    assert partitions, "a cluster needs at least one partition"
    node = socket.gethostname().split(".")[0]
    cpus = len(os.sched_getaffinity(0))
    # munged insists that every directory above its socket be world-executable (pytest's are 0700).
    socket_dir = Path(tempfile.mkdtemp(prefix="cifarflow-munge-"))
    socket_dir.chmod(0o755)
    conf = root / "slurm.conf"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env["SLURM_CONF"] = str(conf)
    env["PATH"] = os.pathsep.join([str(srun_keeping_conf(root, conf)), env.get("PATH", ""), *SBIN])
    cluster = SlurmCluster(root=root, node=node, cpus=cpus, env=env)
    started = time.time()
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    commands = {
        "munged": [
            find_binary("munged"),
            "--foreground",
            f"--key-file={key}",
            f"--socket={socket_dir / 'munge.socket'}",
            f"--pid-file={root / 'munged.pid'}",
            f"--log-file={root / 'munged.log'}",
            f"--seed-file={root / 'munged.seed'}",
        ],
        "slurmctld": [find_binary("slurmctld"), "-D"],
        "slurmd": [find_binary("slurmd"), "-D", "-N", node],
    }

    def start(name: str) -> None:
        with open(root / f"{name}.out", "w") as out:
            cluster.daemons[name] = subprocess.Popen(
                commands[name], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def start_slurm(daemon_ports: list[int]) -> None:
        """slurmctld and slurmd on these ports; PortTaken (both stopped) when one was taken first."""
        for log in ("slurmctld.log", "slurmd.log"):  # a new try reads only its own logs
            (root / log).unlink(missing_ok=True)
        shape = (partitions, list(gpu_models), list(features))
        write_config(root, socket_dir / "munge.socket", node, cpus, *shape, daemon_ports)
        names = ("slurmctld", "slurmd")
        for name in names:
            start(name)
        try:
            wait_for(cluster.node_idle, "the node to be idle in sinfo", cluster)
            # and each daemon holds its own port: no other process answers in its place
            for name, port in zip(names, daemon_ports, strict=True):
                pid = cluster.daemons[name].pid
                wait_for(lambda pid=pid, port=port: ports.held([port], [pid]), f"{name} on {port}", cluster)
        except (AssertionError, ports.PortTaken) as err:
            for name in reversed(names):
                stop(cluster.daemons.pop(name))
            output = cluster.daemon_logs() + "".join((root / f"{n}.out").read_text() for n in names)
            if isinstance(err, ports.PortTaken):
                raise
            if ports.bind_failed(output):
                raise ports.PortTaken(ports.bind_failure_line(output)) from err
            raise

    try:
        start("munged")
        wait_for(lambda: (socket_dir / "munge.socket").exists(), "munged's socket", cluster)
        ports.start_on_free_ports(start_slurm, 2, what="slurmctld and slurmd")
        yield cluster
    finally:
        if "slurmctld" in cluster.daemons and cluster.daemons["slurmctld"].poll() is None:
            with contextlib.suppress(Exception):  # stopping the daemons below matters more
                cluster.cancel_all()
        for name in reversed(list(cluster.daemons)):
            stop(cluster.daemons[name])
        leftovers = stop_job_steps(root, started)
        shutil.rmtree(socket_dir, ignore_errors=True)
        alive = [name for name, p in cluster.daemons.items() if p.poll() is None]
        assert not alive, f"daemons still running after SIGKILL: {alive}"
        assert not leftovers, f"job steps (slurmstepd) outlived their cluster, killed now: {leftovers}"


def wait_for(condition, what: str, cluster: SlurmCluster, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        dead = [name for name, p in cluster.daemons.items() if p.poll() is not None]
        outs = "\n".join((cluster.root / f"{n}.out").read_text() for n in cluster.daemons)
        if dead:
            raise AssertionError(
                f"{', '.join(dead)} exited while waiting for {what}:\n{outs}\n{cluster.daemon_logs()}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s for {what}:\n{outs}\n{cluster.daemon_logs()}")
        time.sleep(0.2)


# Running the workflow on such a cluster: the flags this cluster needs beside profiles/slurm, and a
# snakemake run in the background.

BIN = Path(sys.executable).parent
# When set, snakemake printed "Job 3 has been submitted with SLURM jobid 7 (log: /abs/....log)."
SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.")


def config_overrides() -> tuple[str, ...]:
    """No pipeline image (the default would be pulled through Apptainer, which is not here); serve
    the model as a plain subprocess where the workflow has serving rules (no container engine is
    needed on the node for that)."""
    overrides = ["container={'image': ''}"]
    schema = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())
    if "engine" in schema["properties"].get("serving", {}).get("properties", {}):
        overrides.append("serving={'engine': 'process'}")
    return ("--config", *overrides)


def slurm_args(cluster: SlurmCluster) -> tuple[str, ...]:
    return (
        "--profile",
        "profiles/slurm",
        "--slurm-status-command",
        "squeue",  # no accounting daemon here, hence no sacct
        "--slurm-no-account",  # no accounts here (plugin 2.8.0 accepts this flag but never reads it)
        "--slurm-init-seconds-before-status-checks",
        "2",  # the first status check after 2 s, not 40
        "--slurm-keep-successful-logs",  # so that the test can read every job's Slurm log
        "--max-threads",
        str(cluster.cpus),  # the node's CPUs; prepare_dataset asks for 4
    )


class SlurmRun(Run):
    """A Run through profiles/slurm: what Slurm made of it."""

    def submitted(self) -> dict[str, Path]:
        """Slurm job id -> its Slurm log, for every job this run submitted."""
        return {job_id: Path(log) for job_id, log in SUBMITTED.findall(self.output)}

    def slurm_run_id(self) -> str:
        (run_id,) = re.findall(r"SLURM run ID: (\S+)", self.output)
        return run_id


SWEEP = ("--configfile", "config/demo.yaml", "config/sweep-demo.yaml")


def profile_cluster(root: Path) -> contextlib.AbstractContextManager[SlurmCluster]:
    """A cluster shaped like profiles/slurm (its partitions, GPU model and node features)."""
    return slurm_cluster(root, **profile_shape(ROOT / "profiles" / "slurm"))


# Train and val label issues from 2 cross-validation folds of 1 epoch each: fold jobs fan out on
# Slurm beside the sweep's trials.
FOLDS = {"audit": {"label_issues": {"folds": 2, "recipe": {"epochs": 1}}}}


def start_sweep(cluster: SlurmCluster, workdir: Path) -> SlurmRun:
    """config/sweep-demo.yaml, with label-issue folds (FOLDS), through profiles/slurm, started and
    not waited for."""
    env = dict(cluster.env, PATH=f"{BIN}{os.pathsep}{cluster.env['PATH']}")
    (workdir / "folds.yaml").write_text(yaml.safe_dump(FOLDS))
    args = (*slurm_args(cluster), *SWEEP, "folds.yaml", *config_overrides())
    return SlurmRun(workdir, "sweep", args, env)


# The demo on Slurm, twice: a run whose training Slurm cancels (it fails), then the rerun, which
# resumes and survives a cancelled export through the profile's retries (tests/test_slurm.py).

DEMO = ("--configfile", "config/demo.yaml")


def cancel_when_running(cluster: SlurmCluster, run: SlurmRun, rule: str, ready=lambda: True) -> str:
    """scancel the Slurm job of `rule` once it runs and `ready()` holds; returns its job id. Its
    deadline allows for the queue: the sweep's jobs may hold the node's CPUs first."""
    deadline = time.monotonic() + 600
    while True:
        ended = run.proc.poll() is not None
        assert not ended, f"snakemake ended before {rule} could be cancelled:\n{run.output[-6000:]}"
        assert time.monotonic() < deadline, f"{rule} never ran: {cluster.jobs()}\n{run.output[-6000:]}"
        running = [
            job_id
            for job_id, job in cluster.jobs().items()
            if job["comment"].startswith(f"rule_{rule}_")
            and job["state"] == "RUNNING"
            and job["name"] == run.slurm_run_id()  # not a job of the sweep running beside it
        ]
        if running and ready():
            cluster.run("scancel", running[0])
            return running[0]
        time.sleep(0.2)


@dataclass
class SlurmRuns:
    workdir: Path
    failed: SlurmRun  # train_model cancelled by Slurm, no retries: the run fails
    rerun: SlurmRun  # the same command with the profile's retries; export_onnx cancelled once
    cancelled_train: str
    cancelled_export: str
    after_failure: dict  # what the failed run left behind, looked at before the rerun


def failed_and_rerun(cluster: SlurmCluster, workdir: Path) -> SlurmRuns:
    """The demo through profiles/slurm: train_model cancelled by Slurm after its first epoch (no
    retries: the run fails, and the rerun shows training resuming mid-way), then the same command
    with the profile's retries, its export_onnx cancelled once. Both waited for."""
    env = dict(cluster.env, PATH=f"{BIN}{os.pathsep}{cluster.env['PATH']}")
    args = (*slurm_args(cluster), *DEMO)
    train_log = workdir / "logs" / "train_model" / "default.log"

    failed = SlurmRun(workdir, "failed", (*args, "--retries", "0", *config_overrides()), env)
    cancelled_train = cancel_when_running(
        cluster,
        failed,
        "train_model",
        lambda: train_log.exists() and "epoch 1/4: train" in train_log.read_text(),
    )
    failed.wait(900)
    metas = list((workdir / "results" / "data").glob("*/meta.json"))
    after_failure = {
        "meta_mtime": metas[0].stat().st_mtime_ns if metas else None,
        "resume": (workdir / "results/train/default/resume.pt").exists(),
        "checkpoint": (workdir / "results/train/default/model.pt").exists(),
    }

    rerun = SlurmRun(workdir, "rerun", (*args, *config_overrides()), env)
    cancelled_export = cancel_when_running(cluster, rerun, "export_onnx")
    rerun.wait(900)
    print(f"on Slurm: failed run {failed.seconds:.1f} s, rerun {rerun.seconds:.1f} s")
    return SlurmRuns(workdir, failed, rerun, cancelled_train, cancelled_export, after_failure)
