"""The model server as a real process on loopback: the protocol through an independent client
(tritonclient: REST JSON, REST binary, gRPC), the human image path, bad requests, load, shutdown."""

import ast
import io
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import psutil
import pytest
import schemathesis
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from cifarflow import ports
from cifarflow.dataset import load_meta, load_split
from cifarflow.engines import assemble_context
from cifarflow.export import export
from cifarflow.layout import SCRIPTS, SERVE, SERVING_PACKAGE
from cifarflow.training import train
from conftest import ROOT
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis import GenerationMode
from test_export import SETTINGS
from test_training import base_recipe, tiny_data  # noqa: F401  (fixture)
from tritonclient.utils import InferenceServerException

NAME = "tiny"
MAX_MB = 1


@pytest.fixture(scope="module")
def model(tiny_data, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("model")
    train(tiny_data, base_recipe(epochs=1), out, threads=2)
    export(out / "model.pt", tiny_data, out / "model.onnx", SETTINGS, threads=2)
    return out / "model.onnx"


def start_server(model, *extra: str, env: dict | None = None, host: str = "127.0.0.1"):
    """scripts/serve.py on free ports; its output goes to a file (a pipe nobody reads would block it).

    Returns (process, HTTP port, gRPC port) once /v2/health/ready answers on `host`.
    """
    http_port, grpc_port = ports.pick(2)
    log = model.parent / f"server-{http_port}.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "scripts" / "serve.py"),
            "--model",
            str(model),
            "--name",
            NAME,
            "--port",
            str(http_port),
            "--grpc-port",
            str(grpc_port),
            "--threads",
            "1",
            *extra,
        ],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    url_host = f"[{host}]" if ":" in host else host
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(f"http://{url_host}:{http_port}/v2/health/ready", timeout=1):
                return proc, http_port, grpc_port
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("server not ready in 60 s")


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(model):
    proc, http_port, grpc_port = start_server(model, "--max-request-mb", str(MAX_MB))
    yield proc, http_port, grpc_port
    stop(proc)


@pytest.fixture(scope="module")
def test_images(tiny_data):  # noqa: F811
    split = load_split(tiny_data, "test", mmap=False)
    return split.images[:16], split.labels[:16]


def offline(model, images):
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"image": images})[0]


def request(port: int, path: str, body: bytes | None = None, headers=None) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket the process listens on; gRPC's IPv4-mapped IPv6 sockets
    (::ffff:127.0.0.1) are written as the IPv4 address they are."""
    process = psutil.Process(pid)
    connections = getattr(process, "net_connections", process.connections)("tcp")
    found = set()
    for c in connections:
        if c.status == psutil.CONN_LISTEN:
            address = ipaddress.ip_address(c.laddr.ip)
            found.add((str(getattr(address, "ipv4_mapped", None) or address), c.laddr.port))
    return found


def test_both_protocols_listen_on_loopback_only_by_default(server):
    """No --host, no CIFARFLOW_HOST: an inference server on a shared node is not reachable from others."""
    proc, http_port, grpc_port = server
    assert listening(proc.pid) == {("127.0.0.1", http_port), ("127.0.0.1", grpc_port)}


def test_the_bind_address_is_a_setting_for_both_protocols(model):
    """CIFARFLOW_HOST (as the images set it) moves REST and gRPC together, here to IPv6 loopback."""
    proc, http_port, grpc_port = start_server(model, env={"CIFARFLOW_HOST": "::1"}, host="::1")
    try:
        assert listening(proc.pid) == {("::1", http_port), ("::1", grpc_port)}
        assert grpcclient.InferenceServerClient(f"[::1]:{grpc_port}").is_server_ready()
        assert port_free(http_port) and port_free(grpc_port)  # nothing on 127.0.0.1
    finally:
        stop(proc)


def test_health_and_metadata_over_rest_and_grpc(server, tiny_data):  # noqa: F811
    _, http_port, grpc_port = server
    rest = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
    assert rest.is_server_live() and rest.is_server_ready() and rest.is_model_ready(NAME)
    meta = rest.get_model_metadata(NAME)
    assert meta["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}]
    assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == [
        ("logits", "FP32", [-1, 10]),
        ("probabilities", "FP32", [-1, 10]),
    ]
    assert meta["class_names"] == load_meta(tiny_data)["class_names"]
    assert meta["parameters"]["dataset_id"] == "synthetic-tiny"
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    assert grpc.is_server_ready()
    gmeta = grpc.get_model_metadata(NAME, as_json=True)
    assert gmeta["inputs"][0]["datatype"] == "UINT8" and gmeta["inputs"][0]["shape"] == [
        "-1",
        "32",
        "32",
        "3",
    ]


@pytest.mark.parametrize("binary", [False, True], ids=["rest-json", "rest-binary"])
def test_tritonclient_rest_infers_what_offline_onnx_runtime_computes(server, model, test_images, binary):
    _, http_port, _ = server
    images, _ = test_images
    client = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
    tensor = httpclient.InferInput("image", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images, binary_data=binary)
    wanted = [httpclient.InferRequestedOutput("probabilities", binary_data=binary)]
    result = client.infer(NAME, [tensor], outputs=wanted)
    np.testing.assert_allclose(result.as_numpy("probabilities"), offline(model, images), atol=1e-6)


def test_tritonclient_grpc_infers_what_offline_onnx_runtime_computes(server, model, test_images):
    _, _, grpc_port = server
    images, _ = test_images
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    tensor = grpcclient.InferInput("image", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)
    result = client.infer(NAME, [tensor])
    np.testing.assert_array_equal(result.as_numpy("probabilities"), offline(model, images))
    assert result.as_numpy("logits").shape == (len(images), 10)


def _json_infer(datatype="UINT8", shape=(1, 32, 32, 3), data=None) -> bytes:
    data = [0] * int(np.prod(shape)) if data is None else data
    return json.dumps(
        {"inputs": [{"name": "image", "datatype": datatype, "shape": list(shape), "data": data}]}
    ).encode()


JSON = {"Content-Type": "application/json"}
BAD_REQUESTS = {
    "wrong dtype": (_json_infer("FP32"), JSON, 400, "must be UINT8"),
    "wrong shape": (_json_infer(shape=(1, 28, 28, 1)), JSON, 400, "must have shape [N, 32, 32, 3]"),
    "data does not match shape": (_json_infer(data=[1, 2, 3]), JSON, 400, "does not match shape"),
    "pixel out of range": (_json_infer(data=[300] * 3072), JSON, 400, "does not match shape"),
    "malformed json": (b'{"inputs": [{"name": "im', JSON, 422, "JSON decode error"),
    "binary framing: JSON length cuts the header": (
        _json_infer(),
        {"Inference-Header-Content-Length": "20"},
        400,
        "Unrecognized request format",
    ),
    "binary framing: too few bytes for the shape": (
        b'{"inputs":[{"name":"image","datatype":"UINT8","shape":[1,32,32,3],"parameters":{"binary_data_size":3072}}]}'
        + bytes(100),
        {"Inference-Header-Content-Length": "107"},
        400,
        "malformed inference request",
    ),
    "body over the size limit": (bytes(MAX_MB * 2**20 + 1), {}, 413, "over the server's limit"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_bad_requests_get_a_4xx_with_a_message_and_the_server_keeps_serving(server, case):
    _, http_port, _ = server
    body, headers, status, message = BAD_REQUESTS[case]
    code, answer = request(http_port, f"/v2/models/{NAME}/infer", body, headers)
    assert code == status, answer
    assert message in json.dumps(answer), answer
    assert request(http_port, "/v2/health/ready") == (200, {"ready": True})


def test_grpc_bad_request_is_invalid_argument(server):
    _, _, grpc_port = server
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    tensor = grpcclient.InferInput("image", [2, 16, 16, 3], "UINT8")
    tensor.set_data_from_numpy(np.zeros((2, 16, 16, 3), np.uint8))
    with pytest.raises(InferenceServerException, match="must have shape") as err:
        client.infer(NAME, [tensor])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"


def _png(size, colour=(200, 30, 30), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _undecodable(png: bytes) -> bytes:
    """The same PNG header (Image.open reads the size from it) over pixel data that cannot be decoded."""
    start = png.index(b"IDAT")
    length = int.from_bytes(png[start - 4 : start], "big")
    return png[: start + 4] + b"\xff" * length + png[start + 4 + length :]


def test_a_person_posts_an_image_file_and_gets_the_top_classes(server, model, tiny_data):  # noqa: F811
    _, http_port, _ = server
    classes = load_meta(tiny_data)["class_names"]
    code, answer = request(
        http_port, f"/v2/models/{NAME}/classify?top_k=3", _png((32, 32)), {"Content-Type": "image/png"}
    )
    assert code == 200 and answer["resized"] is False and len(answer["predictions"]) == 3
    expected = offline(model, np.full((1, 32, 32, 3), (200, 30, 30), np.uint8))[0]
    top = answer["predictions"][0]
    assert top["class"] == classes[int(expected.argmax())]
    assert top["probability"] == pytest.approx(float(expected.max()), abs=1e-6)
    probabilities = [p["probability"] for p in answer["predictions"]]
    assert probabilities == sorted(probabilities, reverse=True)

    boundary = "cifarflowboundary"
    form = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="cat.jpg"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + _png((64, 48))
        + f"\r\n--{boundary}--\r\n".encode()
    )
    code, answer = request(
        http_port,
        f"/v2/models/{NAME}/classify",
        form,
        {"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert code == 200 and answer["resized"] is True and answer["original_size"] == [64, 48]
    assert "resized from 64x48 to 32x32" in answer["note"]


def test_a_file_that_is_not_an_image_gets_415_and_the_server_keeps_serving(server):
    _, http_port, _ = server
    code, answer = request(http_port, f"/v2/models/{NAME}/classify", b"%PDF-1.4 not an image")
    assert code == 415 and "not an image" in answer["detail"]
    code, answer = request(http_port, "/v2/models/nope/classify", _png((32, 32)))
    assert code == 404 and "nope" in answer["error"]
    assert request(http_port, "/v2/health/ready") == (200, {"ready": True})


def test_an_image_over_the_pixel_limit_gets_413_from_its_header_before_it_is_decoded(server):
    """5000x5000 = 25 Mpixel: over the 4096x4096 default, under twice it (Pillow's own guard with that
    limit only warned, then decoded). Undecodable pixel data under the same header still gets 413:
    the size was refused before decoding, which would have failed (415, as it does for a small one)."""
    _, http_port, _ = server
    big = _png((5000, 5000), 1, mode="1")  # a few KB: one colour compresses to nearly nothing
    for body in (big, _undecodable(big)):
        code, answer = request(http_port, f"/v2/models/{NAME}/classify", body)
        assert code == 413, answer
        assert "is 5000x5000 = 25,000,000 pixels, over the limit of 16,777,216 pixels" in answer["detail"]
        assert "--max-image-pixels" in answer["detail"]
    code, answer = request(http_port, f"/v2/models/{NAME}/classify", _undecodable(_png((64, 48))))
    assert code == 415 and "not an image this server can decode" in answer["detail"]
    assert request(http_port, "/v2/health/ready") == (200, {"ready": True})


def test_the_pixel_limit_is_a_setting_of_the_server(model):
    """CIFARFLOW_MAX_IMAGE_PIXELS (or --max-image-pixels), not a side effect of importing a module."""
    proc, http_port, _ = start_server(model, env={"CIFARFLOW_MAX_IMAGE_PIXELS": "3000"})
    try:
        code, answer = request(http_port, f"/v2/models/{NAME}/classify", _png((64, 48)))
        assert code == 413 and "64x48 = 3,072 pixels, over the limit of 3,000 pixels" in answer["detail"]
        code, answer = request(http_port, f"/v2/models/{NAME}/classify", _png((50, 60)))
        assert code == 200 and answer["original_size"] == [50, 60]
    finally:
        stop(proc)
    cmd = [sys.executable, str(ROOT / "scripts" / "serve.py"), "--model", str(model)]
    run = subprocess.run([*cmd, "--max-image-pixels", "0"], capture_output=True, text=True)
    assert run.returncode == 2 and "--max-image-pixels 0 must lie in 1..89478485" in run.stderr


def _infer_works(http_port: int, grpc_port: int, images) -> bool:
    rest = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
    tensor = httpclient.InferInput("image", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    gtensor = grpcclient.InferInput("image", list(images.shape), "UINT8")
    gtensor.set_data_from_numpy(images)
    return all(
        r.as_numpy("probabilities").shape == (len(images), 10)
        for r in (rest.infer(NAME, [tensor]), grpc.infer(NAME, [gtensor]))
    )


def test_nobody_can_take_the_model_down_the_repository_extension_is_off(server, test_images):
    """KServe's unauthenticated load/unload would let anyone who reaches the port unload the model."""
    _, http_port, grpc_port = server
    images, _ = test_images
    for action in ("unload", "load"):
        code, answer = request(http_port, f"/v2/repository/models/{NAME}/{action}", b"", JSON)
        assert code == 404, (action, code, answer)
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    for call in (grpc.unload_model, grpc.load_model):
        with pytest.raises(InferenceServerException, match="not served over gRPC") as err:
            call(NAME)
        assert err.value.status() == "StatusCode.UNIMPLEMENTED"
    code, answer = request(http_port, f"/v2/repository/models/{NAME}/unload", b"", JSON)
    assert "--model-repository on" in answer["detail"]
    assert request(http_port, "/v2")[1]["extensions"] == []  # not advertised either
    assert grpc.get_server_metadata(as_json=True).get("extensions", []) == []
    assert request(http_port, "/v2/health/ready") == (200, {"ready": True})
    assert _infer_works(http_port, grpc_port, images)


def test_with_the_repository_extension_on_readiness_follows_the_model(model, test_images):
    """Opt-in (--model-repository on, REST): unload takes the model down and the server says so on
    both protocols (a load balancer stops sending); load brings it back."""
    proc, http_port, grpc_port = start_server(model, "--model-repository", "on")
    images, _ = test_images
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    try:
        assert request(http_port, "/v2")[1]["extensions"] == ["model_repository_extension"]
        assert request(http_port, f"/v2/repository/models/{NAME}/unload", b"", JSON)[0] == 200
        code, answer = request(http_port, "/v2/health/ready")
        assert code == 503 and "not ready" in answer["error"], answer
        assert not grpc.is_server_ready()
        assert request(http_port, f"/v2/models/{NAME}/classify", _png((32, 32)))[0] in (404, 503)
        assert request(http_port, f"/v2/repository/models/{NAME}/load", b"", JSON)[0] == 200
        assert request(http_port, "/v2/health/ready") == (200, {"ready": True}) and grpc.is_server_ready()
        assert _infer_works(http_port, grpc_port, images)
    finally:
        stop(proc)


def test_load_many_concurrent_clients_no_errors_bounded_memory(server, test_images):
    """A bounded version of the benchmark's load phase (bench/serve_speed.py runs 32 clients for 20 s)."""
    proc, _, grpc_port = server
    images, _ = test_images
    rss_before = psutil.Process(proc.pid).memory_info().rss

    def client_loop(seed: int) -> tuple[int, int]:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        done = errors = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            batch = images[seed % 4 : seed % 4 + 4]
            tensor = grpcclient.InferInput("image", list(batch.shape), "UINT8")
            tensor.set_data_from_numpy(batch)
            try:
                client.infer(NAME, [tensor])
                done += 1
            except InferenceServerException:
                errors += 1
        client.close()
        return done, errors

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(client_loop, range(16)))
    assert sum(e for _, e in results) == 0
    assert all(done > 0 for done, _ in results)
    growth = psutil.Process(proc.pid).memory_info().rss - rss_before
    assert growth < 200 * 2**20, f"server RSS grew by {growth / 2**20:.0f} MiB under load"


def test_sigterm_stops_the_server_and_frees_both_ports(model):
    proc, http_port, grpc_port = start_server(model)
    stop(proc)
    assert proc.returncode is not None
    assert port_free(http_port) and port_free(grpc_port)


def test_a_second_server_on_a_taken_grpc_port_fails_instead_of_sharing_it(server, model):
    """KServe's own gRPC server binds with SO_REUSEPORT: a second one on the same port started without
    an error and took part of the first one's requests. Ours does not share its port."""
    first, _, grpc_port = server
    http_port = ports.pick(1)[0]
    cmd = [sys.executable, str(ROOT / "scripts" / "serve.py"), "--model", str(model), "--name", NAME]
    cmd += ["--port", str(http_port), "--grpc-port", str(grpc_port), "--threads", "1"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and ports.bind_failed(run.stdout + run.stderr), run.stdout + run.stderr
    assert port_free(http_port)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    assert client.is_model_ready(NAME)  # the first server still has its port to itself
    assert ports.listeners(grpc_port) == {first.pid}


def test_a_missing_model_is_a_clear_cli_error(tmp_path):
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "serve.py"), "--model", str(tmp_path / "no.onnx")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and "is not a file" in run.stderr


def test_a_chunked_body_over_the_limit_gets_413_too(server):
    """No Content-Length to refuse on: the limit is counted as the body streams in."""
    import http.client

    _, http_port, _ = server
    conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=30)
    chunks = (bytes(256 * 1024) for _ in range(8))  # 2 MiB against a 1 MiB limit
    conn.request(
        "POST",
        f"/v2/models/{NAME}/infer",
        body=chunks,
        encode_chunked=True,
        headers={"Inference-Header-Content-Length": "10"},
    )
    response = conn.getresponse()
    assert response.status == 413 and b"over the server's limit" in response.read()
    assert request(http_port, "/v2/health/ready") == (200, {"ready": True})


def test_the_serving_image_carries_the_package_and_the_server_needs_nothing_else(tmp_path):
    """The build context holds cifarflow.serving whole; its code alone on the path (-I: PYTHONPATH
    ignored, and the context's cifarflow comes first) imports serve.py and the server, every cifarflow
    module they load is one the context carries, and no torch. A module the server needs from outside
    the package would be missing there: the import fails."""
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not read here")
    (tmp_path / "context").mkdir()
    context = assemble_context(model, tmp_path / "context")
    package = sorted(p.relative_to(SCRIPTS).as_posix() for p in SERVING_PACKAGE.rglob("*.py"))
    carried = (context / "cifarflow" / "serving").rglob("*.py")
    assert sorted(p.relative_to(context).as_posix() for p in carried) == package
    probe = (
        "import json, sys; sys.path.insert(0, sys.argv[1]);"
        "import serve, cifarflow.serving.server;"
        "ours = [m for n, m in sys.modules.items() if n == 'serve' or n.split('.')[0] == 'cifarflow'];"
        "print(json.dumps({'files': sorted(m.__file__ for m in ours), 'torch': 'torch' in sys.modules}))"
    )
    run = subprocess.run([sys.executable, "-I", "-c", probe, str(context)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    assert str(context / "cifarflow" / "serving" / "server.py") in loaded["files"]
    assert set(loaded["files"]) <= {str(p) for p in context.rglob("*.py")}, loaded["files"]
    assert not loaded["torch"], "torch imported"


def test_no_module_of_the_serving_package_imports_cifarflow_outside_it():
    """What makes "the image copies the package" exact, imports inside functions included (which the
    probe above does not run): relative imports within the package only, and serve.py, the image's
    entry point, imports cifarflow.serving's modules only."""
    outside = []
    for path in [SERVE, *SERVING_PACKAGE.rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = ["." * node.level + (node.module or "")]
            else:
                continue
            for name in names:
                ours = name.startswith(".") or name.split(".")[0] == "cifarflow"
                if path == SERVE:
                    inside = name.startswith("cifarflow.serving.")
                else:
                    inside = name.startswith(".") and not name.startswith("..")
                if ours and not inside:
                    outside.append(f"{path.relative_to(SCRIPTS)}: {name}")
    assert {p.name for p in SERVING_PACKAGE.glob("*.py")} >= {"server.py", "model.py", "http.py", "logs.py"}
    assert not outside, f"imports from outside cifarflow.serving, which the image does not carry: {outside}"


def test_the_kserve_mends_refuse_an_untested_kserve_release():
    """Checked in a fresh interpreter: kserve's gRPC protos clash with tritonclient's in this one."""
    probe = """
import json, sys
from cifarflow.serving.server import TESTED_KSERVE, UntestedKServe, require_tested_kserve
require_tested_kserve()
require_tested_kserve(TESTED_KSERVE + ".7")
refused = {}
for other in sys.argv[1:]:
    try:
        require_tested_kserve(other)
    except UntestedKServe as err:
        refused[other] = str(err)
print(json.dumps({"tested": TESTED_KSERVE, "refused": refused}))
"""
    others = ["0.22.0", "0.2.1", "1.0.0", "0.210.0"]
    run = subprocess.run([sys.executable, "-c", probe, *others], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout.strip().splitlines()[-1])
    assert answer["tested"] == "0.21" and set(answer["refused"]) == set(others)
    for other, message in answer["refused"].items():
        assert f"KServe {other} is installed" in message and "tested with KServe 0.21.x" in message
        assert "pip install 'kserve==0.21.0'" in message and "raise TESTED_KSERVE" in message


def test_serve_py_on_an_untested_kserve_exits_with_the_reason_and_serves_nothing(model, tmp_path):
    """A KServe that reports another version (its metadata first on the path): no server, no traceback."""
    info = tmp_path / "fake" / "kserve-0.22.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kserve\nVersion: 0.22.0\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(info.parent), os.environ.get("PYTHONPATH", "")])}
    http_port, grpc_port = ports.pick(2)
    cmd = [sys.executable, str(ROOT / "scripts" / "serve.py"), "--model", str(model)]
    cmd += ["--port", str(http_port), "--grpc-port", str(grpc_port)]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 1, run.stderr
    assert "KServe 0.22.0 is installed" in run.stderr and "tested with KServe 0.21.x" in run.stderr
    assert "Traceback" not in run.stderr
    assert port_free(http_port) and port_free(grpc_port)


def test_fuzzing_the_servers_own_openapi_finds_no_server_error(server):
    """Every operation the server documents in /openapi.json, with requests that schemathesis generates
    to match the schema and to break it: answers below 500, except KServe's 501 for a model version
    (versioning is not supported). Bounded: a fixed number of cases, a deadline per request, no
    shrinking; the same cases on every run (derandomized)."""
    proc, http_port, _ = server
    schema = schemathesis.openapi.from_url(f"http://127.0.0.1:{http_port}/openapi.json")
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    # Mostly the served model's name (a random one only reaches the 404 of an unknown model).
    cases = st.one_of(
        *(schema.as_strategy(mode, path_parameters={"model_name": NAME}) for mode in modes),
        *(schema.as_strategy(mode) for mode in modes),
    )
    statuses, errors = Counter(), []

    @settings(
        max_examples=300,
        deadline=10_000,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases)
    def fuzz(case) -> None:
        response = case.call(timeout=30)
        statuses[response.status_code] += 1
        # KServe's documented 501, for a model version in the path or (the same handler) the query.
        asked = "/versions/" in case.path or "model_version" in (case.query or {})
        versioned = asked and "versioning not supported" in response.text
        if response.status_code >= 500 and not (response.status_code == 501 and versioned):
            answer = f"{response.status_code}: {response.text[:200]}"
            errors.append(f"{case.method} {case.formatted_path} -> {answer}")

    fuzz()
    assert not errors, "\n".join(errors[:20])
    print(f"fuzzed {sum(statuses.values())} requests; answers by status: {dict(sorted(statuses.items()))}")
    assert sum(statuses.values()) >= 250 and len(statuses) >= 4, statuses  # it did reach the server
    assert proc.poll() is None and request(http_port, "/v2/health/ready") == (200, {"ready": True})
