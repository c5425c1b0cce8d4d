"""The model server: ONNX Runtime behind KServe's ModelServer (Open Inference Protocol v2).

What it serves, on one HTTP port and one gRPC port:
- the protocol (KServe's own routes): /v2/health/live, /v2/health/ready, /v2/models/<name>/infer with
  JSON tensors or the binary tensor extension, and the same over v2 gRPC;
- GET /v2/models/<name>: the protocol's metadata plus `class_names` and the model's provenance;
- POST /v2/models/<name>/classify: a PNG/JPEG file in, the top classes out (the human path).

Requests over `max_body_bytes` get 413, bad tensors/framing/images 4xx, and the server keeps serving.
No torch here: the serving image carries only this module and the few it needs (engines.SERVING_CODE).
"""

import asyncio
import io
import json
import logging
import uuid
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, UnidentifiedImageError

from .images import SIZE, to_rgb32

log = logging.getLogger("cifarflow")

INPUT, OUTPUTS = "image", ("logits", "probabilities")
IMAGE_SHAPE = (SIZE, SIZE, 3)
PROVENANCE = ("dataset_id", "model_type", "recipe_sha256", "normalization", "input_format")
Image.MAX_IMAGE_PIXELS = 4096 * 4096  # a larger upload is refused, not decoded


def load_session(path: str | Path, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_runner(session: ort.InferenceSession):
    """`run(batch_uint8) -> (logits, probabilities)` for predict()."""
    return lambda x: session.run(list(OUTPUTS), {INPUT: x})


def predict(run, images: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(logits, probabilities) of `run(batch_uint8) -> (logits, probs)` over all images, batch by batch."""
    outs = [run(np.ascontiguousarray(images[i : i + batch])) for i in range(0, len(images), batch)]
    return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


def check_images(images: np.ndarray) -> None:
    """The one input contract, for every path into the model: uint8 [N, 32, 32, 3], N >= 1."""
    if images.dtype != np.uint8:
        raise ValueError(f"input '{INPUT}' must be UINT8 (raw RGB pixels 0-255), got {images.dtype}")
    if images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE or images.shape[0] < 1:
        raise ValueError(
            f"input '{INPUT}' must have shape [N, 32, 32, 3] (NHWC RGB, N >= 1), got {list(images.shape)}"
        )


def _kserve_model():
    """The KServe Model subclass; built lazily so that importing this module does not import kserve."""
    from kserve import Model
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

    class OnnxClassifier(Model):
        """One ONNX classifier: uint8 images in, (logits, probabilities) out."""

        def __init__(self, name: str, path: Path, threads: int):
            super().__init__(name)
            self.path, self.threads = path, threads
            self.session: ort.InferenceSession | None = None
            self.class_names: list[str] = []
            self.provenance: dict[str, str] = {}

        def load(self) -> bool:
            self.session = load_session(self.path, self.threads)
            meta = self.session.get_modelmeta().custom_metadata_map
            self.class_names = json.loads(meta["class_names"])
            self.provenance = {key: meta[key] for key in PROVENANCE if key in meta}
            self.ready = True
            return True

        def get_input_types(self) -> list[dict]:
            return [{"name": INPUT, "datatype": "UINT8", "shape": [-1, *IMAGE_SHAPE]}]

        def get_output_types(self) -> list[dict]:
            shape = [-1, len(self.class_names)]
            return [{"name": name, "datatype": "FP32", "shape": shape} for name in OUTPUTS]

        def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            logits, probabilities = self.session.run(list(OUTPUTS), {INPUT: images})
            return logits, probabilities

        @staticmethod
        def images(request: InferRequest) -> np.ndarray:
            if len(request.inputs) != 1 or request.inputs[0].name != INPUT:
                names = [i.name for i in request.inputs]
                raise InvalidInput(f"expected one input named '{INPUT}', got {names}")
            tensor = request.inputs[0]
            if tensor.datatype != "UINT8":
                raise InvalidInput(
                    f"input '{INPUT}' must be UINT8 (raw RGB pixels 0-255), got {tensor.datatype}"
                )
            try:
                images = tensor.as_numpy()
            except (ValueError, TypeError, OverflowError) as err:
                raise InvalidInput(
                    f"input '{INPUT}': data does not match shape {tensor.shape}: {err}"
                ) from None
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

    return OnnxClassifier


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


def classify_image(model, data: bytes, top_k: int) -> dict:
    """Decode an uploaded image, resize it to 32x32 if needed, and return the top classes."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as err:
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


def add_routes(app, server, model) -> None:
    """Our two routes, registered before KServe's, so ours answer GET /v2/models/<name>."""
    from fastapi import HTTPException, Request
    from kserve.errors import ModelNotFound

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
            return await asyncio.get_running_loop().run_in_executor(None, classify_image, model, data, top_k)
        except ValueError as err:
            raise HTTPException(415, str(err)) from None

    app.add_api_route("/v2/models/{model_name}", metadata, methods=["GET"])
    app.add_api_route("/v2/models/{model_name}/classify", classify, methods=["POST"])


def _harden_decoding(server) -> None:
    """Two mends to KServe's REST decoding, both about what clients really send.

    - A JSON body that arrives without a JSON content type (tritonclient.http does this) reaches the
      decoder as bytes without the binary extension's header; it is a binary-extension body with no
      binary part, so it is decoded as one.
    - Malformed binary framing (sizes that do not add up, missing keys) is the client's error: 400,
      not KServe's generic 500.
    """
    from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
    from kserve.errors import InvalidInput

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


def serve(
    model_path: Path,
    model_name: str,
    http_port: int = 8080,
    grpc_port: int = 8081,
    threads: int = 0,
    max_body_bytes: int = 64 << 20,
) -> None:
    """Load the model and serve it until SIGTERM/SIGINT (KServe's ModelServer handles both)."""
    from kserve import model_server

    # KServe reads the gRPC message limits from its module-level CLI args.
    model_server.args.grpc_max_receive_message_length = max_body_bytes
    model = _kserve_model()(model_name, Path(model_path), threads)
    model.load()
    server = model_server.ModelServer(
        http_port=http_port,
        grpc_port=grpc_port,
        max_threads=max(4, threads),
        enable_latency_logging=False,
        grace_period=5,
    )
    model_server.app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    add_routes(model_server.app, server, model)
    _harden_decoding(server)
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)  # a timing line per request
    log.info(
        "serving %r (%s, classes %s) on HTTP :%d and gRPC :%d; %s ONNX Runtime threads; "
        "requests up to %d bytes",
        model_name,
        model_path,
        ",".join(model.class_names),
        http_port,
        grpc_port,
        threads or "default",
        max_body_bytes,
    )
    server.start([model])
