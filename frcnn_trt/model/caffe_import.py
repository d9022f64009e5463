"""``frcnn-trt import caffe``: a py-faster-rcnn ``.caffemodel`` → a checkpoint of this project.

Steps: read the file (:mod:`frcnn_trt.model.caffe_reader`: parsed as data, nothing executed, every blob
checked), tell the network from its layer names and shapes unless ``net`` is given
(:func:`~frcnn_trt.model.caffe_mapping.infer_net`), count the classes from ``cls_score`` and name them, map
the layers by name (:mod:`frcnn_trt.model.caffe_mapping`), load them into a :class:`FasterRCNN` built from
py-faster-rcnn's settings, and save it with :func:`~frcnn_trt.model.checkpoint.save_checkpoint`.

The checkpoint needs no conversion of values: the three nets here reproduce py-faster-rcnn's layer for layer
(docs/REFERENCE.md §8) — BGR 0–255 input minus ``PIXEL_MEANS``, Caffe's ceil-mode pooling, ZF's
WITHIN_CHANNEL and VGG_CNN_M_1024's ACROSS_CHANNELS LRN, ZF's ``scale_train: false`` dropout (× 0.5 at test),
Caffe's RoI max pooling — and the blob layouts are the same (module doc of
:mod:`frcnn_trt.model.caffe_mapping`). The sidecar's config is the net's shipped end2end config (py-faster-rcnn's
TEST defaults: scale 600 / max 1000, RPN 6000 → 300 at NMS 0.7, NMS 0.3), ``stage`` ``"caffe"``, and
``extra["caffe_import"]`` records the source file, its SHA-256 and the per-layer report.

Classes: ``classes`` names them without the background (a list, ``"a,b,c"`` or a file with one per line). Without
it a 21-output ``cls_score`` gets PASCAL VOC's 20 names (the report says so) and any other count is an error. An
alt-opt stage snapshot lacking the RPN head or the predictor imports with that part at py-faster-rcnn's
initialisation (seeded with ``RNG_SEED``), reported as missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from frcnn_trt import config as C
from frcnn_trt.data.voc import VOC_CLASSES
from frcnn_trt.errors import ConfigError
from frcnn_trt.io import sha256_file
from frcnn_trt.log import get_logger
from frcnn_trt.model.caffe_mapping import CAFFE_NETS, LayerMapping, infer_net, infer_num_classes, map_layers
from frcnn_trt.model.caffe_reader import CaffeNet, read_caffemodel
from frcnn_trt.model.checkpoint import CheckpointInfo, load_state_into, save_checkpoint
from frcnn_trt.model.faster_rcnn import FasterRCNN

__all__ = ["CaffeImportReport", "caffe_config", "import_caffemodel", "parse_classes"]

logger = get_logger("model.caffe_import")
BACKGROUND = "__background__"
_MISSING_PART_NOTE = {
    "rpn": "the RPN head is at its random initialisation: proposals from this model are meaningless",
    "predictor": "cls_score / bbox_pred are at their random initialisation: detections from this model are "
                 "meaningless",
}


@dataclass(frozen=True)
class CaffeImportReport:
    """What :func:`import_caffemodel` read, loaded, ignored and wrote."""

    source: str
    output: str
    net: str
    net_inferred: bool
    format: str
    class_names: tuple[str, ...]  # with __background__ first
    loaded: tuple[tuple[str, str], ...]  # (Caffe layer, our module)
    ignored: tuple[tuple[str, str, str], ...]  # (Caffe layer, type, why)
    missing_parts: tuple[str, ...]
    missing_layers: tuple[str, ...]
    notes: tuple[str, ...] = field(default=())

    def lines(self) -> list[str]:
        """The report, one line per item (the CLI prints these)."""
        how = "inferred from its layer names and shapes" if self.net_inferred else "as given"
        out = [f"{self.source}: '{self.format}' caffemodel, network {self.net} ({how}), "
               f"{len(self.class_names) - 1} classes + background"]
        out.append(f"loaded {len(self.loaded)} layers: " + ", ".join(f"{c} → {m}" for c, m in self.loaded))
        weightless = [f"{n} ({t})" for n, t, why in self.ignored if why == "no weights"]
        foreign = [f"{n} ({t})" for n, t, why in self.ignored if why != "no weights"]
        if weightless:
            out.append(f"ignored {len(weightless)} layers without weights: " + ", ".join(weightless))
        if foreign:
            out.append(f"ignored {len(foreign)} layers with weights that are not part of {self.net}: "
                       + ", ".join(foreign))
        if self.missing_parts:
            out.append(f"missing {len(self.missing_layers)} layers ({', '.join(self.missing_layers)}): "
                       + "; ".join(_MISSING_PART_NOTE[p] for p in self.missing_parts))
        out.extend(self.notes)
        out.append(f"wrote {self.output} and its sidecar {Path(self.output).with_suffix('.json').name}")
        out.append(f"next: frcnn-trt test --model {self.output} --imdb voc_2007_test   or   frcnn-trt export "
                   f"{self.output}   or   frcnn-trt detect IMAGES --weights {self.output}")
        return out

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "format": self.format, "net_inferred": self.net_inferred,
                "loaded": [list(x) for x in self.loaded], "ignored": [list(x) for x in self.ignored],
                "missing_parts": list(self.missing_parts), "missing_layers": list(self.missing_layers),
                "notes": list(self.notes)}


# ------------------------------------------------------------------------------------------ classes


def _check_names(names: Sequence[str], source: str) -> list[str]:
    clean = [n.strip() for n in names if n.strip()]
    if clean and clean[0] == BACKGROUND:
        clean = clean[1:]
    if not clean:
        raise ConfigError(f"--classes {source}: no class names")
    dup = sorted({n for n in clean if clean.count(n) > 1})
    if dup:
        raise ConfigError(f"--classes {source}: class names repeat: {', '.join(dup)}")
    if BACKGROUND in clean:
        raise ConfigError(f"--classes {source}: {BACKGROUND} can only come first (the background is class 0)")
    return clean


def parse_classes(spec: str | Sequence[str] | None) -> list[str] | None:
    """Class names without the background from ``"a,b,c"``, a file with one name per line, or a list."""
    if spec is None:
        return None
    if not isinstance(spec, str):
        return _check_names(list(spec), repr(list(spec)))
    path = Path(spec)
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--classes {spec}: cannot read the file: {exc}") from None
        return _check_names([ln for ln in text.splitlines() if not ln.strip().startswith("#")], spec)
    if "," not in spec and (path.suffix in (".txt", ".names", ".csv") or "/" in spec):
        raise ConfigError(f"--classes {spec}: no such file (give a file with one class per line, or a,b,c)")
    return _check_names(spec.split(","), repr(spec))


def _class_names(path: str, num_outputs: int | None, classes: list[str] | None) -> tuple[list[str], str | None]:
    """``[__background__, …]`` and a note when VOC's names were assumed."""
    if classes is not None:
        if num_outputs is not None and len(classes) + 1 != num_outputs:
            raise ConfigError(f"--classes names {len(classes)} classes (+ background = {len(classes) + 1} outputs), "
                              f"but {path}'s cls_score has {num_outputs} outputs ({num_outputs - 1} classes)")
        return [BACKGROUND, *classes], None
    if num_outputs is None:
        return [BACKGROUND, *VOC_CLASSES], ("classes: the file has no cls_score and no --classes was given: "
                                            "PASCAL VOC's 20 class names assumed")
    if num_outputs == len(VOC_CLASSES) + 1:
        return [BACKGROUND, *VOC_CLASSES], ("classes: 21 outputs and no --classes: PASCAL VOC's 20 class names "
                                            "(aeroplane … tvmonitor) assumed")
    raise ConfigError(f"{path}: cls_score has {num_outputs} outputs ({num_outputs - 1} classes + background); "
                      f"name the classes with --classes a,b,c or --classes FILE (one per line)")


# ------------------------------------------------------------------------------------------ the import


def caffe_config(net: str, base: C.Config | None = None) -> C.Config:
    """py-faster-rcnn's settings for ``net`` (its shipped end2end config unless ``base``), Caffe's RoI pooling."""
    cfg = base if base is not None else C.resolve([C.default_for(net, "end2end")])
    if cfg.MODEL.ROI_OP != "RoIPool":
        raise ConfigError(f"a caffemodel was trained with Caffe's RoI max pooling; MODEL.ROI_OP "
                          f"{cfg.MODEL.ROI_OP!r} would change its outputs")
    return C.override(cfg, MODEL={"NET": net}, TEST={"HAS_RPN": True})


def _resolve_net(caffe: CaffeNet, net: str | None) -> tuple[str, bool]:
    if net is None:
        return infer_net(caffe.path, caffe.layers), True
    canonical = {n.lower(): n for n in CAFFE_NETS}.get(net.lower())
    if canonical is None:
        raise ConfigError(f"--net {net!r}: py-faster-rcnn's nets are {', '.join(CAFFE_NETS)}")
    return canonical, False


def _reinit_missing(model: FasterRCNN, parts: Sequence[str], seed: int) -> None:
    """py-faster-rcnn's Gaussian initialisation for the parts the file lacks, seeded (same file, same weights)."""
    generator = torch.Generator().manual_seed(seed)
    if "rpn" in parts:
        model.rpn.reset_parameters(generator)
    if "predictor" in parts:
        model.predictor.reset_parameters(generator)


def _load(model: FasterRCNN, mapping: LayerMapping, seed: int, source: str) -> None:
    _reinit_missing(model, mapping.missing_parts, seed)
    state = model.state_dict()
    state.update(mapping.tensors)
    load_state_into(model, state, source)
    model.eval()


def import_caffemodel(
    path: str | Path,
    output: str | Path,
    *,
    net: str | None = None,
    classes: str | Sequence[str] | None = None,
    cfg: C.Config | None = None,
) -> CaffeImportReport:
    """Import ``path`` into the checkpoint ``output`` (``.safetensors`` + ``.json``); the report (module doc).

    ``cfg``: the settings to record (default: the net's shipped end2end config); MODEL.NET is set to the net.
    """
    path = Path(path)
    names_given = parse_classes(classes)
    caffe = read_caffemodel(path)
    network, inferred = _resolve_net(caffe, net)
    num_outputs = infer_num_classes(caffe.path, caffe.layers)
    class_names, class_note = _class_names(caffe.path, num_outputs, names_given)
    cfg = caffe_config(network, cfg)
    model = FasterRCNN.from_config(cfg, len(class_names))
    mapping = map_layers(caffe.path, network, caffe.layers, model.state_dict())
    for part in mapping.missing_parts:
        logger.warning("%s: no %s layers: %s", path, part, _MISSING_PART_NOTE[part])
    _load(model, mapping, cfg.RNG_SEED, caffe.path)
    notes = [*mapping.notes, *([class_note] if class_note else [])]
    report = CaffeImportReport(
        source=str(path), output=str(Path(output).with_suffix(".safetensors")), net=network, net_inferred=inferred,
        format=caffe.format, class_names=tuple(class_names), loaded=tuple(mapping.loaded),
        ignored=tuple(mapping.ignored), missing_parts=tuple(mapping.missing_parts),
        missing_layers=tuple(mapping.missing_layers), notes=tuple(notes))
    extra = {"caffe_import": {**report.to_json(), "sha256": sha256_file(path)}}
    info = CheckpointInfo(net=network, class_names=class_names, stage="caffe", iteration=0, config=C.to_dict(cfg),
                          extra=extra)
    save_checkpoint(report.output, model, info)
    return report
