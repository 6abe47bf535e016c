"""Images of ``image_url`` content parts: ``data:image/...;base64,`` URLs always; local files only under
the directory the operator allows (symlinks resolved, nothing outside it); remote ``http(s)`` URLs only
when the operator enables them. Every image is size-checked (bytes and pixels) before it is decoded.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image

from minigpt4 import images
from minigpt4.serve.errors import APIError, bad_request

DATA_URL = re.compile(r"data:(?P<mime>image/[A-Za-z0-9.+-]+)?(?P<params>(;[^;,]*)*?);base64,(?P<data>.*)", re.S)


@dataclasses.dataclass(frozen=True)
class ImagePolicy:
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 16_000_000
    allowed_dir: Path | None = None
    allow_remote: bool = False
    remote_timeout: float = 10.0


def _too_large(what: str, param: str) -> APIError:
    return APIError(413, what, param=param, code="image_too_large")


def open_image(data: bytes, policy: ImagePolicy, param: str) -> Image.Image:
    """Decode image bytes to RGB (:func:`minigpt4.images.open_image`), refusing non-images and images over
    the byte or pixel limit."""
    if len(data) > policy.max_image_bytes:
        raise _too_large(f"the image is {len(data):,} bytes; at most {policy.max_image_bytes:,} are accepted", param)
    try:
        return images.open_image(data, max_pixels=policy.max_image_pixels, where="the image")
    except images.ImageTooLarge as exc:
        raise _too_large(str(exc), param) from None
    except images.UnreadableImage as exc:
        cause = type(exc.__cause__).__name__ if exc.__cause__ is not None else "UnreadableImage"
        raise bad_request(f"not a readable image ({cause})", param=param, code="invalid_image") from None


def _local(path: str, policy: ImagePolicy, param: str) -> bytes:
    if policy.allowed_dir is None:
        raise bad_request("local image files are not enabled on this server (the operator allows a directory "
                          "with --allow-local-dir)", param=param, code="local_files_disabled")
    root = policy.allowed_dir.resolve()
    try:
        resolved = (root / path).resolve(strict=True)  # an absolute path replaces root
    except (OSError, RuntimeError):
        raise bad_request(f"no such image file under the allowed directory: {path}", param=param,
                          code="invalid_image") from None
    if not resolved.is_relative_to(root) or not resolved.is_file():
        raise bad_request(f"{path} is not a file inside the allowed directory", param=param, code="forbidden_path")
    size = resolved.stat().st_size
    if size > policy.max_image_bytes:
        raise _too_large(f"the image is {size:,} bytes; at most {policy.max_image_bytes:,} are accepted", param)
    return resolved.read_bytes()


def _remote(url: str, policy: ImagePolicy, param: str) -> bytes:
    if not policy.allow_remote:
        raise bad_request("remote image URLs are disabled on this server (send the image as a data: URL; the "
                          "operator may enable fetching with --allow-remote-images)", param=param,
                          code="remote_images_disabled")
    import httpx

    chunks, total = [], 0
    try:
        with httpx.stream("GET", url, timeout=policy.remote_timeout, follow_redirects=True) as resp:
            resp.raise_for_status()
            for chunk in resp.iter_bytes():
                total += len(chunk)
                if total > policy.max_image_bytes:
                    raise _too_large(f"the image at {url} is over {policy.max_image_bytes:,} bytes", param)
                chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise bad_request(f"could not fetch {url}: {exc}", param=param, code="invalid_image") from None
    return b"".join(chunks)


def load_image_url(url: str, policy: ImagePolicy, param: str) -> Image.Image:
    """The RGB image an ``image_url.url`` names, or an :class:`APIError` saying why not."""
    if url.startswith("data:"):
        match = DATA_URL.fullmatch(url)
        if match is None or match.group("mime") is None:
            raise bad_request("image data URLs must look like data:image/<type>;base64,<data>", param=param,
                              code="invalid_image")
        payload = match.group("data")
        if len(payload) * 3 // 4 > policy.max_image_bytes:
            raise _too_large(f"the image is over {policy.max_image_bytes:,} bytes", param)
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise bad_request("the image data is not valid base64", param=param, code="invalid_image") from None
        return open_image(data, policy, param)
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        return open_image(_remote(url, policy, param), policy, param)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise bad_request("file URLs must name a local path", param=param, code="invalid_image")
        return open_image(_local(unquote(parsed.path), policy, param), policy, param)
    if parsed.scheme == "" and url:
        return open_image(_local(url, policy, param), policy, param)
    raise bad_request(f"unsupported image URL scheme {parsed.scheme!r} (use data:, or file: when enabled)",
                      param=param, code="invalid_image")
