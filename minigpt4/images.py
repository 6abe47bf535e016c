"""Opening an image file the same way everywhere (training data, captioning, serving): size checked before
decoding, every Pillow mode turned into the RGB picture a viewer shows.

- **Size**: ``max_pixels`` (width x height) is checked from the header, before any pixel is decoded; a larger
  image raises :class:`ImageTooLarge`. Pillow's own decompression-bomb guard (about 179 MP) still applies when
  ``max_pixels`` is None or larger, and is reported the same way.
- **Modes** (:func:`to_rgb`): 16-bit greyscale (``I;16*``, and ``I``, which Pillow uses for 16-bit files) is
  scaled from 0..65535 to 0..255 (Pillow's own conversion clips it, so most of the picture turns white);
  ``F`` (float) is read as 0..1 when all its values are within 0..1 and as 0..255 otherwise; anything with
  transparency (``RGBA``, ``LA``, ``PA``, ``P`` or ``L``/``RGB`` with a transparent colour) is composited onto
  white; ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``1``, ``L`` and ``P`` use Pillow's conversion.

An unreadable file raises :class:`UnreadableImage`; both errors are ``ValueError`` with a one-line message
that starts with where the image came from.
"""
from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from minigpt4.errors import UserError

# The largest image decoded by default, in pixels (the demo's limit; a 48 MP photo is 8000 x 6000).
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
BACKGROUND = (255, 255, 255)

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_WITH_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")


class UnreadableImage(UserError, ValueError):
    """Not an image Pillow can decode (or a truncated one)."""


class ImageTooLarge(UserError, ValueError):
    """More pixels than allowed; raised before the pixels are decoded. ``size`` is (width, height) when known."""

    size: tuple[int, int] | None = None


def check_size(size: tuple[int, int], max_pixels: int | None, where: str) -> None:
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        exc = ImageTooLarge(f"{where}: {width}x{height} = {width * height:,} pixels, more than the allowed "
                            f"{max_pixels:,} (max_image_pixels)")
        exc.size = (width, height)
        raise exc


def open_image(source, *, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, where: str | None = None
               ) -> Image.Image:
    """``source`` (a path, the file's bytes or a binary file object) as a fully decoded RGB image.

    Raises :class:`ImageTooLarge`, :class:`UnreadableImage`, or ``FileNotFoundError`` for a missing path.
    """
    if where is None:
        where = str(source) if isinstance(source, (str, Path)) else "image"
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # max_pixels is the limit here
            with Image.open(fp) as img:
                check_size(img.size, max_pixels, where)
                img.load()
    except (ImageTooLarge, FileNotFoundError):
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{where}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001  (Pillow raises many types for broken files)
        detail = re.sub(r" ?<_io\.\w+ object at 0x[0-9a-f]+>", "", str(exc))  # Pillow names the buffer, not the file
        raise UnreadableImage(f"{where}: not a readable image ({type(exc).__name__}: {detail})") from exc
    return to_rgb(img)


def to_rgb(img: Image.Image, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """The RGB picture of ``img`` whatever its mode (see the module docstring)."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in _SIXTEEN_BIT:
        values = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        grey = ((values * 255 + 32767) // 65535).astype(np.uint8)  # 65535 -> 255, rounded
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":
        values = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if values.size and values.min() >= 0.0 and values.max() <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in _WITH_ALPHA or "transparency" in img.info:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")
