"""The model server: ONNX Runtime behind KServe's ModelServer (Open Inference Protocol v2).

What it serves, on one HTTP port and one gRPC port, both on one address (loopback by default):
- the protocol (KServe's own routes): /v2/health/live, /v2/health/ready, /v2/models/<name>/infer with
  JSON tensors or the binary tensor extension, and the same over v2 gRPC;
- GET /v2/models/<name>: the protocol's metadata plus `class_names` and the model's provenance;
- POST /v2/models/<name>/classify: a PNG/JPEG file in, the top classes out (the human path).

Requests over `max_body_bytes` get 413, bad tensors/framing/images 4xx, and the server keeps serving.
KServe's model-repository extension (unauthenticated load/unload) is off unless asked for, and the
server is ready only while its model is.
The layers: model.py (the ONNX model), http.py (HTTP hardening and our routes), this module (KServe's
servers on one address, readiness, the repository extension, `serve`).
"""

import asyncio
import logging
from concurrent import futures
from importlib import metadata
from pathlib import Path

from grpc import aio
from grpc_interceptor.exceptions import Unimplemented
from kserve import Model, model_server
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
from kserve.errors import ModelNotFound
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.rest.server import RESTServer

from .http import BodyLimit, add_routes, close_repository, harden_decoding
from .images import MAX_PIXELS
from .model import OnnxClassifier

log = logging.getLogger("cifarflow")

# The KServe release series the mends (the Host*Server classes, ServingRepository, ServingDataPlane,
# ServingServicer below; http.close_repository, http.harden_decoding) are written against and tested
# with: they reach into KServe's internals.
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
            "pins it), or port the mends in cifarflow/serving/ (server.py, http.py) to the new KServe, "
            "run tests/test_serving.py, and raise TESTED_KSERVE."
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
    harden_decoding(server)
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
