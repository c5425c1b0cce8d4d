"""The serving stage through real snakemake: the demo model built into a Podman image, evaluated as
served over the network, gated and registered; rebuild rules; failures leave nothing running."""

import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import psutil
import pytest
import yaml
from cifarflow.audit import clean_mask
from cifarflow.calibration import calibration_metrics
from conftest import copy_run, jobs_run, nothing_to_do, snakemake
from mlflow import MlflowClient
from PIL import Image
from test_serving import port_free

pytestmark = pytest.mark.workflow
EXP = "default"
REGISTRATION = f"results/register/{EXP}/registration.json"


def overlay(wf, name: str, settings: dict) -> str:
    """A config overlay file (--config would pass nested numbers as strings)."""
    (wf / name).write_text(yaml.safe_dump(settings))
    return name


def read_json(path):
    return json.loads(path.read_text())


def no_eval_containers() -> list[str]:
    names = subprocess.run(["podman", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True)
    return [n for n in names.stdout.split() if n.startswith("cifarflow-eval-")]


def podman_manifest(wf) -> dict:
    """The image's manifest; rebuilt when an earlier test switched to the process engine."""
    manifest = read_json(wf / f"results/image/{EXP}/manifest.json")
    if manifest["engine"] != "podman":
        snakemake(wf, f"results/image/{EXP}/manifest.json", "--configfile", "config/demo.yaml", "local.yaml")
        manifest = read_json(wf / f"results/image/{EXP}/manifest.json")
    return manifest


def ports_in(server_log: str) -> list[int]:
    return [int(p) for p in re.findall(r"(?:HTTP|gRPC) :(\d+)", server_log)]


@pytest.fixture(scope="module")
def served(tmp_path_factory, podman, demo_run):
    """The demo model (a copy of the session's demo run, trained and exported) served, evaluated and
    registered."""
    wf = copy_run(demo_run, tmp_path_factory.mktemp("serve") / "wf")
    (wf / "local.yaml").write_text(yaml.safe_dump({"serving": podman}))
    proc = snakemake(wf, REGISTRATION, "--configfile", "config/demo.yaml", "local.yaml", timeout=1500)
    return wf, proc


def test_the_demo_model_is_built_into_a_podman_image_with_its_provenance(served):
    wf, proc = served
    manifest = read_json(wf / f"results/image/{EXP}/manifest.json")
    assert manifest["engine"] == "podman" and manifest["engine_requested"] == "auto"
    assert "auto took podman" in (wf / f"logs/build_serving_image/{EXP}.log").read_text()
    assert manifest["model_name"] == "cifar10" and manifest["build_seconds"] > 0
    from cifarflow.runtime import sha256_file

    assert manifest["model_sha256"] == sha256_file(wf / f"results/export/{EXP}/model.onnx")
    assert manifest["image"].endswith(f":{EXP}-{manifest['model_sha256'][:12]}")
    inspect = json.loads(
        subprocess.run(
            ["podman", "image", "inspect", manifest["image"]], capture_output=True, text=True, check=True
        ).stdout
    )[0]
    labels = inspect["Config"]["Labels"]
    assert labels["io.cifarflow.model.sha256"] == manifest["model_sha256"]
    assert labels["io.cifarflow.dataset.id"] == manifest["dataset_id"]
    assert "org.opencontainers.image.revision" in labels
    assert inspect["Config"]["User"] not in ("", "0", "root")
    assert inspect["Id"].startswith(manifest["image_id"].removeprefix("sha256:"))
    assert manifest["image_size_bytes"] == inspect["Size"]
    history = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{json .Config.Healthcheck}}", manifest["image"]],
        capture_output=True,
        text=True,
    ).stdout
    assert "health/ready" in history
    python = subprocess.run(
        [
            "podman",
            "run",
            "--rm",
            "--entrypoint",
            "/opt/venv/bin/python",
            manifest["image"],
            "-c",
            "import importlib.util as u; print(u.find_spec('torch') is None)",
        ],
        capture_output=True,
        text=True,
    )
    assert python.stdout.strip() == "True", python.stderr  # serving dependencies only


def test_the_served_model_matches_offline_onnx_runtime_and_its_figures_are_complete(served):
    wf, _ = served
    metrics = read_json(wf / f"results/evaluate/{EXP}/metrics.json")
    assert metrics["mismatches"] == 0 and metrics["max_probability_diff"] <= 1e-5
    assert metrics["accuracy"] >= 0.9  # config/demo.yaml's gate
    meta = read_json(next((wf / "results/data").glob("*/meta.json")))
    for name in meta["class_names"]:
        assert 0 <= metrics[f"precision_{name}"] <= 1 and 0 <= metrics[f"recall_{name}"] <= 1
    for key in (
        "macro_f1",
        "latency_ms_p50",
        "latency_ms_p95",
        "latency_ms_p99",
        "throughput_images_per_second",
        "inprocess_images_per_second",
        "throughput_ratio",
    ):
        assert metrics[key] > 0, key
    assert metrics["latency_ms_p50"] <= metrics["latency_ms_p95"] <= metrics["latency_ms_p99"]
    table = pd.read_parquet(wf / f"results/evaluate/{EXP}/predictions.parquet")
    assert list(table.columns) == ["index", "label", "predicted", "probabilities"]
    probabilities = np.stack(table["probabilities"].to_numpy())
    assert len(table) == metrics["images"] == probabilities.shape[0] and probabilities.shape[1] == 10
    assert (probabilities.argmax(1) == table["predicted"]).all()
    assert (table["predicted"] == table["label"]).mean() == pytest.approx(metrics["accuracy"])
    # calibration of the served probabilities: ECE, NLL, Brier (cifarflow.calibration's definitions)
    calibration = calibration_metrics(probabilities, table["label"].to_numpy())
    assert {key: metrics[key] for key in calibration} == calibration and 0 <= metrics["ece"] <= 1
    labels = np.load(next((wf / "results/data").glob("*/test_labels.npy")))
    assert (table["label"].to_numpy() == labels).all()
    for png in ("confusion_matrix.png", "latency_histogram.png"):
        with Image.open(wf / f"results/evaluate/{EXP}/{png}") as image:
            assert image.format == "PNG" and min(image.size) > 300
    # suspected label errors of the test split (confident learning on the served probabilities)
    issues = pd.read_parquet(wf / f"results/evaluate/{EXP}/label_issues.parquet")
    columns = ["split", "index", "file", "given_label", "suggested_label", "self_confidence", "rank"]
    assert list(issues.columns) == columns
    assert metrics["test_label_issue_count"] == len(issues)
    assert metrics["test_label_issue_fraction"] == pytest.approx(len(issues) / metrics["images"], abs=1e-6)
    rows = issues["index"].to_numpy()
    assert (issues["split"] == "test").all() and issues["file"].isna().all()  # no file names kept
    assert (issues["given_label"].to_numpy() == labels[rows]).all()
    assert (issues["suggested_label"].to_numpy() == table["predicted"].to_numpy()[rows]).all()
    assert issues["rank"].tolist() == list(range(1, len(issues) + 1))
    given = probabilities[rows, labels[rows]].astype(np.float64)  # the served probability of the label
    assert (issues["self_confidence"].to_numpy() == given).all()
    # the accuracies without them, without the near-duplicates (clean_accuracy), without both
    correct = (table["predicted"] == table["label"]).to_numpy()
    plausible = np.ones(len(table), dtype=bool)
    plausible[rows] = False
    clean = clean_mask(pd.read_parquet(next((wf / "results/audit").glob("*/duplicates.parquet"))), len(table))
    for key, kept in (
        ("label_issues", plausible),
        ("duplicates", clean),
        ("both", plausible & clean),
    ):
        accuracy = metrics["clean_accuracy"] if key == "duplicates" else metrics[f"accuracy_without_{key}"]
        images = metrics["clean_images"] if key == "duplicates" else metrics[f"images_without_{key}"]
        assert images == kept.sum() and 0 <= accuracy <= 1, key
        assert accuracy == pytest.approx(correct[kept].mean(), abs=1e-6), key
    assert metrics["accuracy_without_label_issues"] >= metrics["accuracy"]  # every suspect is a wrong answer
    with Image.open(wf / f"results/evaluate/{EXP}/label_issues.png") as image:
        assert image.format == "PNG" and min(image.size) > 150  # the empty panel when there are none


def test_the_server_was_stopped_and_its_ports_freed(served):
    wf, _ = served
    server_log = (wf / f"logs/evaluate_served_model/{EXP}.server.log").read_text()
    ports = ports_in(server_log)
    assert len(ports) == 2 and all(port_free(p) for p in ports)
    assert no_eval_containers() == []


def test_the_model_is_registered_with_signature_tags_and_the_champion_alias(served):
    wf, _ = served
    record = read_json(wf / REGISTRATION)
    assert record["champion"] is True and record["version"] == record["champion_version"] == 1
    mlflow.set_tracking_uri(f"sqlite:///{wf / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{wf / 'mlflow.db'}")  # an earlier test may have set another
    client = MlflowClient()
    version = client.get_model_version_by_alias(record["name"], "champion")
    manifest = read_json(wf / f"results/image/{EXP}/manifest.json")
    assert str(version.version) == "1"
    assert version.tags["image"] == manifest["image"]
    assert version.tags["dataset_id"] == manifest["dataset_id"]
    assert float(version.tags["accuracy"]) == pytest.approx(
        read_json(wf / f"results/evaluate/{EXP}/metrics.json")["accuracy"]
    )
    info = mlflow.models.get_model_info(f"models:/{record['name']}/1")
    inputs = info.signature.inputs.inputs[0]
    assert inputs.name == "image" and inputs.type == np.dtype(np.uint8) and inputs.shape == (-1, 32, 32, 3)
    assert "onnx" in info.flavors
    # the first version takes the alias, and stores what the next challenger's paired test reads:
    # export_onnx's validation predictions, byte for byte
    assert version.tags["champion.decision"] == "first" and record["champion_decision"]["outcome"] == "first"
    assert float(version.tags["val_ece"]) == pytest.approx(
        read_json(wf / f"results/export/{EXP}/metrics.json")["val_ece"], abs=1e-6
    )
    stored = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{record['name']}/1/val_predictions.npz",
        tracking_uri=f"sqlite:///{wf / 'mlflow.db'}",
    )
    assert Path(stored).read_bytes() == (wf / f"results/export/{EXP}/val_predictions.npz").read_bytes()
    # and the hook logged the evaluation as a child run of the invocation
    runs = mlflow.search_runs(
        experiment_names=["cifar10"], filter_string="tags.`snakemake.rule` = 'evaluate_served_model'"
    )
    assert len(runs) == 1 and runs["metrics.accuracy"][0] == pytest.approx(record["accuracy"])
    evaluation = read_json(wf / f"results/evaluate/{EXP}/metrics.json")
    for key in ("test_label_issue_count", "test_label_issue_fraction", "accuracy_without_both"):
        assert runs[f"metrics.{key}"][0] == pytest.approx(evaluation[key]), key


def test_the_model_card_names_the_image_and_is_a_file_of_the_registered_version(served):
    wf, _ = served
    record = read_json(wf / REGISTRATION)
    card = (wf / f"results/register/{EXP}/model_card.md").read_text()
    manifest = read_json(wf / f"results/image/{EXP}/manifest.json")
    assert "| engine | podman |" in card and f"| image | `{manifest['image']}` |" in card
    assert f"| image id | `{manifest['image_id']}` |" in card
    assert "| served = offline ONNX Runtime, every test image | yes |" in card
    evaluation = read_json(wf / f"results/evaluate/{EXP}/metrics.json")
    count, share = evaluation["test_label_issue_count"], evaluation["test_label_issue_fraction"]
    assert f"| suspected label errors in the test split | {count} ({share * 100:.2f}%) |" in card
    without = f"{evaluation['accuracy_without_both'] * 100:.2f}% on {evaluation['images_without_both']:,}"
    assert f"| test accuracy without both | {without} images |" in card
    store = f"sqlite:///{wf / 'mlflow.db'}"
    # models:/ resolves through the registry, whose client opens the tracking store too: both set,
    # or MLflow creates its default ./mlflow.db in the checkout (both reset after the test)
    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)
    stored = mlflow.artifacts.download_artifacts(artifact_uri=record["model_card"], tracking_uri=store)
    assert Path(stored).read_text() == card
    page = (wf / f"results/register/{EXP}/model_card.html").read_text()
    assert "<h2>How it was served and proven</h2>" in page and manifest["image_id"] in page
    assert (
        "## Champion decision" in card and "This version holds `champion` (first): no 'champion' yet" in card
    )


def test_nothing_reruns_and_only_a_serving_change_rebuilds_the_image(served):
    wf, _ = served
    base = [REGISTRATION, "--configfile", "config/demo.yaml", "local.yaml"]
    assert nothing_to_do(snakemake(wf, "-n", *base))
    # an evaluation setting re-evaluates and re-registers, without rebuilding
    changed = jobs_run(
        snakemake(wf, "-n", *base, overlay(wf, "fewer.yaml", {"evaluate": {"latency_requests": 50}}))
    )
    assert changed == {"evaluate_served_model": 1, "register_model": 1}
    # a change to the serving code rebuilds (and so re-evaluates), never retrains or re-exports
    serving = wf / "scripts" / "cifarflow" / "serving" / "server.py"
    serving.write_text(serving.read_text() + "\n# a change\n")
    rebuilt = jobs_run(snakemake(wf, "-n", *base))
    assert rebuilt == {"build_serving_image": 1, "evaluate_served_model": 1, "register_model": 1}


def test_below_the_gate_the_rule_fails_with_the_figures_registers_nothing_and_leaves_nothing_running(served):
    wf, _ = served
    (wf / REGISTRATION).unlink()
    proc = snakemake(
        wf,
        REGISTRATION,
        "--configfile",
        "config/demo.yaml",
        "local.yaml",
        overlay(wf, "gate.yaml", {"evaluate": {"min_accuracy": 1.0}}),
        check=False,
    )
    assert proc.returncode != 0
    log = (wf / f"logs/evaluate_served_model/{EXP}.log").read_text()
    assert "quality gate: accuracy as served is 0.9" in log and "below evaluate.min_accuracy 1.0" in log
    assert not (wf / REGISTRATION).exists()
    assert not (wf / f"results/evaluate/{EXP}/metrics.json").exists()
    assert no_eval_containers() == []
    ports = ports_in((wf / f"logs/evaluate_served_model/{EXP}.server.log").read_text())
    assert ports and all(port_free(p) for p in ports)


def test_an_explicit_engine_that_is_missing_fails_with_the_fix(served):
    wf, _ = served
    proc = snakemake(
        wf,
        REGISTRATION,
        "--forcerun",
        "build_serving_image",
        "--configfile",
        "config/demo.yaml",
        "local.yaml",
        overlay(wf, "apptainer.yaml", {"serving": {"engine": "apptainer"}}),
        check=False,
    )
    assert proc.returncode != 0
    log = (wf / f"logs/build_serving_image/{EXP}.log").read_text()
    assert "serving.engine is 'apptainer', but it cannot be used here" in log
    assert "set serving.engine to auto" in log


def test_the_process_engine_serves_the_same_code_without_a_container(served):
    wf, _ = served
    snakemake(
        wf,
        REGISTRATION,
        "--configfile",
        "config/demo.yaml",
        "local.yaml",
        overlay(wf, "process.yaml", {"serving": {"engine": "process"}}),
    )
    manifest = read_json(wf / f"results/image/{EXP}/manifest.json")
    assert manifest["engine"] == "process" and manifest["image"] == f"results/export/{EXP}/model.onnx"
    metrics = read_json(wf / f"results/evaluate/{EXP}/metrics.json")
    assert metrics["mismatches"] == 0
    # the same model as in the image, so the registry finds its version instead of adding one
    assert read_json(wf / REGISTRATION)["version"] == 1


def test_sigterm_during_evaluation_stops_the_server_and_writes_nothing(served, tmp_path):
    wf, _ = served
    manifest = tmp_path / "manifest.json"
    manifest.write_text(
        json.dumps(
            {"engine": "process", "image": f"results/export/{EXP}/model.onnx", "model_name": "cifar10"}
        )
    )
    settings = {
        "serving": {"threads": 1, "max_request_mb": 64, "host": "127.0.0.1", "network": "private"},
        "evaluate": {
            "batch_size": 64,
            "concurrency": 1,
            "latency_requests": 10**6,
            "ready_timeout_s": 60,
            "min_accuracy": 0.0,
            "max_probability_diff": 1e-5,
        },
    }
    log, server_log, out = tmp_path / "eval.log", tmp_path / "server.log", tmp_path / "out"
    data = next((wf / "results/data").glob("*/meta.json")).parent
    proc = subprocess.Popen(
        [
            sys.executable,
            "scripts/evaluate_served_model.py",
            "--manifest",
            str(manifest),
            "--model",
            f"results/export/{EXP}/model.onnx",
            "--data",
            str(data),
            "--experiment",
            EXP,
            "--settings",
            json.dumps(settings),
            "--outdir",
            str(out),
            "--duplicates",
            str(next((wf / "results/audit").glob("*/duplicates.parquet"))),
            "--server-log",
            str(server_log),
            "--log",
            str(log),
        ],
        cwd=wf,
        env=dict(os.environ, PYTHONPATH=str(wf / "scripts")),
    )
    deadline = time.monotonic() + 90
    while "latency:" not in (log.read_text() if log.exists() else ""):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text() if log.exists() else ""
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) != 0
    assert "server stopped" in log.read_text()
    ports = ports_in(server_log.read_text())
    assert ports and all(port_free(p) for p in ports)
    assert not out.exists() or not any(out.iterdir())


def test_tritonclient_speaks_rest_json_rest_binary_and_grpc_to_the_container(served, tmp_path):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from cifarflow.engines import ServerSpec, running

    wf, _ = served
    manifest = podman_manifest(wf)
    images = np.load(next((wf / "results/data").glob("*/test_images.npy")))[:8]
    spec = ServerSpec(
        engine="podman",
        image=manifest["image"],
        name="cifarflow-eval-tritonclient",
        model_name="cifar10",
        threads=1,
        max_request_mb=8,
    )
    with running(spec, log_file=tmp_path / "server.log", ready_timeout_s=60) as server:
        rest = httpclient.InferenceServerClient(server.url)
        assert rest.get_model_metadata("cifar10")["inputs"][0]["datatype"] == "UINT8"
        answers = []
        for binary in (False, True):
            tensor = httpclient.InferInput("image", list(images.shape), "UINT8")
            tensor.set_data_from_numpy(images, binary_data=binary)
            wanted = [httpclient.InferRequestedOutput("probabilities", binary_data=binary)]
            answers.append(rest.infer("cifar10", [tensor], outputs=wanted).as_numpy("probabilities"))
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        tensor = grpcclient.InferInput("image", list(images.shape), "UINT8")
        tensor.set_data_from_numpy(images)
        answers.append(grpc.infer("cifar10", [tensor]).as_numpy("probabilities"))
        ports = [server.http_port, server.grpc_port]
    np.testing.assert_allclose(answers[0], answers[2], atol=1e-6)  # JSON carries decimal floats
    np.testing.assert_array_equal(answers[1], answers[2])
    assert all(port_free(p) for p in ports) and no_eval_containers() == []


def listening_in_namespace_of(pid: int) -> set[tuple[str, int]]:
    """(address, port) of the TCP sockets listening in the network namespace of `pid` (/proc/<pid>/net)."""
    found = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)  # 32-bit words in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.add((socket.inet_ntop(family, raw), int(port, 16)))
    return found


def loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback


@pytest.mark.parametrize("network", ["private", "host"])
def test_the_container_is_reachable_on_loopback_only_in_both_network_modes(served, tmp_path, network):
    """serving.network private: the server listens on 0.0.0.0 in the container's own namespace and
    Podman publishes its ports on 127.0.0.1 only; host: the server itself listens on 127.0.0.1."""
    import tritonclient.grpc as grpcclient
    from cifarflow.engines import ServerSpec, running

    wf, _ = served
    spec = ServerSpec(
        engine="podman",
        image=podman_manifest(wf)["image"],
        name=f"cifarflow-eval-{network}-network",
        model_name="cifar10",
        threads=1,
        max_request_mb=8,
        network=network,
    )
    with running(spec, log_file=tmp_path / "server.log", ready_timeout_s=60) as server:
        ours = {server.http_port, server.grpc_port}
        on_host = {
            (c.laddr.ip, c.laddr.port)
            for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port in ours
        }
        inside = {(ip, port) for ip, port in listening_in_namespace_of(server.pid) if port in ours}
        mode = subprocess.run(
            ["podman", "inspect", "--format", "{{.HostConfig.NetworkMode}}", spec.name],
            capture_output=True,
            text=True,
        ).stdout.strip()
        client = grpcclient.InferenceServerClient(server.grpc_url)
        assert client.is_server_ready() and client.is_model_ready("cifar10")  # gRPC through it too
        client.close()
    assert mode == ("bridge" if network == "private" else "host")
    assert {port for _, port in on_host} == ours
    assert all(loopback(ip) for ip, _ in on_host), on_host
    if network == "private":  # all addresses of its own namespace, which only the published ports reach
        assert {port for _, port in inside} == ours, inside
        assert all(ipaddress.ip_address(ip).is_unspecified for ip, _ in inside), inside  # 0.0.0.0 or ::
    else:
        assert inside == on_host
    assert all(port_free(p) for p in ours) and no_eval_containers() == []
