"""Dataset names → imdbs (py-faster-rcnn's ``datasets.factory.get_imdb``, plus path forms for custom data).

Accepted names (see :data:`ACCEPTED_FORMS`): ``voc_<year>_<split>``, ``coco_<year>_<split>``,
``voc:<folder>[:<split>]``, ``coco:<annotations.json>[:<image_dir>]``, ``synth:<folder>[:<split>]`` and any
of them joined with ``+``. Relative folders are taken from the working directory, else from ``data_root``.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

from frcnn_trt.data.coco import CocoImdb
from frcnn_trt.data.imdb import CombinedImdb, Imdb
from frcnn_trt.data.voc import PascalVoc, VocFolder
from frcnn_trt.errors import DatasetError

__all__ = ["ACCEPTED_FORMS", "KNOWN_NAMES", "get_imdb"]

ACCEPTED_FORMS: tuple[str, ...] = (
    "voc_<year>_<split>   PASCAL VOC in <data_root>/VOCdevkit<year>/VOC<year> (e.g. voc_2007_trainval)",
    "coco_<year>_<split>  COCO in <data_root>/coco: annotations/instances_<split><year>.json + images",
    "voc:<folder>[:<split>]  a VOC-format folder (split default trainval)",
    "coco:<annotations.json>[:<image_dir>]  a COCO-format JSON and its images",
    "synth:<folder>[:<split>]  a synthetic dataset from make_synthetic_dataset (split default trainval)",
    "<name>+<name>  datasets with the same classes, concatenated (e.g. voc_2007_trainval+voc_2012_trainval)",
)

KNOWN_NAMES: tuple[str, ...] = (
    *(f"voc_{y}_{s}" for y in ("2007", "2012") for s in ("train", "val", "trainval", "test")),
    "voc_2007_trainval+voc_2012_trainval",
    *(f"coco_{y}_{s}" for y in ("2014", "2017") for s in ("train", "val")),
    "voc:",
    "coco:",
    "synth:",
)

_PART = re.compile(r"\+(?=voc_|coco_|voc:|coco:|synth:)")
_VOC = re.compile(r"voc_(\d{4})_(\w+)")
_COCO = re.compile(r"coco_(\d{4})_(\w+)")
_COCO_PATH = re.compile(r"(.+?\.json)(?::(.+))?", re.IGNORECASE)


def get_imdb(name: str, data_root: Path | str = "data", *, use_diff: bool = False, strict: bool = False) -> Imdb:
    """The imdb called ``name``; :class:`DatasetError` listing the accepted forms for an unknown name."""
    name = name.strip()
    data_root = Path(data_root)
    parts = _PART.split(name)
    if len(parts) > 1:
        return CombinedImdb([get_imdb(p, data_root, use_diff=use_diff, strict=strict) for p in parts], name=name)
    if m := _VOC.fullmatch(name):
        return PascalVoc(m.group(1), m.group(2), data_root, use_diff=use_diff, strict=strict)
    if m := _COCO.fullmatch(name):
        year, split = m.groups()
        coco = data_root / "coco"
        return CocoImdb(
            coco / "annotations" / f"instances_{split}{year}.json",
            name=name,
            use_diff=use_diff,
            strict=strict,
        )
    if name.startswith("voc:") or name.startswith("synth:"):
        kind, _, rest = name.partition(":")
        folder, split = _path_and_split(rest)
        root = _resolve(folder, data_root)
        if kind == "synth" and not os.path.lexists(root / "classes.txt"):
            hint = (
                "it does not exist; create it with `frcnn-trt data synth FOLDER`"
                if not os.path.exists(root)
                else "it has no classes.txt, so it was not written by make_synthetic_dataset"
            )
            raise DatasetError(f"synthetic dataset {root}: {hint}")
        return VocFolder(
            root,
            split,
            name=f"{kind}_{root.name}_{split}" if kind == "synth" else f"{root.name}_{split}",
            use_diff=use_diff,
            strict=strict,
            use_07_metric=kind == "synth",  # the synthetic benchmark is scored like VOC2007 (11-point AP)
        )
    if name.startswith("coco:"):
        m = _COCO_PATH.fullmatch(name[len("coco:") :])
        if m is None:
            raise DatasetError(f"{name!r}: expected coco:<annotations.json>[:<image_dir>]")
        ann = _resolve(m.group(1), data_root)
        image_dir = _resolve(m.group(2), data_root) if m.group(2) else None
        return CocoImdb(ann, image_dir, use_diff=use_diff, strict=strict)
    raise DatasetError(_unknown(name))


def _path_and_split(rest: str, default: str = "trainval") -> tuple[str, str]:
    """``folder[:split]``; a tail that looks like a path (``C:\\data``) is not a split."""
    head, sep, tail = rest.rpartition(":")
    if sep and head and tail and not any(c in tail for c in "/\\"):
        return head, tail
    return rest, default


def _resolve(path: str, data_root: Path) -> Path:
    p = Path(path).expanduser()
    # os.path.exists, not Path.exists: a name too long for the file system or holding a NUL byte is "not there"
    if not p.is_absolute() and not os.path.exists(p) and os.path.exists(data_root / p):
        return data_root / p
    return p


def _unknown(name: str) -> str:
    close = difflib.get_close_matches(name, KNOWN_NAMES, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    forms = "\n  ".join(ACCEPTED_FORMS)
    return f"unknown dataset {name!r}.{hint} Accepted forms:\n  {forms}"
