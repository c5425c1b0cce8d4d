"""The served model: one ONNX classifier as a KServe Model (the v2 protocol's tensors), and the
human path's image in, top classes out (classify_image)."""

import asyncio
import io
import json
import uuid
from pathlib import Path

import numpy as np
from kserve import Model
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from PIL import UnidentifiedImageError

from .images import MAX_PIXELS, SIZE, TooLarge, open_limited, to_rgb32
from .inference import IMAGE_SHAPE, INPUT, OUTPUTS, check_images, load_session, ort_runner

PROVENANCE = ("dataset_id", "model_type", "recipe_sha256", "normalization", "input_format")


class OnnxClassifier(Model):
    """One ONNX classifier: uint8 images in, (logits, probabilities) out.

    Requests of at most SMALL_BATCH images run on a second, single-threaded session of the same
    graph. ONNX Runtime's pool threads spin for a while after every run: at batch 1 that burnt
    about 5 ms of CPU per request for a 1 ms model, and on a small machine the spinning thread
    takes a core from the client and from the server's own event loop (batch-1 p50 2.7 ms instead
    of 4.6 ms under load, measured with bench/serve_breakdown.py); a second thread does not make one
    image faster anyway. Larger batches use `threads`."""

    SMALL_BATCH = 4

    def __init__(self, name: str, path: Path, threads: int):
        super().__init__(name)
        self.path, self.threads = path, threads
        self._run = self._run_small = None  # inference.ort_runner over the loaded sessions
        self.class_names: list[str] = []
        self.provenance: dict[str, str] = {}

    def load(self) -> bool:
        session = load_session(self.path, self.threads)
        meta = session.get_modelmeta().custom_metadata_map
        self.class_names = json.loads(meta["class_names"])
        self.provenance = {key: meta[key] for key in PROVENANCE if key in meta}
        self._run = ort_runner(session)
        self._run_small = self._run if self.threads == 1 else ort_runner(load_session(self.path, 1))
        self.ready = True
        return True

    def get_input_types(self) -> list[dict]:
        return [{"name": INPUT, "datatype": "UINT8", "shape": [-1, *IMAGE_SHAPE]}]

    def get_output_types(self) -> list[dict]:
        shape = [-1, len(self.class_names)]
        return [{"name": name, "datatype": "FP32", "shape": shape} for name in OUTPUTS]

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Kept through stop() (unload, shutdown): requests already accepted finish during the grace period.
        run = self._run_small if len(images) <= self.SMALL_BATCH else self._run
        logits, probabilities = run(images)
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
