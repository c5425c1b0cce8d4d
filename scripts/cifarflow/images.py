"""Turning one decoded image into the pipeline's pixel format: RGB uint8 [32, 32, 3].

Data preparation and the server's image endpoint (serving.py, /classify) both use this, so that an
image is converted the same way wherever it enters the system.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SIZE = 32


class WrongSize(ValueError):
    """The image is not 32x32 and resizing was not asked for."""


def to_rgb32(image: Image.Image, resize: bool) -> tuple[np.ndarray, bool]:
    """Return (pixels, resized). Raises WrongSize for a size other than 32x32 without `resize`."""
    if image.mode != "RGB":
        image = image.convert("RGB")  # greyscale, palette, CMYK; an alpha channel is dropped
    resized = image.size != (SIZE, SIZE)
    if resized:
        if not resize:
            raise WrongSize(f"is {image.size[0]}x{image.size[1]}, not {SIZE}x{SIZE}")
        image = image.resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8), resized
