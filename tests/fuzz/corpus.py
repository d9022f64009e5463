"""A generated corpus of malformed user files, one :class:`Case` per (kind, fault).

Each case writes its file(s) into a fresh folder prepared from a small valid :class:`Base` (a 4-image synthetic
dataset, a tiny checkpoint, an export, a proposals file, results files) and names the reader that must take it.
The fault classes are generic, so every kind gets all of them: whole-file faults (empty, truncated, byte-order
marks, UTF-16, undecodable bytes, NUL bytes, a FIFO, a folder, a symlink to a device), and for structured kinds
every chosen field replaced by each bad value (wrong types, NaN/inf/huge/negative numbers, huge ints, deep
nesting, NUL bytes, megabyte strings, paths escaping their folder).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Base", "Case", "all_cases", "write_fault"]


@dataclass(frozen=True)
class Base:
    """The valid files the cases start from (read-only: a case copies what it changes)."""

    dataset: Path  # a synthetic VOC-layout dataset with classes.txt, split "test" of 2 images, "trainval" of 2
    checkpoint: Path  # .safetensors with its .json sidecar (the class names of the dataset)
    export: Path  # an export folder (export.json + the ONNX files)
    proposals: Path  # proposals.npz with its proposals.json
    coco_json: Path  # a COCO annotations file over the dataset's images
    image_ids: tuple[str, ...]  # the ids of split "test"


@dataclass(frozen=True)
class Case:
    """One corpus entry: ``build(base, folder)`` writes the faulty input and returns what the reader takes."""

    kind: str
    name: str
    build: Callable[[Base, Path], Any]
    #: the other records the reader must keep (ids), when the fault is in one record of several
    survivors: tuple[str, ...] = ()
    #: the fault must be refused (the reader raises), never accepted
    must_refuse: bool = False
    tags: frozenset[str] = field(default_factory=frozenset)

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.name}"


# ------------------------------------------------------------------------------------------------ fault values

HUGE_INT = "9" * 400
#: raw JSON literals put where a value belongs (the file stays syntactically JSON unless the literal is not)
JSON_BAD = {
    "null": "null", "list": "[]", "list1": "[1]", "object": '{"a": 1}', "string": '"x"', "true": "true",
    "zero": "0", "neg": "-1", "negf": "-0.5", "nan": "NaN", "inf": "Infinity", "ninf": "-Infinity",
    "overflow": "1e999", "big": "1e30", "hugeint": HUGE_INT, "toohugeint": "9" * 5000, "deep": "[" * 200 + "]" * 200,
    "nul": '"a\\u0000b"', "longstr": json.dumps("x" * 200_000), "escape": '"../../etc/passwd"',
    "abs": '"/etc/passwd"', "float": "2.5", "emptystr": '""', "control": '"a\\nb\\tc"',
}
#: raw YAML scalars/flow values for a config key or a ``--set`` value
YAML_BAD = {
    "nan": ".nan", "inf": ".inf", "ninf": "-.inf", "neg": "-1", "zero": "0", "negf": "-0.5", "huge": HUGE_INT,
    "big": "1e400", "str": "abc", "null": "null", "list": "[]", "list0": "[0]", "map": "{a: 1}", "bool": "true",
    "deep": "[" * 100 + "]" * 100, "float": "2.5", "nul": '"a\\0b"', "listneg": "[-5]", "listnan": "[.nan]",
    "longstr": "x" * 100_000, "hugeint_list": f"[{HUGE_INT}]",
}
XML_BAD = {
    "empty": "", "neg": "-5", "nan": "nan", "inf": "inf", "huge": "1e40", "hugeint": HUGE_INT, "word": "abc",
    "float": "2.5", "nul": "&#0;", "zero": "0", "bigpx": "100000000", "cdata": "<![CDATA[7]]>", "space": " 7 ",
    "longstr": "x" * 100_000, "escape": "../../etc/passwd",
}
#: the values refused for the whole file by the JSON reader itself (not one record's fault)
FILE_LEVEL = frozenset({"toohugeint", "deep"})
#: the values every field gets (the others go to a few representative fields only, to keep the corpus fast)
JSON_CORE = ("null", "list", "object", "string", "neg", "nan", "inf", "overflow", "hugeint", "deep", "nul",
             "toohugeint")
#: whole-file faults a reader must accept (the text is the valid text, differently encoded)
BENIGN = frozenset({"utf8_bom", "crlf", "utf16"})
TEXT_FAULTS = ("empty", "truncated", "utf8_bom", "utf16", "bad_byte", "nul", "fifo", "folder", "devnull",
               "whitespace", "binary", "crlf")


def write_fault(path: Path, fault: str, valid: bytes) -> None:
    """Replace ``path`` by ``valid`` with a whole-file ``fault`` applied."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    mid = len(valid) // 2
    if fault == "fifo":
        os.mkfifo(path)
        return
    if fault == "folder":
        path.mkdir()
        return
    if fault == "devnull":
        path.symlink_to("/dev/null")
        return
    data = {
        "empty": b"",
        "truncated": valid[:mid],
        "utf8_bom": b"\xef\xbb\xbf" + valid,
        "utf16": b"\xff\xfe" + valid.decode("utf-8", "replace").encode("utf-16-le"),
        "bad_byte": valid[:mid] + b"\xff\xfe\x80" + valid[mid:],
        "nul": valid[:mid] + b"\x00" + valid[mid:],
        "whitespace": b" \n\t\n",
        "binary": bytes(range(256)) * 4,
        "crlf": valid.replace(b"\n", b"\r\n"),
    }[fault]
    path.write_bytes(data)


def _json_paths(doc: Any, limit: int, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Paths to the fields of ``doc`` (objects: every key; lists: the first item), shallow first, at most
    ``limit``."""
    queue: list[tuple[tuple[Any, ...], Any]] = [(prefix, doc)]
    n = 0
    while queue and n < limit:
        path, value = queue.pop(0)
        if path:
            yield path
            n += 1
        if isinstance(value, dict):
            queue.extend(((*path, k), v) for k, v in value.items())
        elif isinstance(value, list) and value:
            queue.append(((*path, 0), value[0]))


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    doc = json.loads(json.dumps(doc))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


_SENTINEL = "@@FUZZ@@"


def json_with(doc: Any, path: tuple[Any, ...], literal: str) -> str:
    """``doc`` as JSON text with the field at ``path`` replaced by the raw ``literal``."""
    return json.dumps(_set(doc, path, _SENTINEL), indent=1).replace(f'"{_SENTINEL}"', literal)


def _label(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path)[:60]


# ------------------------------------------------------------------------------------------------ helpers


def copy_dataset(base: Base, folder: Path) -> Path:
    """A copy of the dataset whose images are symlinks (a case only rewrites what it breaks)."""
    root = folder / "ds"
    shutil.copytree(base.dataset, root, symlinks=True, ignore=shutil.ignore_patterns("JPEGImages"))
    (root / "JPEGImages").mkdir()
    for img in (base.dataset / "JPEGImages").iterdir():
        (root / "JPEGImages" / img.name).symlink_to(img)
    return root


def _png(width: int, height: int, payload: bytes = b"\x00\x00\x00\x00") -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(payload)) + chunk(b"IEND", b""))


# ------------------------------------------------------------------------------------------------ kinds


def _voc_xml_cases(ids: tuple[str, ...]) -> Iterator[Case]:
    victim, others = ids[0], ids[1:]

    def whole(fault: str) -> Callable[[Base, Path], Any]:
        def build(base: Base, folder: Path) -> Any:
            root = copy_dataset(base, folder)
            xml = root / "Annotations" / f"{victim}.xml"
            write_fault(xml, fault, (base.dataset / "Annotations" / f"{victim}.xml").read_bytes())
            return f"synth:{root}:test"
        return build

    for fault in TEXT_FAULTS:
        yield Case("voc_xml", fault, whole(fault), survivors=others)

    def raw(text: str) -> Callable[[Base, Path], Any]:
        def build(base: Base, folder: Path) -> Any:
            root = copy_dataset(base, folder)
            (root / "Annotations" / f"{victim}.xml").write_text(text, encoding="utf-8")
            return f"synth:{root}:test"
        return build

    entities = "".join(f'<!ENTITY {chr(98 + i)} "' + f"&{chr(97 + i)};" * 10 + '">' for i in range(8))
    bomb = f'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">{entities}]><annotation>&i;</annotation>'
    specials = {
        "unknown_encoding": '<?xml version="1.0" encoding="klingon"?><annotation/>',
        "latin1_decl": '<?xml version="1.0" encoding="latin-1"?><annotation><filename>\u00e9.jpg</filename>'
                       "</annotation>",
        "external_entity": '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                           '<annotation><filename>&x;</filename></annotation>',
        "billion_laughs": bomb,
        "deep": "<annotation>" + "<a>" * 5000 + "</a>" * 5000 + "</annotation>",
        "not_annotation": "<html><body/></html>",
        "no_objects": "<annotation><size><width>10</width><height>10</height></size></annotation>",
        "many_objects": "<annotation><size><width>100</width><height>100</height></size>" + (
            "<object><name>circle</name><difficult>0</difficult><bndbox><xmin>1</xmin><ymin>1</ymin>"
            "<xmax>9</xmax><ymax>9</ymax></bndbox></object>") * 3000 + "</annotation>",
    }
    for name, text in specials.items():
        yield Case("voc_xml", name, raw(text), survivors=others)

    def field_fault(tag: str, value: str) -> Callable[[Base, Path], Any]:
        def build(base: Base, folder: Path) -> Any:
            root = copy_dataset(base, folder)
            xml = root / "Annotations" / f"{victim}.xml"
            text = xml.read_text(encoding="utf-8")
            text = re.sub(rf"<{tag}>[^<]*</{tag}>", f"<{tag}>{value}</{tag}>", text, count=1)
            xml.write_text(text, encoding="utf-8")
            return f"synth:{root}:test"
        return build

    for tag in ("width", "height", "xmin", "ymin", "xmax", "ymax", "difficult", "name", "filename"):
        for label, value in XML_BAD.items():
            yield Case("voc_xml", f"{tag}={label}", field_fault(tag, value), survivors=others)


def _image_set_cases(ids: tuple[str, ...]) -> Iterator[Case]:
    def whole(fault: str) -> Callable[[Base, Path], Any]:
        def build(base: Base, folder: Path) -> Any:
            root = copy_dataset(base, folder)
            write_fault(root / "ImageSets" / "Main" / "test.txt", fault, "\n".join(ids).encode() + b"\n")
            return f"synth:{root}:test"
        return build

    for fault in TEXT_FAULTS:
        yield Case("image_set", fault, whole(fault))

    def extra(line: bytes) -> Callable[[Base, Path], Any]:
        def build(base: Base, folder: Path) -> Any:
            root = copy_dataset(base, folder)
            body = ids[0].encode() + b"\n" + line + b"\n" + b"\n".join(i.encode() for i in ids[1:]) + b"\n"
            (root / "ImageSets" / "Main" / "test.txt").write_bytes(body)
            return f"synth:{root}:test"
        return build

    lines = {
        "undecodable": b"00\xff\xfe01", "nul": b"000\x00001", "long_id": b"9" * 5000, "escape": b"../../etc/passwd",
        "abs": b"/etc/passwd", "missing_id": b"999999", "dup": ids[0].encode(), "spaces": b"a b c d",
        "control": b"\x1b[31mred", "bom_mid": b"\xef\xbb\xbf000001", "neg_flag": ids[0].encode() + b" -1",
        "many_fields": b" ".join([b"x"] * 1000), "glob": b"*", "dotdot": b"..",
    }
    for name, line in lines.items():
        yield Case("image_set", f"line_{name}", extra(line), survivors=ids)


def _classes_cases(ids: tuple[str, ...]) -> Iterator[Case]:
    def whole(fault: str) -> Callable[[Base, Path], Any]:
        def build(base: Base, folder: Path) -> Any:
            root = copy_dataset(base, folder)
            write_fault(root / "classes.txt", fault, (base.dataset / "classes.txt").read_bytes())
            return f"synth:{root}:test"
        return build

    for fault in TEXT_FAULTS:
        yield Case("classes_txt", fault, whole(fault), survivors=ids if fault in BENIGN else ())

    def content(body: bytes) -> Callable[[Base, Path], Any]:
        def build(base: Base, folder: Path) -> Any:
            root = copy_dataset(base, folder)
            (root / "classes.txt").write_bytes(body)
            return f"synth:{root}:test"
        return build

    bodies = {
        "dup": b"circle\ncircle\n", "background": b"__background__\ncircle\n", "only_bg": b"__background__\n",
        "many": b"\n".join(b"c%d" % i for i in range(20000)), "megabyte_name": b"c" * (1 << 20) + b"\n",
        "nul_name": b"cir\x00cle\nsquare\n", "undecodable_line": b"circle\nsq\xffuare\ntriangle\nstar\ncross\n",
        "spaces": b"circle square\n", "comment_only": b"# nothing\n",
    }
    for name, body in bodies.items():
        yield Case("classes_txt", name, content(body))


def _coco_cases(ids: tuple[str, ...]) -> Iterator[Case]:
    def whole(fault: str) -> Callable[[Base, Path], Any]:
        def build(base: Base, folder: Path) -> Any:
            ann = folder / "instances.json"
            write_fault(ann, fault, base.coco_json.read_bytes())
            return f"coco:{ann}:{base.dataset / 'JPEGImages'}"
        return build

    for fault in TEXT_FAULTS:
        yield Case("coco_json", fault, whole(fault))

    def field_fault(path: tuple[Any, ...], literal: str) -> Callable[[Base, Path], Any]:
        def build(base: Base, folder: Path) -> Any:
            doc = json.loads(base.coco_json.read_text())
            ann = folder / "instances.json"
            ann.write_text(json_with(doc, path, literal), encoding="utf-8")
            return f"coco:{ann}:{base.dataset / 'JPEGImages'}"
        return build

    paths = [("images", 0, k) for k in ("id", "file_name", "width", "height")]
    paths += [("annotations", 0, k) for k in ("image_id", "category_id", "bbox", "iscrowd", "area")]
    paths += [("annotations", 0, "bbox", 2), ("categories", 0, "id"), ("categories", 0, "name"), ("images",),
              ("annotations",), ("categories",)]
    for path in paths:
        for label, literal in JSON_BAD.items():
            if label not in JSON_CORE and path[-1] not in ("file_name", "bbox", "width", "id"):
                continue
            # COCO image ids are the JSON ids ("1", "2", "3"); the fault is in image 1 or its first annotation
            record_level = path[0] in ("images", "annotations") and len(path) > 1 and label not in FILE_LEVEL
            survivors = ("2", "3") if record_level else ()
            yield Case("coco_json", f"{_label(path)}={label}", field_fault(path, literal), survivors=survivors)


def _image_cases(ids: tuple[str, ...]) -> Iterator[Case]:
    victim = ids[0]

    def replace(data: Callable[[Base], bytes] | str) -> Callable[[Base, Path], Any]:
        def build(base: Base, folder: Path) -> Any:
            root = copy_dataset(base, folder)
            img = root / "JPEGImages" / f"{victim}.jpg"
            valid = (base.dataset / "JPEGImages" / f"{victim}.jpg").read_bytes()
            if isinstance(data, str):
                write_fault(img, data, valid)
            else:
                img.unlink()
                img.write_bytes(data(base))
            return f"synth:{root}:test", img
        return build

    for fault in ("empty", "truncated", "fifo", "folder", "devnull", "binary", "whitespace", "nul"):
        yield Case("image", fault, replace(fault), survivors=ids[1:])

    def jpeg_of(base: Base) -> bytes:
        return (base.dataset / "JPEGImages" / f"{victim}.jpg").read_bytes()

    crafted: dict[str, Callable[[Base], bytes]] = {
        "text": lambda b: b"hello, I am not an image\n",
        "png_bomb": lambda b: _png(60000, 60000),
        "png_bad_crc": lambda b: _png(8, 8)[:-5] + b"\x00\x00\x00\x00\x00",
        "png_wrong_size": lambda b: _png(3, 3, b"\x00" + b"\x00" * 9),
        "jpeg_garbage_tail": lambda b: jpeg_of(b)[:200] + bytes(range(256)) * 8,
        "svg": lambda b: b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        "gif_zero": lambda b: b"GIF89a\x00\x00\x00\x00\x00\x00\x00;",
        "bmp_header_only": lambda b: b"BM" + b"\x00" * 52,
        "tiff_nan": lambda b: _tiff_nan(),
    }
    for name, data in crafted.items():
        yield Case("image", name, replace(data), survivors=ids[1:])


def _tiff_nan() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    arr = np.full((8, 8), np.nan, dtype=np.float32)
    buf = io.BytesIO()
    Image.fromarray(arr, mode="F").save(buf, format="TIFF")
    return buf.getvalue()


def _config_cases() -> Iterator[Case]:
    keys = ["TRAIN.SCALES", "TRAIN.MAX_SIZE", "TRAIN.IMS_PER_BATCH", "TRAIN.BATCH_SIZE", "TRAIN.RPN_BATCHSIZE",
            "TRAIN.FG_FRACTION", "TRAIN.RPN_NMS_THRESH", "TRAIN.RPN_POSITIVE_OVERLAP", "TEST.NMS", "TEST.SCALES",
            "TEST.MAX_SIZE", "TEST.RPN_POST_NMS_TOP_N", "SOLVER.BASE_LR", "SOLVER.MAX_ITERS", "SOLVER.GAMMA",
            "MODEL.ANCHOR_SCALES", "MODEL.PIXEL_MEANS", "RNG_SEED", "MODEL.NET", "EXP_DIR"]
    #: (key, bad label) pairs a config must refuse: non-finite and out-of-range values named by the issue
    refuse = {("TRAIN.IMS_PER_BATCH", "zero"), ("TRAIN.RPN_BATCHSIZE", "zero"), ("TRAIN.SCALES", "list0"),
              ("TRAIN.MAX_SIZE", "zero"), ("TEST.NMS", "nan"), ("TEST.NMS", "neg"), ("SOLVER.BASE_LR", "inf"),
              ("RNG_SEED", "nan"), ("RNG_SEED", "huge"), ("TRAIN.MAX_SIZE", "neg"), ("TRAIN.SCALES", "listneg"),
              ("TRAIN.FG_FRACTION", "nan"), ("TRAIN.RPN_NMS_THRESH", "nan"), ("SOLVER.BASE_LR", "nan")}

    def yaml_file(key: str, literal: str) -> Callable[[Base, Path], Any]:
        def build(base: Base, folder: Path) -> Any:
            section, _, name = key.rpartition(".")
            text = f"{section}:\n  {name}: {literal}\n" if section else f"{name}: {literal}\n"
            path = folder / "cfg.yml"
            path.write_text(text, encoding="utf-8")
            return path
        return build

    def set_pair(key: str, literal: str) -> Callable[[Base, Path], Any]:
        def build(base: Base, folder: Path) -> Any:
            return [key, literal]
        return build

    for key in keys:
        for label, literal in YAML_BAD.items():
            must = (key, label) in refuse
            yield Case("config_yaml", f"{key}={label}", yaml_file(key, literal), must_refuse=must)
            if label in ("nan", "inf", "neg", "zero", "huge", "str", "list0", "nul"):
                yield Case("config_set", f"{key}={label}", set_pair(key, literal), must_refuse=must)

    def whole(fault: str) -> Callable[[Base, Path], Any]:
        def build(base: Base, folder: Path) -> Any:
            path = folder / "cfg.yml"
            write_fault(path, fault, b"TRAIN:\n  SCALES: [112]\nSOLVER:\n  BASE_LR: 0.01\n")
            return path
        return build

    for fault in TEXT_FAULTS:
        yield Case("config_yaml", fault, whole(fault))
    specials = {"alias_loop": "TRAIN: &a\n  X: *a\n", "recursive_list": "TRAIN:\n  SCALES: &a [*a]\n",
                "unknown_key": "TRAIN:\n  SCALEZ: [1]\n", "top_list": "- 1\n- 2\n", "python_tag":
                "TRAIN: !!python/object/apply:os.system [echo pwned]\n", "dup_keys": "TRAIN:\n  SCALES: [1]\n"
                "  SCALES: [2]\n", "tab_indent": "TRAIN:\n\tSCALES: [1]\n"}
    for name, text in specials.items():
        yield Case("config_yaml", name, lambda base, folder, text=text: _write(folder / "cfg.yml", text))


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _tensor_fault(fault: str) -> Callable[[Base, Path], Any]:
    def build(base: Base, folder: Path) -> Any:
        ckpt = folder / "model.safetensors"
        shutil.copy(base.checkpoint.with_suffix(".json"), folder / "model.json")
        valid = base.checkpoint.read_bytes()
        if fault == "nan_weights":
            _nan_safetensors(base.checkpoint, ckpt)
        elif fault == "header_len_huge":
            ckpt.write_bytes(struct.pack("<Q", 1 << 60) + valid[8:200])
        elif fault == "header_not_json":
            ckpt.write_bytes(struct.pack("<Q", 10) + b"not json!!" + b"\x00" * 16)
        elif fault == "header_deep":
            head = b"[" * 10000 + b"]" * 10000
            ckpt.write_bytes(struct.pack("<Q", len(head)) + head)
        else:
            write_fault(ckpt, fault, valid)
        return ckpt
    return build



def _checkpoint_cases() -> Iterator[Case]:
    def sidecar(path: tuple[Any, ...], literal: str) -> Callable[[Base, Path], Any]:
        def build(base: Base, folder: Path) -> Any:
            ckpt = folder / "model.safetensors"
            ckpt.symlink_to(base.checkpoint)
            doc = json.loads(base.checkpoint.with_suffix(".json").read_text())
            (folder / "model.json").write_text(json_with(doc, path, literal), encoding="utf-8")
            return ckpt
        return build

    def whole_sidecar(fault: str) -> Callable[[Base, Path], Any]:
        def build(base: Base, folder: Path) -> Any:
            ckpt = folder / "model.safetensors"
            ckpt.symlink_to(base.checkpoint)
            write_fault(folder / "model.json", fault, base.checkpoint.with_suffix(".json").read_bytes())
            return ckpt
        return build

    doc_paths = [("format",), ("format_version",), ("net",), ("class_names",), ("class_names", 0), ("class_names", 1),
                 ("bbox_means",), ("bbox_means", 0), ("bbox_stds",), ("stage",), ("iteration",), ("config",)]
    for path in doc_paths:
        for label, literal in JSON_BAD.items():
            if label not in JSON_CORE and path not in (("class_names",), ("class_names", 0), ("bbox_means", 0)):
                continue
            must = path == ("class_names",) and label in ("string", "list", "list1", "object", "null")
            yield Case("checkpoint_sidecar", f"{_label(path)}={label}", sidecar(path, literal), must_refuse=must)
    for fault in TEXT_FAULTS:
        yield Case("checkpoint_sidecar", fault, whole_sidecar(fault), must_refuse=fault not in BENIGN)
    for fault in ("empty", "truncated", "binary", "fifo", "folder", "devnull", "nan_weights", "header_len_huge",
                  "header_not_json", "header_deep"):
        yield Case("safetensors", fault, _tensor_fault(fault), must_refuse=True)


def _nan_safetensors(src: Path, dst: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    state = load_file(str(src))
    name = sorted(k for k, v in state.items() if v.is_floating_point())[0]
    state[name] = state[name].clone()
    state[name].view(-1)[0] = float("nan")
    save_file(state, str(dst))
    assert torch.isnan(state[name]).any()


def _export_cases() -> Iterator[Case]:
    def fault_json(path: tuple[Any, ...] | None, literal: str) -> Callable[[Base, Path], Any]:
        def build(base: Base, folder: Path) -> Any:
            out = folder / "export"
            out.mkdir()
            for f in base.export.iterdir():
                if f.name != "export.json" and f.is_file():
                    (out / f.name).symlink_to(f)
            valid = (base.export / "export.json").read_bytes()
            if path is None:
                write_fault(out / "export.json", literal, valid)
            else:
                (out / "export.json").write_text(json_with(json.loads(valid), path, literal), encoding="utf-8")
            return out
        return build

    # the fields a backend uses (shallow first), capped so the export kind stays cheap
    with_paths = [("format",), ("format_version",), ("net",), ("class_names",), ("class_names", 0), ("num_classes",),
                  ("preprocessing", "pixel_means_bgr"), ("preprocessing", "pixel_means_bgr", 0),
                  ("preprocessing", "target_size"), ("preprocessing", "max_size"), ("anchors", "base_anchors"),
                  ("anchors", "base_anchors", 0), ("anchors", "feat_stride"), ("proposals",), ("files",)]
    labels = ("null", "list", "object", "string", "neg", "nan", "inf", "overflow", "hugeint", "deep", "zero", "nul",
              "escape", "abs")
    for path in with_paths:
        for label in labels:
            must = (path == ("class_names",) and label in ("string", "object", "null")) or (
                path == ("preprocessing", "pixel_means_bgr", 0) and label in ("nan", "inf", "overflow"))
            yield Case("export_json", f"{_label(path)}={label}", fault_json(path, JSON_BAD[label]), must_refuse=must)
    for fault in TEXT_FAULTS:
        yield Case("export_json", fault, fault_json(None, fault), must_refuse=fault not in BENIGN)


def _proposals_cases() -> Iterator[Case]:
    def side(path: tuple[Any, ...] | None, literal: str) -> Callable[[Base, Path], Any]:
        def build(base: Base, folder: Path) -> Any:
            (folder / "proposals.npz").symlink_to(base.proposals)
            valid = base.proposals.with_suffix(".json").read_bytes()
            if path is None:
                write_fault(folder / "proposals.json", literal, valid)
            else:
                (folder / "proposals.json").write_text(json_with(json.loads(valid), path, literal), encoding="utf-8")
            return folder / "proposals.npz"
        return build

    def npz(fault: str) -> Callable[[Base, Path], Any]:
        def build(base: Base, folder: Path) -> Any:
            shutil.copy(base.proposals.with_suffix(".json"), folder / "proposals.json")
            write_fault(folder / "proposals.npz", fault, base.proposals.read_bytes())
            return folder / "proposals.npz"
        return build

    for path in [("format",), ("image_ids",), ("image_ids", 0), ("npz_sha256",)]:
        for label in ("null", "list", "object", "string", "nan", "hugeint", "deep", "nul", "longstr", "true"):
            yield Case("proposals", f"{_label(path)}={label}", side(path, JSON_BAD[label]),
                       must_refuse=path != ("image_ids", 0))
    for fault in TEXT_FAULTS:
        yield Case("proposals", f"sidecar_{fault}", side(None, fault), must_refuse=fault not in BENIGN)
    for fault in ("empty", "truncated", "binary", "fifo", "folder", "devnull"):
        yield Case("proposals", f"npz_{fault}", npz(fault), must_refuse=True)


def _weights_cases() -> Iterator[Case]:
    evil = b"cos\nsystem\n(S'touch /tmp/frcnn_fuzz_pwned'\ntR."

    def raw(name: str, data: bytes | str) -> Callable[[Base, Path], Any]:
        def build(base: Base, folder: Path) -> Any:
            path = folder / name
            if isinstance(data, str):
                write_fault(path, data, b"PK\x03\x04" + b"\x00" * 100)
            else:
                path.write_bytes(data)
            return path
        return build

    cases: dict[str, Callable[[Base, Path], Any]] = {
        "text_pth": raw("w.pth", b"this is a text file, not weights\n"),
        "empty_pth": raw("w.pth", b""),
        "evil_pickle_pth": raw("w.pth", evil),
        "fake_zip_pth": raw("w.pth", b"PK\x03\x04" + b"\x00" * 100),
        "binary_pth": raw("w.pth", bytes(range(256)) * 8),
        "fifo_pth": raw("w.pth", "fifo"),
        "folder_pth": raw("w.pth", "folder"),
        "devnull_pth": raw("w.pth", "devnull"),
        "text_safetensors": raw("w.safetensors", b"hello"),
        "json_safetensors": raw("w.safetensors", b'{"a": 1}'),
        "header_huge_safetensors": raw("w.safetensors", struct.pack("<Q", 1 << 62) + b"{}"),
        "unknown_suffix": raw("w.bin", b"\x00" * 64),
        "evil_pickle_pkl": raw("w.pkl", evil),
    }
    for name, build in cases.items():
        yield Case("weights", name, build, must_refuse=True)


def _detections_cases(ids: tuple[str, ...]) -> Iterator[Case]:
    good_coco = [{"image_id": i, "category_id": 1, "bbox": [1.0, 2.0, 10.0, 12.0], "score": 0.5} for i in ids]
    good_pred = [{"image_id": i, "file": f"{i}.jpg", "width": 64, "height": 48,
                  "detections": [{"class_id": 1, "label": "circle", "score": 0.5, "box": [1.0, 2.0, 10.0, 12.0]}]}
                 for i in ids]

    def json_case(doc: list[Any], path: tuple[Any, ...] | None, literal: str) -> Callable[[Base, Path], Any]:
        def build(base: Base, folder: Path) -> Any:
            f = folder / "dets.json"
            if path is None:
                write_fault(f, literal, json.dumps(doc).encode())
            else:
                f.write_text(json_with(doc, path, literal), encoding="utf-8")
            return f
        return build

    for fmt, doc, fields in (("coco", good_coco, ("image_id", "category_id", "bbox", "score")),
                             ("pred", good_pred, ("image_id", "detections"))):
        paths: list[tuple[Any, ...]] = [(0, k) for k in fields] + [(0,)]
        if fmt == "coco":
            paths.append((0, "bbox", 2))
        else:
            paths += [(0, "detections", 0, k) for k in ("class_id", "label", "score", "box")]
            paths += [(0, "detections", 0, "box", 3), (0, "detections", 0)]
        for path in paths:
            for label, literal in JSON_BAD.items():
                if label in ("toohugeint", "deep"):
                    continue  # file-level faults (refused as a whole), covered once below
                yield Case("detections", f"{fmt}.{_label(path)}={label}", json_case(doc, path, literal),
                           survivors=ids[1:])
        for fault in TEXT_FAULTS:
            yield Case("detections", f"{fmt}.{fault}", json_case(doc, None, fault),
                       survivors=ids if fault in ("utf8_bom", "crlf", "utf16") else ())
        for label in ("toohugeint", "deep"):
            yield Case("detections", f"{fmt}.{label}", json_case(doc, (0,), JSON_BAD[label]), must_refuse=True)


def _detection_txt_cases(ids: tuple[str, ...]) -> Iterator[Case]:
    good_txt = "".join(f"{i} 0.500 2.0 3.0 11.0 14.0\n" for i in ids).encode()

    def txt_case(body: bytes | None, fault: str = "") -> Callable[[Base, Path], Any]:
        def build(base: Base, folder: Path) -> Any:
            d = folder / "results"
            d.mkdir()
            (d / "comp4_det_test_square.txt").write_bytes(good_txt)
            f = d / "comp4_det_test_circle.txt"
            if body is None:
                write_fault(f, fault, good_txt)
            else:
                f.write_bytes(body)
            return d
        return build

    lines = {"fields5": b"x 0.5 1 1 2", "nan": b"%s nan 1 1 2 2", "inf": b"%s 0.5 1 1 inf 2",
             "word": b"%s 0.5 1 one 2 2", "nul": b"%s\x00 0.5 1 1 2 2", "bad_byte": b"%s\xff 0.5 1 1 2 2",
             "inverted": b"%s 0.5 9 9 1 1", "huge": b"%s 0.5 1 1 1e300 2", "unknown_id": b"nope 0.5 1 1 2 2",
             "long_id": b"9" * 5000 + b" 0.5 1 1 2 2", "hugeint": b"%s 0.5 1 1 " + HUGE_INT.encode() + b" 2"}
    for name, line in lines.items():
        body = line.replace(b"%s", ids[0].encode()) + b"\n" + good_txt
        yield Case("detections", f"txt.line_{name}", txt_case(body), survivors=ids)
    for fault in TEXT_FAULTS:
        yield Case("detections", f"txt.{fault}", txt_case(None, fault),
                   survivors=ids if fault not in ("fifo", "folder", "devnull") else ())


def all_cases(image_ids: tuple[str, ...]) -> list[Case]:
    """Every corpus case, given the ids of the base dataset's split "test" (its first id is the one broken)."""
    return [*_voc_xml_cases(image_ids), *_image_set_cases(image_ids), *_classes_cases(image_ids),
            *_coco_cases(image_ids), *_image_cases(image_ids), *_config_cases(), *_checkpoint_cases(),
            *_export_cases(), *_proposals_cases(), *_weights_cases(),
            *_detections_cases(image_ids), *_detection_txt_cases(image_ids)]
