"""The model server: ONNX Runtime behind KServe's ModelServer (Open Inference Protocol v2).

What it serves, on one HTTP port and one gRPC port, both on one address (loopback by default):
- the protocol (KServe's own routes): /v2/health/live, /v2/health/ready, /v2/models/<name>/infer with
  JSON tensors or the binary tensor extension, and the same over v2 gRPC;
- GET /v2/models/<name>: the protocol's metadata plus `class_names` and the model's provenance;
- POST /v2/models/<name>/classify: a PNG/JPEG file in, the top classes out (the human path).

Requests over `max_body_bytes` get 413, bad tensors/framing/images 4xx, and the server keeps serving.
KServe's model-repository extension (unauthenticated load/unload) is off unless asked for, and the
server is ready only while its model is.
No torch here: the serving image carries only this module and the few it needs (engines.SERVING_CODE).
"""

import asyncio
import io
import json
import logging
import uuid
from concurrent import futures
from importlib import metadata
from pathlib import Path

import numpy as np
from fastapi import HTTPException, Request
from grpc import aio
from grpc_interceptor.exceptions import Unimplemented
from kserve import Model, model_server
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING, INFERENCE_CONTENT_LENGTH_HEADER
from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from kserve.protocol.rest.server import RESTServer
from PIL import UnidentifiedImageError

from .images import MAX_PIXELS, SIZE, TooLarge, open_limited, to_rgb32
from .inference import IMAGE_SHAPE, INPUT, OUTPUTS, check_images, load_session, ort_runner

log = logging.getLogger("cifarflow")

PROVENANCE = ("dataset_id", "model_type", "recipe_sha256", "normalization", "input_format")
# The KServe release series the mends below (the Host*Server classes, ServingRepository,
# ServingDataPlane, ServingServicer, close_repository, _harden_decoding) are written against and
# tested with: they reach into KServe's internals.
TESTED_KSERVE, TESTED_KSERVE_RELEASE = "0.21", "0.21.0"


class UntestedKServe(RuntimeError):
    """The installed KServe is not the release series this server's mends are tested with."""


def require_tested_kserve(installed: str | None = None) -> None:
    """Refuse to start on a KServe the mends were not tested with: a moved internal would otherwise
    fail silently (a server on every interface, or undecoded requests) instead of loudly."""
    installed = installed or metadata.version("kserve")
    if installed.split(".")[:2] != TESTED_KSERVE.split("."):
        raise UntestedKServe(
            f"KServe {installed} is installed, but cifarflow's server mends KServe's internals (bind "
            f"address, readiness, repository endpoints, request decoding) and is tested with KServe "
            f"{TESTED_KSERVE}.x only ({TESTED_KSERVE_RELEASE}). Install that release "
            f"(pip install 'kserve=={TESTED_KSERVE_RELEASE}', as containers/serving/requirements.txt "
            "pins it), or port the mends in cifarflow/serving.py to the new KServe, run "
            "tests/test_serving.py, and raise TESTED_KSERVE."
        )


class OnnxClassifier(Model):
    """One ONNX classifier: uint8 images in, (logits, probabilities) out."""

    def __init__(self, name: str, path: Path, threads: int):
        super().__init__(name)
        self.path, self.threads = path, threads
        self._run = None  # inference.ort_runner over the loaded session
        self.class_names: list[str] = []
        self.provenance: dict[str, str] = {}

    def load(self) -> bool:
        session = load_session(self.path, self.threads)
        meta = session.get_modelmeta().custom_metadata_map
        self.class_names = json.loads(meta["class_names"])
        self.provenance = {key: meta[key] for key in PROVENANCE if key in meta}
        self._run = ort_runner(session)
        self.ready = True
        return True

    def get_input_types(self) -> list[dict]:
        return [{"name": INPUT, "datatype": "UINT8", "shape": [-1, *IMAGE_SHAPE]}]

    def get_output_types(self) -> list[dict]:
        shape = [-1, len(self.class_names)]
        return [{"name": name, "datatype": "FP32", "shape": shape} for name in OUTPUTS]

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Kept through stop() (unload, shutdown): requests already accepted finish during the grace period.
        logits, probabilities = self._run(images)
        return logits, probabilities

    @staticmethod
    def images(request: InferRequest) -> np.ndarray:
        if len(request.inputs) != 1 or request.inputs[0].name != INPUT:
            names = [i.name for i in request.inputs]
            raise InvalidInput(f"expected one input named '{INPUT}', got {names}")
        tensor = request.inputs[0]
        if tensor.datatype != "UINT8":
            raise InvalidInput(f"input '{INPUT}' must be UINT8 (raw RGB pixels 0-255), got {tensor.datatype}")
        try:
            images = tensor.as_numpy()
        except (ValueError, TypeError, OverflowError) as err:
            raise InvalidInput(f"input '{INPUT}': data does not match shape {tensor.shape}: {err}") from None
        try:
            check_images(images)
        except ValueError as err:
            raise InvalidInput(str(err)) from None
        return images

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        images = self.images(payload)
        # Off the event loop: health checks and other requests are answered during a big batch.
        logits, probabilities = await asyncio.get_running_loop().run_in_executor(None, self.run, images)
        outputs = []
        for name, array in zip(OUTPUTS, (logits, probabilities), strict=True):
            output = InferOutput(name=name, shape=list(array.shape), datatype="FP32")
            output.set_data_from_numpy(array, binary_data=True)
            outputs.append(output)
        return InferResponse(
            response_id=payload.id or str(uuid.uuid4()),  # the protocol's id is optional
            model_name=self.name,
            infer_outputs=outputs,
            from_grpc=payload.from_grpc,
            use_binary_outputs=payload.use_binary_outputs,
            requested_outputs=payload.request_outputs,
        )


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413 and is never held in memory.

    With a Content-Length the answer is decided up front; a chunked body is read up to the limit
    before the app sees it. The rest of a refused body is read and dropped (up to DRAIN_FACTOR
    times the limit), so that a client still sending sees the 413 instead of a reset connection.
    """

    DRAIN_FACTOR = 16

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def _drain(self, receive, seen: int = 0) -> None:
        while seen <= self.DRAIN_FACTOR * self.max_bytes:
            message = await receive()
            seen += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body"):
                return

    async def _refuse(self, send) -> None:
        body = json.dumps(
            {
                "error": f"request body is over the server's limit of {self.max_bytes} bytes; "
                "send fewer images per request or raise --max-request-mb"
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit():
            if int(length) > self.max_bytes:
                await self._drain(receive)
                return await self._refuse(send)
            return await self.app(scope, receive, send)
        chunks, size = [], 0  # no Content-Length: count the body as it arrives
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._drain(receive, size)
                return await self._refuse(send)
            if not message.get("more_body"):
                break
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replayed():
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)


def classify_image(model: OnnxClassifier, data: bytes, top_k: int, max_pixels: int = MAX_PIXELS) -> dict:
    """Decode an uploaded image of at most `max_pixels`, resize it to 32x32 if needed, and return the
    top classes. Raises TooLarge (from the header, before decoding) or ValueError (not an image)."""
    try:
        image = open_limited(io.BytesIO(data), max_pixels)
    except TooLarge as err:
        raise TooLarge(
            f"the image {err} (the server's --max-image-pixels, CIFARFLOW_MAX_IMAGE_PIXELS); "
            "send a smaller image"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ValueError(
            f"the upload is not an image this server can decode (PNG, JPEG, ...): {err}"
        ) from None
    width, height = image.size
    pixels, resized = to_rgb32(image, resize=True)
    _, probabilities = model.run(pixels[None])
    order = np.argsort(-probabilities[0])[: max(1, min(top_k, len(model.class_names)))]
    return {
        "model_name": model.name,
        "predictions": [
            {"class": model.class_names[i], "index": int(i), "probability": float(probabilities[0, i])}
            for i in order
        ],
        "original_size": [width, height],
        "resized": resized,
        "note": (
            f"resized from {width}x{height} to {SIZE}x{SIZE} (Lanczos); the model was trained on "
            f"{SIZE}x{SIZE} images, so predictions on resized images are less reliable"
            if resized
            else f"{SIZE}x{SIZE}, used as is"
        ),
    }


def add_routes(app, server, model: OnnxClassifier, max_image_pixels: int = MAX_PIXELS) -> None:
    """Our two routes, registered before KServe's, so ours answer GET /v2/models/<name>."""

    async def metadata(model_name: str) -> dict:
        base = await server.dataplane.model_metadata(model_name)
        return {
            **base,
            "platform": "onnxruntime_onnx",
            "class_names": model.class_names,
            "parameters": model.provenance,
        }

    async def classify(model_name: str, request: Request, top_k: int = 3) -> dict:
        if model_name != model.name:
            raise ModelNotFound(model_name)
        if not model.ready:
            raise ModelNotReady(model_name)
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            form = await request.form()
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise HTTPException(400, "multipart upload needs a file field named 'file'")
            data = await upload.read()
        else:
            data = await request.body()
        if not data:
            raise HTTPException(400, "empty body: POST the image file (curl --data-binary @cat.png ...)")
        try:
            return await asyncio.get_running_loop().run_in_executor(
                None, classify_image, model, data, top_k, max_image_pixels
            )
        except TooLarge as err:
            raise HTTPException(413, str(err)) from None
        except ValueError as err:
            raise HTTPException(415, str(err)) from None

    app.add_api_route("/v2/models/{model_name}", metadata, methods=["GET"])
    app.add_api_route("/v2/models/{model_name}/classify", classify, methods=["POST"])


def close_repository(app) -> None:
    """KServe's model-repository routes (unauthenticated load/unload: anyone who reaches the port
    could take the model down) answer 404 with the reason, and leave the OpenAPI document.

    Registered before KServe's routes, so these answer; the document is trimmed through FastAPI's
    documented hook for a custom OpenAPI schema (app.openapi).
    """

    async def refuse(model_name: str) -> None:
        raise HTTPException(404, REPOSITORY_OFF)

    for action in ("load", "unload"):
        path = f"{REPOSITORY_PREFIX}{{model_name}}/{action}"
        app.add_api_route(path, refuse, methods=["POST"], include_in_schema=False)
    build = app.openapi

    def openapi() -> dict:
        schema = build()  # FastAPI builds it once and keeps it
        for path in [p for p in schema["paths"] if p.startswith(REPOSITORY_PREFIX)]:
            del schema["paths"][path]
        return schema

    app.openapi = openapi


def _harden_decoding(server) -> None:
    """Two mends to KServe's REST decoding, both about what clients really send.

    - A JSON body that arrives without a JSON content type (tritonclient.http does this) reaches the
      decoder as bytes without the binary extension's header; it is a binary-extension body with no
      binary part, so it is decoded as one.
    - Malformed binary framing (sizes that do not add up, missing keys) is the client's error: 400,
      not KServe's generic 500.
    """
    decode = server.dataplane.decode

    def checked_decode(body, headers, *args, **kwargs):
        if isinstance(body, bytes) and headers is not None and INFERENCE_CONTENT_LENGTH_HEADER not in headers:
            headers = {**headers, INFERENCE_CONTENT_LENGTH_HEADER: str(len(body))}
        try:
            return decode(body, headers, *args, **kwargs)
        except InvalidInput:
            raise
        except (ValueError, KeyError, TypeError, IndexError) as err:
            raise InvalidInput(f"malformed inference request: {type(err).__name__}: {err}") from None

    server.dataplane.decode = checked_decode


REPOSITORY_PREFIX = "/v2/repository/models/"
REPOSITORY_OFF = (
    "the model repository extension (load/unload) is off on this server; start it with "
    "--model-repository on (CIFARFLOW_MODEL_REPOSITORY=on) to manage models over REST"
)
GRPC_REPOSITORY_OFF = (
    "the model repository extension is not served over gRPC; with --model-repository on it is "
    "served over REST (POST /v2/repository/models/<name>/load|unload)"
)


class ServingRepository(ModelRepository):
    """The served models, by name; `load` brings back a model that `unload` took down (KServe's own
    repository loads nothing: it expects a model directory)."""

    def __init__(self, models: list[Model]):
        super().__init__()
        self.known = {model.name: model for model in models}

    def load(self, name: str) -> bool:
        if name not in self.known:
            raise ModelNotFound(name)
        model = self.known[name]
        model.load()
        self.update(model)
        return model.ready


class ServingDataPlane(DataPlane):
    """KServe's DataPlane, where the server is ready only while every model it serves is ready, and
    the model-repository extension is advertised only when it is on."""

    def __init__(self, model_registry: ServingRepository, repository: bool):
        super().__init__(model_registry)
        self.repository = repository

    async def ready(self) -> bool:
        names = list(self._model_registry.known)
        ready = [await self._model_registry.is_model_ready(name) for name in names]
        return bool(names) and all(ready) and await super().ready()

    def metadata(self) -> dict:
        meta = super().metadata()
        return {**meta, "extensions": meta["extensions"] if self.repository else []}


class HostRESTServer(RESTServer):
    """KServe's REST server on `host` (KServe 0.21 hard-codes 0.0.0.0 in its uvicorn.Config)."""

    def __init__(self, host: str, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.config.host = host  # read by uvicorn when it binds, in serve()


class ServingServicer(InferenceServicer):
    """KServe's gRPC servicer without the repository calls: they answer UNIMPLEMENTED.

    Unauthenticated, they would let anyone take the model down; and KServe 0.21's own versions read
    the model's name from the field where Triton's protocol (and tritonclient) puts the repository
    name, and fail on their own answer after unloading. Over REST the extension is an opt-in.
    """

    async def RepositoryModelLoad(self, request, context):
        raise Unimplemented(GRPC_REPOSITORY_OFF)

    async def RepositoryModelUnload(self, request, context):
        raise Unimplemented(GRPC_REPOSITORY_OFF)


class HostGRPCServer(GRPCServer):
    """KServe's gRPC server on `host`: its start(), with the listen address taken from the setting
    instead of the literal [::], and our servicer."""

    def __init__(self, host: str, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._host = host

    async def start(self, max_workers: int) -> None:
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=(LoggingInterceptor(), ExceptionToStatusInterceptor()),
            options=[
                # KServe's server shares its port (SO_REUSEPORT): a second server on the same port
                # would start without an error and take part of the first one's requests. Ours
                # owns its port: a bind on a taken port fails, loudly.
                ("grpc.so_reuseport", 0),
                ("grpc.max_send_message_length", self._kwargs.get("grpc_max_send_message_length")),
                ("grpc.max_receive_message_length", self._kwargs.get("grpc_max_receive_message_length")),
            ],
        )
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            ServingServicer(self._data_plane, self._model_repository_extension),
            self._server,
        )
        address = _grpc_address(self._host, self._port)
        self._server.add_insecure_port(address)  # raises when the address cannot be bound
        log.info("gRPC server listening on %s", address)
        await self._server.start()
        await self._server.wait_for_termination()


class HostModelServer(model_server.ModelServer):
    """KServe's ModelServer serving `models` with both protocols on `host`: its start(), with our two
    servers (one REST worker, KServe's default; gRPC always on), readiness that follows the models,
    and the model-repository extension (unauthenticated load/unload) only when `repository` is on
    (REST only; see ServingServicer)."""

    def __init__(self, host: str, models: list[Model], repository: bool = False, **kwargs):
        super().__init__(registered_models=ServingRepository(models), **kwargs)
        self.host, self.models, self.repository = host, models, repository
        self.dataplane = ServingDataPlane(self.registered_models, repository)

    def start(self) -> None:
        self._register_and_check_atleast_one_model_is_ready(self.models)
        self._rest_server = HostRESTServer(
            self.host,
            FASTAPI_APP_IMPORT_STRING,
            self.dataplane,
            self.model_repository_extension,
            self.http_port,
            access_log_format=self.access_log_format,
            workers=1,
            grace_period=self.grace_period,
            event_loop=self.event_loop,
            timeout_keep_alive=self.timeout_keep_alive,
            ssl_certfile=self.ssl_certfile,
            ssl_keyfile=self.ssl_keyfile,
        )
        self.servers.append(self._rest_server.start())
        self._grpc_server = HostGRPCServer(
            self.host,
            self.grpc_port,
            self.dataplane,
            self.model_repository_extension,
            kwargs=vars(model_server.args),
            grace_period=self.grace_period,
        )
        self.servers.append(self._grpc_server.start(self.max_threads))
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())


def _grpc_address(host: str, port: int) -> str:
    """gRPC's listen address: an IPv6 literal goes in brackets ([::1]:8081)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def serve(
    model_path: Path,
    model_name: str,
    *,
    http_port: int = 8080,
    grpc_port: int = 8081,
    threads: int = 0,
    max_body_bytes: int = 64 << 20,
    host: str = "127.0.0.1",
    max_image_pixels: int = MAX_PIXELS,
    model_repository: bool = False,
) -> None:
    """Load the model and serve it on `host` until SIGTERM/SIGINT (KServe's ModelServer handles both).

    `host` is the address both protocols listen on: loopback by default, so that a server on a shared
    machine is not reachable from other machines; 0.0.0.0 only inside a container's own network
    namespace, where publishing a port needs it. Uploads to /classify over `max_image_pixels`
    (width x height, read from the header) get 413 before they are decoded. `model_repository` turns
    on KServe's model-repository extension (load/unload over REST and gRPC, unauthenticated); off,
    its routes do not exist. The server is ready (/v2/health/ready, gRPC ServerReady) only while
    the model is.
    """
    require_tested_kserve()
    # KServe reads the gRPC message limits from its module-level CLI args.
    model_server.args.grpc_max_receive_message_length = max_body_bytes
    model = OnnxClassifier(model_name, Path(model_path), threads)
    model.load()
    server = HostModelServer(
        host,
        [model],
        repository=model_repository,
        http_port=http_port,
        grpc_port=grpc_port,
        max_threads=max(4, threads),
        enable_latency_logging=False,
        grace_period=5,
    )
    model_server.app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    add_routes(model_server.app, server, model, max_image_pixels)
    if not model_repository:
        close_repository(model_server.app)
    _harden_decoding(server)
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)  # a timing line per request
    log.info(
        "serving %r (%s, classes %s) on %s, HTTP :%d and gRPC :%d; %s ONNX Runtime threads; "
        "requests up to %d bytes, images up to %d pixels; model repository extension %s",
        model_name,
        model_path,
        ",".join(model.class_names),
        host,
        http_port,
        grpc_port,
        threads or "default",
        max_body_bytes,
        max_image_pixels,
        "on" if model_repository else "off",
    )
    server.start()
