"""Image reading: files to ``H x W x 3`` uint8 **BGR** arrays, as py-faster-rcnn's ``cv2.imread`` gave.

We decode with PIL (no OpenCV dependency) and reproduce what ``cv2.imread(path, IMREAD_COLOR)`` did in the
py-faster-rcnn era for the inputs a detection dataset contains:

* grayscale (``L``, ``1``) is replicated to three channels;
* an alpha channel (``RGBA``, ``LA``, ``PA``, palette with transparency) is **dropped**: the stored colour
  values are kept as they are, not composited on a background (cv2 does the same: BGRA -> BGR);
* palette (``P``) images are expanded through their palette;
* CMYK (and YCbCr, LAB) JPEGs are converted to RGB by PIL (Adobe inverted CMYK handled by the decoder;
  no ICC colour management, like cv2);
* 16-bit images keep their high byte (``value >> 8``, as cv2 / libpng ``strip_16``); 32-bit integer
  (``I``) images are read as 16-bit data; float (``F``) images are clipped to 0..255 (NaN/inf refused);
* the file type is sniffed from its content, so a PNG named ``.jpg`` reads fine;
* the EXIF orientation tag is **not** applied: VOC/COCO boxes are in the stored pixel orientation (modern
  ``cv2.imread`` rotates by EXIF; py-faster-rcnn's OpenCV 2.4 did not, and its annotations assume so). The one
  exception is :func:`read_image` with ``expect_size``: when an annotation gives the *displayed* size of an
  image whose orientation (5-8) swaps width and height, its boxes were drawn on the displayed image, and the
  image is returned transposed as displayed (:func:`display_matches`);
* multi-frame files (GIF, TIFF) give their first frame.

Only regular files are opened (a FIFO, a device or a folder is refused before it is opened, and the open is
non-blocking). An image over the decoded-pixel budget (``max_pixels``, :data:`DEFAULT_MAX_PIXELS`) is refused
from its header, before any pixel is decoded. A missing, empty, truncated, corrupt or non-image file raises
:class:`~frcnn_trt.errors.ImageError` naming the file and the problem. :func:`read_header` and
:func:`image_size` read only the header.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from frcnn_trt.errors import ImageError
from frcnn_trt.files import check_regular_file

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageHeader",
    "display_matches",
    "image_size",
    "read_header",
    "read_image",
    "to_rgb_uint8",
]

#: the decoded-pixel budget of one image (width x height): 64 megapixels, ~190 MB as BGR uint8
DEFAULT_MAX_PIXELS = 64_000_000

_OTHER_COLOUR_MODES = frozenset({"CMYK", "YCbCr", "LAB", "HSV"})
_ORIENTATION_TAG = 0x0112
#: EXIF orientation -> the PIL transposition that shows the image upright (as ``ImageOps.exif_transpose``)
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says: format, stored size and EXIF orientation (1 = upright or none)."""

    format: str
    width: int  # stored (decoded) pixel columns
    height: int
    orientation: int = 1

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def displayed_size(self) -> tuple[int, int]:
        """``(width, height)`` as a viewer shows it: orientations 5-8 swap the two."""
        return (self.height, self.width) if self.orientation >= 5 else (self.width, self.height)


@contextmanager
def _open(path: Path) -> Iterator[Image.Image]:
    """A lazily opened (header only) image of a regular file; every failure is an :class:`ImageError`."""
    st = check_regular_file(path, "image file", ImageError)
    if st.st_size == 0:
        raise ImageError(f"{path}: image file is empty (0 bytes)")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ImageError(f"{path}: cannot open image file ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):  # swapped for a FIFO after the check
            raise ImageError(f"{path}: image file must be a regular file")
        try:
            img = Image.open(fh)
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{path}: image too large to decode safely ({exc})") from None
        except UnidentifiedImageError:
            raise ImageError(f"{path}: not an image file (or an unsupported format)") from None
        except Exception as exc:  # PIL's parsers raise many types on hostile bytes
            raise ImageError(f"{path}: not an image file (or an unsupported format): {_reason(exc)}") from None
        with img:
            yield img


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation 1..8 from the header (1 when absent or invalid); never decodes pixels."""
    if img.format == "PNG" and "exif" not in img.info:
        return 1  # PIL's PNG getexif() would decode the image to look for a late eXIf chunk
    try:
        value = img.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # malformed EXIF is metadata we can do without, not a bad image
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _header_of(img: Image.Image, path: Path) -> ImageHeader:
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(f"{path}: image has an empty size {width}x{height}")
    return ImageHeader(str(img.format or "unknown"), int(width), int(height), _orientation(img))


def _check_budget(header: ImageHeader, path: Path, max_pixels: int | None) -> None:
    if max_pixels is not None and header.pixels > max_pixels:
        raise ImageError(
            f"{path}: image is {header.width}x{header.height} = {header.pixels / 1e6:.1f} megapixels, over the "
            f"decoded-pixel budget of {max_pixels / 1e6:.1f} megapixels"
        )


def read_header(path: str | Path) -> ImageHeader:
    """The header of an image file (format, stored size, EXIF orientation) without decoding pixels."""
    path = Path(path)
    with _open(path) as img:
        return _header_of(img, path)


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image from its header only (no pixel decode), stored orientation."""
    header = read_header(path)
    return header.width, header.height


def display_matches(header: ImageHeader, size: tuple[int, int]) -> bool:
    """Whether ``size`` is the image's *displayed* size and not its stored one (an EXIF orientation 5-8 that
    swaps width and height): boxes annotated against it are in the displayed orientation."""
    stored = (header.width, header.height)
    return tuple(size) != stored and header.orientation >= 5 and tuple(size) == header.displayed_size


def to_rgb_uint8(img: Image.Image, path: str | Path) -> np.ndarray:
    """Decoded PIL image of any mode -> contiguous ``H x W x 3`` uint8 RGB (files and ``serve``'s uploads alike);
    ``path`` names the source in errors."""
    mode = img.mode
    if mode in ("RGB", "RGBA", "RGBX"):
        return np.asarray(img)[:, :, :3]
    if mode in ("L", "LA"):
        gray = np.asarray(img)
        gray = gray if gray.ndim == 2 else gray[:, :, 0]
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("P", "PA"):
        # Through RGBA so that PIL does not warn about transparency; the alpha is then dropped.
        return np.asarray(img.convert("RGBA"))[:, :, :3]
    if mode == "1":
        return to_rgb_uint8(img.convert("L"), path)
    if mode in _OTHER_COLOUR_MODES:
        return np.asarray(img.convert("RGB"))
    if mode.startswith("I;16") or mode == "I":
        raw = np.asarray(img).astype(np.int64)
        high = (np.clip(raw, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(high[:, :, None], 3, axis=2)
    if mode == "F":
        flt = np.asarray(img, dtype=np.float64)
        if not np.isfinite(flt).all():
            raise ImageError(f"{path}: float image has NaN/inf pixels")
        gray8 = np.clip(np.rint(flt), 0, 255).astype(np.uint8)
        return np.repeat(gray8[:, :, None], 3, axis=2)
    try:
        return np.asarray(img.convert("RGB"))
    except (ValueError, OSError) as exc:
        raise ImageError(f"{path}: unsupported image mode {mode!r} ({exc})") from None


def _decode(img: Image.Image, path: Path, transpose: Image.Transpose | None) -> np.ndarray:
    try:
        img.load()
        if transpose is not None:
            img = img.transpose(transpose)
        return to_rgb_uint8(img, path)
    except ImageError:
        raise
    except MemoryError as exc:
        raise ImageError(f"{path}: image too large to decode ({_reason(exc)})") from None
    except Exception as exc:  # PIL reports truncation / corruption as OSError, SyntaxError, ...
        raise ImageError(f"{path}: truncated or corrupt image ({_reason(exc)})") from None


def read_image(
    path: str | Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, expect_size: tuple[int, int] | None = None
) -> np.ndarray:
    """Read an image file as a contiguous ``H x W x 3`` uint8 array in **BGR** channel order.

    ``max_pixels``: the decoded-pixel budget, checked from the header before decoding (None: no limit).
    ``expect_size``: the ``(width, height)`` the caller's annotation gives; the stored image when it matches,
    the EXIF-transposed (displayed) image when only that matches (:func:`display_matches`), otherwise an
    :class:`ImageError` naming both sizes.
    """
    path = Path(path)
    with _open(path) as img:
        header = _header_of(img, path)
        _check_budget(header, path, max_pixels)
        transpose = None
        if expect_size is not None and tuple(expect_size) != (header.width, header.height):
            if not display_matches(header, expect_size):
                raise ImageError(
                    f"{path}: image is {header.width}x{header.height} but its annotation says "
                    f"{expect_size[0]}x{expect_size[1]} (the file changed, or a wrong annotation size)"
                )
            transpose = _TRANSPOSE[header.orientation]
        rgb = _decode(img, path, transpose)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageError(f"{path}: decoded image has an unexpected shape {rgb.shape}")
    return np.ascontiguousarray(rgb[:, :, ::-1])
