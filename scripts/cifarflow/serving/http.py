"""HTTP hardening around KServe's REST server, and our two routes.

- BodyLimit: a request body over the limit gets 413 and is never held in memory;
- add_routes: GET /v2/models/<name> with the class names and provenance, POST .../classify;
- close_repository: KServe's unauthenticated load/unload routes answer 404 unless asked for;
- harden_decoding: mends to KServe's REST decoding (JSON without a JSON content type, bad framing: 400).
"""

import asyncio
import json

from fastapi import HTTPException, Request
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady

from .images import MAX_PIXELS, TooLarge
from .model import OnnxClassifier, classify_image

REPOSITORY_PREFIX = "/v2/repository/models/"
REPOSITORY_OFF = (
    "the model repository extension (load/unload) is off on this server; start it with "
    "--model-repository on (CIFARFLOW_MODEL_REPOSITORY=on) to manage models over REST"
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


def harden_decoding(server) -> None:
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
