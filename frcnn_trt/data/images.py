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
  (``I``) images are read as 16-bit data; float (``F``) images are clipped to 0..255;
* the file type is sniffed from its content, so a PNG named ``.jpg`` reads fine;
* the EXIF orientation tag is **not** applied: VOC/COCO boxes are in the stored pixel orientation (modern
  ``cv2.imread`` rotates by EXIF; py-faster-rcnn's OpenCV 2.4 did not, and its annotations assume so);
* multi-frame files (GIF, TIFF) give their first frame.

A missing, truncated, corrupt or non-image file raises :class:`~frcnn_trt.errors.ImageError` naming the
file and the problem. :func:`image_size` reads only the header.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from frcnn_trt.errors import ImageError

__all__ = ["image_size", "read_image"]

_OTHER_COLOUR_MODES = frozenset({"CMYK", "YCbCr", "LAB", "HSV"})


def _open(path: Path) -> Image.Image:
    """Open lazily (header only), turning every failure into an :class:`ImageError`."""
    if not path.exists():
        raise ImageError(f"image file not found: {path}")
    if not path.is_file():
        raise ImageError(f"image path is not a file: {path}")
    try:
        return Image.open(path)
    except UnidentifiedImageError:
        raise ImageError(f"not an image file (or an unsupported format): {path}") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image too large to decode safely: {path} ({exc})") from None
    except OSError as exc:
        raise ImageError(f"cannot open image {path}: {exc}") from None


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image from its header only (no pixel decode), stored orientation."""
    path = Path(path)
    with _open(path) as img:
        width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(f"image has an empty size {width}x{height}: {path}")
    return int(width), int(height)


def _to_rgb_uint8(img: Image.Image, path: Path) -> np.ndarray:
    """Decoded PIL image of any mode -> contiguous ``H x W x 3`` uint8 RGB."""
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
        return _to_rgb_uint8(img.convert("L"), path)
    if mode in _OTHER_COLOUR_MODES:
        return np.asarray(img.convert("RGB"))
    if mode.startswith("I;16") or mode == "I":
        raw = np.asarray(img).astype(np.int64)
        high = (np.clip(raw, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(high[:, :, None], 3, axis=2)
    if mode == "F":
        flt = np.asarray(img, dtype=np.float64)
        if not np.isfinite(flt).all():
            raise ImageError(f"float image has NaN/inf pixels: {path}")
        gray8 = np.clip(np.rint(flt), 0, 255).astype(np.uint8)
        return np.repeat(gray8[:, :, None], 3, axis=2)
    try:
        return np.asarray(img.convert("RGB"))
    except (ValueError, OSError) as exc:
        raise ImageError(f"unsupported image mode {mode!r}: {path} ({exc})") from None


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as a contiguous ``H x W x 3`` uint8 array in **BGR** channel order."""
    path = Path(path)
    with _open(path) as img:
        try:
            img.load()
        except (OSError, SyntaxError, ValueError) as exc:  # PIL reports truncation / corruption as these
            raise ImageError(f"truncated or corrupt image {path}: {exc}") from None
        except (Image.DecompressionBombError, MemoryError) as exc:
            raise ImageError(f"image too large to decode: {path} ({exc})") from None
        rgb = _to_rgb_uint8(img, path)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageError(f"decoded image has an unexpected shape {rgb.shape}: {path}")
    return np.ascontiguousarray(rgb[:, :, ::-1])
