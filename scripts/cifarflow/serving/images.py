"""Opening one image within a pixel limit, and turning it into the pipeline's format: RGB uint8 [32, 32, 3].

Data preparation (the folder source) and the server's /classify endpoint both use this, so that an
image is limited and converted the same way wherever it enters the system.
"""

from __future__ import annotations

from typing import IO

import numpy as np
from PIL import Image

SIZE = 32
# The default limit on width x height: a 4096x4096 image (64 MiB of RGB once decoded). PIL's own
# guard (Image.MAX_IMAGE_PIXELS, about 89 Mpixel) only warns below twice its limit and is
# process-wide; this one is a setting of each caller and refuses from the header alone.
MAX_PIXELS = 4096 * 4096


class TooLarge(ValueError):
    """The image's header declares more pixels than the limit; it was not decoded."""


def open_limited(file: IO[bytes], max_pixels: int) -> Image.Image:
    """Open and decode an image whose width x height is at most `max_pixels`, else raise TooLarge.

    Image.open reads only the header, so the size is known (and checked) before any pixel is decoded.
    """
    try:
        image = Image.open(file)
    except Image.DecompressionBombError as err:  # over twice PIL's own limit: refused by PIL first
        raise TooLarge(f"is over the limit of {max_pixels:,} pixels ({err})") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise TooLarge(
            f"is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,} pixels"
        )
    image.load()
    return image


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
