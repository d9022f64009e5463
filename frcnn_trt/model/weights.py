"""Load initial weights into a :class:`~frcnn_trt.model.backbones.Backbone` from a file the user passes.

Accepted files: ``.safetensors`` and ``.pth`` / ``.pt`` (read with ``torch.load(weights_only=True)``: tensors
and plain containers only, never arbitrary pickled objects). Nothing is downloaded. Layouts (``layout="auto"``
detects them):

- ``"frcnn"``: this project's own names (``body.conv1_1.weight``, ``box_head.fc6.weight``, …), optionally
  under a prefix (a whole-model checkpoint such as ``backbone.body.conv1_1.weight``); loaded as is.
- ``"caffe"``: Caffe layer names without our prefixes (``conv1_1.weight``, ``fc6.weight``), e.g. a converted
  py-faster-rcnn ImageNet caffemodel (``{NET}.v2.caffemodel``); BGR 0–255 input like ours, loaded as is.
- ``"torchvision"``: ``torchvision.models.vgg16`` (``features.{0,2,5,…,28}`` → conv1_1…conv5_3,
  ``classifier.0`` → fc6, ``classifier.3`` → fc7, ``classifier.6`` ignored) or ``torchvision.models.resnet50``
  (``conv1, bn1, layer1–3`` → body, ``layer4`` → box_head, ``fc`` and ``num_batches_tracked`` ignored).

Colour conversion for torchvision weights. torchvision nets take RGB in [0, 1] normalised per channel,
``x_tv[c] = (I_rgb[c]/255 − mean[c]) / std[c]`` (mean 0.485, 0.456, 0.406; std 0.229, 0.224, 0.225); ours take
BGR 0–255 minus ``PIXEL_MEANS`` (BGR), ``x[j] = I_bgr[j] − m[j]``. With c = 2 − j (the same colour),
``x_tv[c] = x[j] / (255·std[c]) + o[c]``, ``o[c] = (m[j]/255 − mean[c]) / std[c]``. The first conv
(VGG16 ``conv1_1``, ResNet ``conv1``) therefore gets

- input channels reversed (RGB → BGR) and divided by ``255·std[c]``: exact;
- the constant ``o`` folded in: ``δ[k] = Σ_{c,u,v} W[k,c,u,v]·o[c]`` is added to VGG16's conv1_1 bias, or
  subtracted from ResNet's ``bn1.running_mean`` (conv1 has no bias). Exact away from the image border;
  where the 3×3 / 7×7 window overlaps the zero padding, ours pads with the ``PIXEL_MEANS`` colour where
  torchvision pads with the ImageNet mean colour (|o| < 0.02 in normalised units with the default means).
  With ``pixel_means = 255·mean`` (BGR order) o = 0 and the conversion is exact everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from pickle import UnpicklingError  # the exception type only: files load with weights_only=True

import torch
from safetensors.torch import load_file, save
from torch import Tensor

from frcnn_trt.errors import CheckpointError
from frcnn_trt.io import atomic_write_bytes, canonical_safetensors
from frcnn_trt.model.backbones import Backbone
from frcnn_trt.model.tensor_files import check_finite, check_safetensors, check_torch_file

__all__ = [
    "DEFAULT_PIXEL_MEANS",
    "IMAGENET_RGB_MEAN",
    "IMAGENET_RGB_STD",
    "LoadReport",
    "load_weights",
    "read_state_dict",
    "save_weights",
]

#: py-faster-rcnn ``cfg.PIXEL_MEANS`` (BGR, 0–255).
DEFAULT_PIXEL_MEANS: tuple[float, float, float] = (102.9801, 115.9465, 122.7717)
#: torchvision's ImageNet normalisation (RGB, 0–1).
IMAGENET_RGB_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_RGB_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

LAYOUTS = ("auto", "frcnn", "caffe", "torchvision")
_SUFFIXES = (".safetensors", ".pth", ".pt")
# torchvision vgg16.features indices of the 13 convs, in order.
_TV_VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_VGG16_NAMES = tuple(f"conv{b}_{i}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, n + 1))


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_weights` did."""

    path: str
    network: str
    layout: str
    loaded: tuple[str, ...]  # our state-dict keys that were set
    ignored: tuple[str, ...]  # file keys that were not used
    missing: tuple[str, ...] = ()  # our keys the file lacks (only with strict=False)
    notes: tuple[str, ...] = field(default=())  # conversions applied

    def summary(self) -> str:
        text = (
            f"{self.path}: {len(self.loaded)} tensors loaded into {self.network} ({self.layout} layout), "
            f"{len(self.ignored)} ignored, {len(self.missing)} missing"
        )
        return "; ".join([text, *self.notes])


# ------------------------------------------------------------------------------------------ reading


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a tensor dict from ``.safetensors`` or ``.pth``/``.pt`` (``weights_only=True``) onto the CPU.

    A ``.pth`` holding ``{"state_dict": {...}}`` or ``{"model": {...}}`` is unwrapped; non-tensor entries
    are dropped.
    """
    path = Path(path)
    if path.suffix not in _SUFFIXES:
        raise CheckpointError(f"{path}: unsupported weights file type {path.suffix!r} (use {', '.join(_SUFFIXES)})")
    if not path.exists():
        raise CheckpointError(f"{path}: weights file does not exist")
    tensors = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path)
    check_finite(tensors, path)
    return tensors


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    check_safetensors(path, "weights file")
    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as exc:  # the library's parser on a file that passed our header checks
        raise CheckpointError(f"{path}: cannot read safetensors file: {exc}") from exc


def _read_torch(path: Path) -> dict[str, Tensor]:
    check_torch_file(path, "weights file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refusing to load: not a tensors-only torch file ({_unpickler_detail(exc)}); "
            "frcnn-trt never unpickles arbitrary objects (torch.load weights_only=True) — convert the file "
            "to .safetensors where you trust it"
        ) from exc
    except Exception as exc:  # torch's readers fail on damaged files with KeyError, IndexError, EOFError, ...
        raise CheckpointError(f"{path}: cannot read torch file: {type(exc).__name__}: {exc}") from exc
    if isinstance(obj, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: no tensors found")
    return tensors


def _unpickler_detail(exc: Exception) -> str:
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        detail = text.split(marker, 1)[1].strip().split("\n\n")[0].split(" was not an allowed")[0]
        return detail.strip() or "unreadable"
    return text.splitlines()[0] if text else type(exc).__name__


def save_weights(backbone: Backbone, path: str | Path) -> None:
    """Write ``backbone``'s state dict as safetensors (atomically), the network name in the file's metadata."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in backbone.state_dict().items()}
    data = save(tensors, metadata={"network": backbone.name, "layout": "frcnn"})
    atomic_write_bytes(path, canonical_safetensors(data))  # the same weights, the same bytes (io doc)


def _safetensors_network(path: Path) -> str | None:
    if path.suffix != ".safetensors":
        return None
    header = check_safetensors(path, "weights file")  # a bad file is reported here, naming it
    network = header.get("__metadata__", {}).get("network")
    return network if isinstance(network, str) else None


# ------------------------------------------------------------------------------------------ key mapping


def _strip_part(key: str) -> str:
    return key.split(".", 1)[1]


def _find_prefix(ours: Sequence[str], theirs: Mapping[str, Tensor]) -> str | None:
    """The prefix P with P + our key in the file for the most of our keys (None when no key matches)."""
    candidates: dict[str, int] = {}
    anchors = [k for k in ours if k.startswith("body.")][:3] + [k for k in ours if k.startswith("box_head.")][:1]
    for anchor in anchors:
        for key in theirs:
            if key == anchor or key.endswith("." + anchor):
                candidates.setdefault(key[: len(key) - len(anchor)], 0)
    if not candidates:
        return None
    for prefix in candidates:
        candidates[prefix] = sum(prefix + k in theirs for k in ours)
    return max(candidates, key=lambda p: candidates[p])


def _torchvision_map(network: str, ours: Sequence[str]) -> dict[str, str]:
    if network == "VGG16":
        mapping: dict[str, str] = {}
        for idx, name in zip(_TV_VGG16_CONVS, _VGG16_NAMES, strict=True):
            for p in ("weight", "bias"):
                mapping[f"body.{name}.{p}"] = f"features.{idx}.{p}"
        for tv_idx, name in ((0, "fc6"), (3, "fc7")):
            for p in ("weight", "bias"):
                mapping[f"box_head.{name}.{p}"] = f"classifier.{tv_idx}.{p}"
        return mapping
    if network == "ResNet50_C4":
        return {k: _strip_part(k) for k in ours}  # body.layer1.… → layer1.…, box_head.layer4.… → layer4.…
    raise CheckpointError(f"torchvision layout exists for VGG16 and ResNet50_C4 only, not {network}")


def _detect_layout(network: str, ours: Sequence[str], theirs: Mapping[str, Tensor]) -> str:
    if _find_prefix(ours, theirs) is not None:
        return "frcnn"
    if network == "VGG16" and "features.0.weight" in theirs:
        return "torchvision"
    if network == "ResNet50_C4" and "layer1.0.conv1.weight" in theirs:
        return "torchvision"
    flat = {_strip_part(k) for k in ours}
    if sum(k in theirs for k in flat) >= max(1, len(flat) // 2):
        return "caffe"
    return "unknown"


# ------------------------------------------------------------------------------------------ colour fold


def _fold_rgb_to_bgr(weight: Tensor, pixel_means: Sequence[float]) -> tuple[Tensor, Tensor]:
    """First-conv weight for BGR 0–255 minus-means input and the per-output offset δ (see module doc)."""
    w = weight.double()
    mean = torch.tensor(IMAGENET_RGB_MEAN, dtype=torch.float64)
    std = torch.tensor(IMAGENET_RGB_STD, dtype=torch.float64)
    means_rgb = torch.tensor(list(pixel_means)[::-1], dtype=torch.float64)
    offset = (means_rgb / 255.0 - mean) / std  # o[c], RGB order
    delta = (w * offset.view(1, 3, 1, 1)).sum(dim=(1, 2, 3))
    w_bgr = (w / (255.0 * std).view(1, 3, 1, 1)).flip(1)
    return w_bgr, delta


# ------------------------------------------------------------------------------------------ loading


def _mismatch_error(path: Path, network: str, layout: str, problems: list[str], total: int) -> CheckpointError:
    shown = "; ".join(problems[:5])
    more = f" (+{total - 5} more)" if total > 5 else ""
    return CheckpointError(f"{path}: not a weights file for {network} ({layout} layout): {shown}{more}")


def _resolve_layout(path: Path, layout: str, network: str, our_keys: list[str], theirs: Mapping[str, Tensor]) -> str:
    """``layout``, or the one detected for ``"auto"``; CheckpointError when no key matches."""
    if layout != "auto":
        return layout
    layout = _detect_layout(network, our_keys, theirs)
    if layout == "unknown":
        sample = ", ".join(list(theirs)[:4])
        raise CheckpointError(
            f"{path}: not a weights file for {network}: none of its keys match (file has {sample}, …; "
            f"expected e.g. {our_keys[0]})"
        )
    return layout


def _key_mapping(layout: str, network: str, our_keys: list[str], theirs: Mapping[str, Tensor]) -> dict[str, str]:
    """Our state-dict key → the file's key, for a resolved ``layout``."""
    if layout == "frcnn":
        prefix = _find_prefix(our_keys, theirs) or ""
        return {k: prefix + k for k in our_keys}
    if layout == "caffe":
        return {k: _strip_part(k) for k in our_keys}
    return _torchvision_map(network, our_keys)


def _check_mapping(
    path: Path, network: str, layout: str, mapping: Mapping[str, str], ours: Mapping[str, Tensor],
    theirs: Mapping[str, Tensor], strict: bool,
) -> list[str]:
    """Our keys the file lacks; CheckpointError on any shape mismatch, or on a missing key with ``strict``."""
    missing = [k for k in ours if mapping.get(k) not in theirs]
    problems = [f"missing {mapping.get(k, k)!r}" for k in missing]
    for k, src in mapping.items():
        if src in theirs and tuple(theirs[src].shape) != tuple(ours[k].shape):
            problems.append(f"{src!r} has shape {tuple(theirs[src].shape)}, expected {tuple(ours[k].shape)}")
    shape_problems = len(problems) - len(missing)
    if (strict and problems) or shape_problems:
        raise _mismatch_error(path, network, layout, problems, len(problems))
    return missing


def _fold_colour(values: dict[str, Tensor], network: str, pixel_means: Sequence[float]) -> str:
    """Fold torchvision's RGB 0–1 normalisation into the first conv of ``values`` (module doc); the note."""
    first = "body.conv1_1" if network == "VGG16" else "body.conv1"
    weight, delta = _fold_rgb_to_bgr(values[f"{first}.weight"], pixel_means)
    values[f"{first}.weight"] = weight
    if network == "VGG16":
        values["body.conv1_1.bias"] = values["body.conv1_1.bias"].double() + delta
    else:
        values["body.bn1.running_mean"] = values["body.bn1.running_mean"].double() - delta
    return (
        f"{first}: input channels RGB→BGR, scaled by 1/(255·std), mean offset folded "
        f"(PIXEL_MEANS {tuple(round(float(m), 4) for m in pixel_means)})"
    )


def load_weights(
    backbone: Backbone,
    path: str | Path,
    *,
    layout: str = "auto",
    pixel_means: Sequence[float] = DEFAULT_PIXEL_MEANS,
    strict: bool = True,
) -> LoadReport:
    """Load ``path`` into ``backbone`` in place and report what was loaded / ignored.

    ``layout``: ``"auto"`` | ``"frcnn"`` | ``"caffe"`` | ``"torchvision"`` (module doc). ``pixel_means``
    (BGR, 0–255) only matter for torchvision weights (colour fold). With ``strict`` every parameter and
    buffer of the backbone must come from the file. Files for another network (missing keys, other shapes)
    raise :class:`~frcnn_trt.errors.CheckpointError` naming the file, the network and a few keys.
    """
    path = Path(path)
    if layout not in LAYOUTS:
        raise CheckpointError(f"{path}: unknown weights layout {layout!r} (use one of {', '.join(LAYOUTS)})")
    network = backbone.name
    stored_network = _safetensors_network(path)
    if stored_network is not None and stored_network != network:
        raise CheckpointError(f"{path}: weights of network {stored_network!r}, expected {network!r}")
    theirs = read_state_dict(path)
    ours = backbone.state_dict()
    our_keys = list(ours)
    layout = _resolve_layout(path, layout, network, our_keys, theirs)
    mapping = _key_mapping(layout, network, our_keys, theirs)
    missing = _check_mapping(path, network, layout, mapping, ours, theirs, strict)

    values = {k: theirs[src] for k, src in mapping.items() if src in theirs}
    notes = [_fold_colour(values, network, pixel_means)] if layout == "torchvision" else []
    with torch.no_grad():
        for k, v in values.items():
            ours[k].copy_(v)  # copy_ converts the dtype (fp16 / fp64 files)
    used = {mapping[k] for k in values}
    return LoadReport(
        path=str(path),
        network=network,
        layout=layout,
        loaded=tuple(values),
        ignored=tuple(k for k in theirs if k not in used),
        missing=tuple(missing),
        notes=tuple(notes),
    )
