"""minigpt4.images: every Pillow mode becomes the RGB picture a viewer shows; the size limit applies before
any pixel is decoded; broken files are one-line errors naming where they came from."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from minigpt4.images import DEFAULT_MAX_IMAGE_PIXELS, ImageTooLarge, UnreadableImage, open_image, to_rgb
from minigpt4.processors import Blip2ImageEvalProcessor


def encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def pixels(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int) -> bytes:
    """The start of a PNG that claims ``width`` x ``height`` pixels, with a few bytes of its first row only."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))


def test_16_bit_greyscale_png_is_scaled_not_clipped():
    ramp = (np.arange(256, dtype=np.uint32).reshape(16, 16) * 257).astype(np.uint16)  # 0, 257, ..., 65535
    data = encode(Image.fromarray(ramp))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    assert (np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) == 255).mean() > 0.98  # what Pillow gives
    got = pixels(open_image(data))
    assert np.array_equal(got[..., 0], np.arange(256).reshape(16, 16)) and (got == got[..., :1]).all()


def test_32_bit_integer_and_float_images():
    assert pixels(to_rgb(Image.fromarray(np.full((2, 2), 30000, np.int32))))[0, 0].tolist() == [117] * 3
    assert pixels(to_rgb(Image.fromarray(np.full((2, 2), 0.5, np.float32))))[0, 0].tolist() == [128] * 3
    assert pixels(to_rgb(Image.fromarray(np.full((2, 2), 200.0, np.float32))))[0, 0].tolist() == [200] * 3
    assert pixels(to_rgb(Image.fromarray(np.array([[np.nan, 1.0]], np.float32))))[0].tolist() == [[0] * 3, [255] * 3]


def test_transparency_is_composited_on_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, ..., 3] = 255  # top half opaque red-ish, bottom half fully transparent (black underneath)
    got = pixels(open_image(encode(Image.fromarray(rgba, "RGBA"))))
    assert got[0, 0].tolist() == [200, 0, 0] and got[3, 3].tolist() == [255, 255, 255]
    la = pixels(open_image(encode(Image.fromarray(np.dstack([np.full((2, 2), 40, np.uint8),
                                                              np.array([[255, 0], [128, 255]], np.uint8)]), "LA"))))
    # half-transparent grey 40 on white: 40 * 128/255 + 255 * 127/255 = 147
    assert la[0, 0].tolist() == [40] * 3 and la[0, 1].tolist() == [255] * 3 and la[1, 0].tolist() == [147] * 3

    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.putpixel((1, 0), 1)
    reopened = Image.open(io.BytesIO(encode(palette, transparency=0)))
    assert reopened.mode == "P" and "transparency" in reopened.info
    assert pixels(to_rgb(reopened)).tolist() == [[[255, 255, 255], [10, 200, 30]]]


def test_opaque_images_are_unchanged():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert np.array_equal(pixels(open_image(encode(Image.fromarray(rgb)))), rgb)
    rgba = np.dstack([rgb, np.full((8, 8), 255, np.uint8)])
    assert np.array_equal(pixels(to_rgb(Image.fromarray(rgba, "RGBA"))), rgb)
    grey = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    assert np.array_equal(pixels(open_image(encode(Image.fromarray(grey))))[..., 1], grey)


def test_cmyk_jpeg():
    red = open_image(encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=95))
    assert np.abs(pixels(red).astype(int) - [255, 0, 0]).max() <= 3


def test_the_processor_converts_odd_modes_the_same_way():
    proc = Blip2ImageEvalProcessor(8)
    sixteen = Image.fromarray(np.full((8, 8), 30000, np.uint16))
    assert (proc(sixteen) == proc(Image.new("RGB", (8, 8), (117, 117, 117)))).all()


def test_size_limit_applies_before_decoding():
    header_only = png_header(10_000, 10_000)  # a 100 MP image; decoding it would fail (no data)
    with pytest.raises(ImageTooLarge, match=r"x\.png: 10000x10000 = 100,000,000 pixels, more than the allowed "
                                            r"40,000,000 \(max_image_pixels\)"):
        open_image(header_only, where="x.png")
    assert DEFAULT_MAX_IMAGE_PIXELS == 40_000_000
    small = encode(Image.new("RGB", (20, 10)))
    with pytest.raises(ImageTooLarge):
        open_image(small, max_pixels=199)
    assert open_image(small, max_pixels=200).size == (20, 10)
    # with no limit of ours, Pillow's decompression-bomb guard still refuses, reported the same way
    with pytest.raises(ImageTooLarge, match="decompression bomb"):
        open_image(png_header(20_000, 10_000), max_pixels=None)


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(UnreadableImage, match=r"^shard\.tar:k\.jpg: not a readable image \(UnidentifiedImageError"):
        open_image(b"not an image at all", where="shard.tar:k.jpg")
    truncated = encode(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")[:300]
    with pytest.raises(UnreadableImage, match="(?i)truncated"):
        open_image(truncated)
    with pytest.raises(FileNotFoundError):
        open_image(tmp_path / "nope.jpg")
    (tmp_path / "ok.png").write_bytes(encode(Image.new("L", (3, 3), 9)))
    assert pixels(open_image(tmp_path / "ok.png"))[0, 0].tolist() == [9, 9, 9]
