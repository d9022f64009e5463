"""What a request may carry: a body size limit checked while it streams in, query parameters checked for type
and range, and an upload decoded only after its header shows it fits the pixel budget.

- :class:`BodyLimitMiddleware` (ASGI): a ``Content-Length`` above the limit is refused before a byte of the body
  is read; a body without one (chunked) is counted as it arrives and refused the moment it passes the limit —
  413 either way, the body never held whole.
- :func:`detect_params`: ``conf`` in [0, 1), ``nms`` in (0, 1], ``max_dets`` an integer in 1..10000,
  ``annotated`` ``0``/``1``/``png``/``jpeg``; anything else (an unknown name, a repeated one, a non-number, NaN)
  is a 422.
- :func:`decode_upload`: bytes → ``H × W × 3`` uint8 BGR, the way ``detect`` reads a file
  (:mod:`frcnn_trt.data.images`). Not an image → 415 (an image format's magic bytes followed by garbage: 422);
  width × height over ``max_pixels`` → 413, judged from the header before any pixel is decoded; truncated or
  corrupt → 422; an empty upload → 422.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from frcnn_trt.data.images import to_rgb_uint8
from frcnn_trt.errors import ImageError
from frcnn_trt.files import is_finite_number
from frcnn_trt.serve.problems import Problem, error_response

__all__ = ["MAX_DETS_LIMIT", "BodyLimitMiddleware", "DetectParams", "decode_upload", "detect_params"]

#: the largest ``max_dets`` a request may ask for
MAX_DETS_LIMIT = 10_000
_ANNOTATED = {"0": None, "false": None, "1": "png", "true": "png", "png": "png", "jpeg": "jpeg", "jpg": "jpeg"}
_PARAMS = ("conf", "nms", "max_dets", "annotated")
#: the first bytes of PNG, JPEG, GIF, BMP, TIFF (both byte orders) and WebP/RIFF files
_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")


# ------------------------------------------------------------------------------------------------ body size


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413 (see the module docstring)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    def _too_large(self, what: str) -> Problem:
        return Problem(413, "payload_too_large", f"request body {what} exceeds the limit of {self.max_bytes} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            length = _content_length(scope)
            if length is not None and length > self.max_bytes:
                raise self._too_large(f"of {length} bytes (Content-Length)")
        except Problem as p:  # answered before the app (and before a byte of the body) is touched
            await error_response(p.status, p.error, p.detail, {"Connection": "close"})(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._too_large(f"of more than {seen} bytes so far")
            return message

        await self.app(scope, counted, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                raise Problem(400, "bad_request", "Content-Length is not an integer") from None
    return None


# ------------------------------------------------------------------------------------------------ query


@dataclass(frozen=True)
class DetectParams:
    """One detect request's options: thresholds (``None``: the export's) and the annotated image format."""

    conf: float | None = None
    nms: float | None = None
    max_dets: int | None = None
    annotated: str | None = None

    @property
    def key(self) -> tuple[float | None, float | None, int | None]:
        """The detector settings: requests with the same key can share a detector call."""
        return self.conf, self.nms, self.max_dets


def _invalid(name: str, detail: str) -> Problem:
    return Problem(422, "invalid_parameter", f"query parameter {name}: {detail}")


def _number(name: str, text: str, *, integer: bool = False) -> float:
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        raise _invalid(name, f"expected {'an integer' if integer else 'a number'}, got {text[:40]!r}") from None
    if not is_finite_number(value):
        raise _invalid(name, f"expected a finite number, got {text[:40]!r}")
    return value


def detect_params(query: Mapping[str, str], repeated: set[str]) -> DetectParams:
    """Check ``POST /v1/detect``'s query (``repeated``: names given more than once) — 422 otherwise."""
    unknown = sorted(set(query) - set(_PARAMS))
    if unknown:
        raise _invalid(unknown[0][:40], f"unknown (allowed: {', '.join(_PARAMS)})")
    if repeated:
        raise _invalid(sorted(repeated)[0], "given more than once")
    out: dict[str, Any] = {}
    if "conf" in query:
        out["conf"] = _number("conf", query["conf"])
        if not 0.0 <= out["conf"] < 1.0:
            raise _invalid("conf", f"must be in [0, 1), got {out['conf']}")
    if "nms" in query:
        out["nms"] = _number("nms", query["nms"])
        if not 0.0 < out["nms"] <= 1.0:
            raise _invalid("nms", f"must be in (0, 1], got {out['nms']}")
    if "max_dets" in query:
        out["max_dets"] = int(_number("max_dets", query["max_dets"], integer=True))
        if not 1 <= out["max_dets"] <= MAX_DETS_LIMIT:
            raise _invalid("max_dets", f"must be in 1..{MAX_DETS_LIMIT}, got {out['max_dets']}")
    if "annotated" in query:
        text = query["annotated"].lower()
        if text not in _ANNOTATED:
            raise _invalid("annotated", f"expected one of {', '.join(_ANNOTATED)}, got {query['annotated'][:40]!r}")
        out["annotated"] = _ANNOTATED[text]
    return DetectParams(**out)


# ------------------------------------------------------------------------------------------------ decoding


def _open(data: bytes, name: str, max_pixels: int) -> Image.Image:
    if not data:
        raise Problem(422, "invalid_image", f"upload {name!r} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own budget decides
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        if data.startswith(_SIGNATURES):  # an image format's magic bytes, then garbage: a broken image
            raise Problem(422, "invalid_image", f"upload {name!r} starts like an image but cannot be read") from None
        raise Problem(415, "unsupported_media_type", f"upload {name!r} is not an image (or a format PIL cannot "
                      "read)") from None
    except Image.DecompressionBombError as exc:
        raise Problem(413, "image_too_large", f"upload {name!r}: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise Problem(422, "invalid_image", f"upload {name!r} cannot be opened: {exc}") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise Problem(422, "invalid_image", f"upload {name!r} has an empty size {width}x{height}")
    if width * height > max_pixels:
        raise Problem(413, "image_too_large", f"upload {name!r} is {width}x{height} = {width * height} pixels, "
                      f"over the budget of {max_pixels}")
    return img


def decode_upload(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """``data`` as a contiguous ``H × W × 3`` uint8 BGR image (errors: see the module docstring)."""
    img = _open(data, name, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
            rgb = to_rgb_uint8(img, name)
    except Image.DecompressionBombError as exc:
        raise Problem(413, "image_too_large", f"upload {name!r}: {exc}") from None
    except ImageError as exc:
        raise Problem(422, "invalid_image", str(exc)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise Problem(422, "invalid_image", f"upload {name!r} is truncated or corrupt: {exc}") from None
    except Exception as exc:  # a decoder's own error type: still the upload's fault, never a 500
        raise Problem(422, "invalid_image", f"upload {name!r} cannot be decoded: {type(exc).__name__}") from None
    finally:
        img.close()
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise Problem(422, "invalid_image", f"upload {name!r} decodes to an unexpected shape {rgb.shape}")
    return np.ascontiguousarray(rgb[:, :, ::-1])
