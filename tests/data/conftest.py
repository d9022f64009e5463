"""Builders for small VOC / COCO datasets written into ``tmp_path`` (nothing is downloaded)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pytest
from PIL import Image

# (name, xmin, ymin, xmax, ymax, difficult) in VOC's 1-based inclusive pixels; coordinates may be strings
VocObj = tuple[str, object, object, object, object, int]


def write_image(path: Path, size: tuple[int, int] = (64, 48), fmt: str = "JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 120, 150)).save(path, format=fmt)
    return path


def voc_xml(objects: Iterable[VocObj], size: tuple[int, int] | None = (64, 48), filename: str = "x.jpg") -> str:
    parts = ["<annotation>", "  <folder>VOC</folder>", f"  <filename>{filename}</filename>"]
    if size is not None:
        parts.append(f"  <size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    for name, x1, y1, x2, y2, difficult in objects:
        parts += [
            "  <object>",
            f"    <name>{name}</name>",
            "    <pose>Unspecified</pose>",
            "    <truncated>0</truncated>",
            f"    <difficult>{difficult}</difficult>",
            f"    <bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>",
            "  </object>",
        ]
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


class VocBuilder:
    """Writes a VOC-format folder: images, XMLs, ``ImageSets/Main/<split>.txt``, optional classes.txt."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def add(
        self,
        image_id: str,
        objects: Sequence[VocObj] = (),
        *,
        size: tuple[int, int] | None = (64, 48),
        image: bool = True,
        image_size: tuple[int, int] | None = None,
        fmt: str = "JPEG",
        xml: str | None = None,
    ) -> VocBuilder:
        """One image + annotation; ``xml`` replaces the generated XML text (for malformed cases)."""
        ann = self.root / "Annotations" / f"{image_id}.xml"
        ann.parent.mkdir(parents=True, exist_ok=True)
        ann.write_text(xml if xml is not None else voc_xml(objects, size, f"{image_id}.jpg"))
        if image:
            write_image(self.root / "JPEGImages" / f"{image_id}.jpg", image_size or size or (64, 48), fmt)
        return self

    def split(self, name: str, ids: Iterable[str]) -> VocBuilder:
        main = self.root / "ImageSets" / "Main"
        main.mkdir(parents=True, exist_ok=True)
        (main / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
        return self

    def classes(self, names: Iterable[str]) -> VocBuilder:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "classes.txt").write_text("".join(f"{n}\n" for n in names))
        return self


@pytest.fixture
def voc_builder(tmp_path: Path) -> VocBuilder:
    return VocBuilder(tmp_path / "vocset")


@pytest.fixture
def voc_root_builder(tmp_path: Path) -> Callable[..., VocBuilder]:
    """``make(data_root, year)`` → a builder for ``<data_root>/VOCdevkit<year>/VOC<year>``."""

    def make(year: str, data_root: Path | None = None) -> VocBuilder:
        return VocBuilder((data_root or tmp_path / "data") / f"VOCdevkit{year}" / f"VOC{year}")

    return make


def write_coco(path: Path, images: list[dict], annotations: list[dict], categories: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


@pytest.fixture
def coco_writer() -> Callable[..., Path]:
    return write_coco


@pytest.fixture
def image_writer() -> Callable[..., Path]:
    return write_image
