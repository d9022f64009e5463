"""read_image / image_size: PIL decoding reproducing cv2.imread(IMREAD_COLOR) as BGR uint8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from frcnn_trt.data.images import image_size, read_image
from frcnn_trt.errors import DatasetError, ImageError


def _rgb(h: int = 6, w: int = 8) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_rgb_png_is_returned_as_bgr(tmp_path: Path) -> None:
    rgb = _rgb()
    Image.fromarray(rgb).save(tmp_path / "a.png")
    im = read_image(tmp_path / "a.png")
    assert im.dtype == np.uint8 and im.shape == (6, 8, 3) and im.flags.c_contiguous
    np.testing.assert_array_equal(im, rgb[:, :, ::-1])


def test_grayscale_and_bilevel_become_three_equal_channels(tmp_path: Path) -> None:
    gray = _rgb()[:, :, 0]
    Image.fromarray(gray).save(tmp_path / "g.png")
    im = read_image(tmp_path / "g.png")
    assert im.shape == (6, 8, 3)
    for c in range(3):
        np.testing.assert_array_equal(im[:, :, c], gray)
    Image.fromarray(gray > 127).save(tmp_path / "b.png")  # mode "1"
    bw = read_image(tmp_path / "b.png")
    np.testing.assert_array_equal(bw[:, :, 1], np.where(gray > 127, 255, 0))


def test_alpha_is_dropped_not_composited(tmp_path: Path) -> None:
    rgb = _rgb()
    alpha = np.zeros((6, 8), dtype=np.uint8)  # fully transparent: colours must survive anyway (as cv2)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgb[:, :, ::-1])
    Image.fromarray(np.dstack([rgb[:, :, 0], alpha]), "LA").save(tmp_path / "la.png")
    la = read_image(tmp_path / "la.png")
    np.testing.assert_array_equal(la, np.repeat(rgb[:, :, :1], 3, axis=2))


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    pal = Image.fromarray(_rgb()).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    expected = np.asarray(pal.convert("RGB"))[:, :, ::-1]
    pal.save(tmp_path / "p.png")
    pal.save(tmp_path / "pt.png", transparency=2)
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), expected)
    np.testing.assert_array_equal(read_image(tmp_path / "pt.png"), expected)


def test_cmyk_jpeg_is_converted_to_colour(tmp_path: Path) -> None:
    red = np.zeros((16, 16, 3), dtype=np.uint8)
    red[..., 0] = 255
    Image.fromarray(red).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    im = read_image(tmp_path / "c.jpg")
    assert im.shape == (16, 16, 3)
    np.testing.assert_allclose(im.reshape(-1, 3).mean(axis=0), [0, 0, 255], atol=3)  # BGR red


def test_png_bytes_named_jpg_are_sniffed(tmp_path: Path) -> None:
    rgb = _rgb()
    Image.fromarray(rgb).save(tmp_path / "x.jpg", format="PNG")
    np.testing.assert_array_equal(read_image(tmp_path / "x.jpg"), rgb[:, :, ::-1])  # lossless: exact


def test_sixteen_bit_keeps_the_high_byte(tmp_path: Path) -> None:
    values = np.array([[0x0000, 0x12FF, 0xFF00, 0xFFFF]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    im = read_image(tmp_path / "d.png")
    np.testing.assert_array_equal(im[0, :, 0], [0x00, 0x12, 0xFF, 0xFF])
    np.testing.assert_array_equal(im[:, :, 0], im[:, :, 2])


def test_exif_orientation_is_not_applied(tmp_path: Path) -> None:
    img = Image.fromarray(_rgb(10, 20))
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "r.jpg", exif=exif, quality=95)
    assert read_image(tmp_path / "r.jpg").shape == (10, 20, 3)
    assert image_size(tmp_path / "r.jpg") == (20, 10)


def test_image_size_reads_the_header_only(tmp_path: Path) -> None:
    Image.fromarray(_rgb(30, 50)).save(tmp_path / "a.jpg", quality=90)
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    assert image_size(tmp_path / "a.jpg") == (50, 30)
    assert image_size(tmp_path / "cut.jpg") == (50, 30)  # no pixel decode, so truncation is not noticed


def test_truncated_jpeg_raises_naming_the_file(tmp_path: Path) -> None:
    Image.fromarray(_rgb(64, 64)).save(tmp_path / "a.jpg", quality=90)
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"cut\.jpg: truncated or corrupt"):
        read_image(tmp_path / "cut.jpg")


def test_text_file_named_jpg_raises(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("not an image\n")
    with pytest.raises(ImageError, match=r"notes\.jpg: not an image"):
        read_image(tmp_path / "notes.jpg")
    with pytest.raises(ImageError, match=r"notes\.jpg"):
        image_size(tmp_path / "notes.jpg")


def test_missing_file_and_directory_raise(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"missing\.jpg: image file not found"):
        read_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="must be a regular file, this is a folder"):
        image_size(tmp_path)
    assert issubclass(ImageError, DatasetError)
