"""The exported model's contract, as ONNX Runtime runs it: one input, two outputs, batch by batch.

Export (the parity check), evaluation (the offline reference) and the server all run the graph
through these, so that every path into the model names and checks its tensors the same way.
No torch and no kserve here: the pipeline image and the serving image both carry this module.
"""

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .images import SIZE

INPUT, OUTPUTS = "image", ("logits", "probabilities")
IMAGE_SHAPE = (SIZE, SIZE, 3)

# `run(batch_uint8) -> (logits, probabilities)`: an ONNX Runtime session, or torch for the parity check.
Runner = Callable[[np.ndarray], Sequence[np.ndarray]]


def load_session(path: str | Path, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_runner(session: ort.InferenceSession) -> Runner:
    """`run(batch_uint8) -> (logits, probabilities)` for predict()."""
    return lambda x: session.run(list(OUTPUTS), {INPUT: x})


def predict(run: Runner, images: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
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
