"""Checkpoints: weights in safetensors + a JSON sidecar; solver state for resuming. No pickle.

A checkpoint ``NAME.safetensors`` + ``NAME.json`` is what users hand around (``test``, ``export``,
``detect``, ``--weights``). As py-faster-rcnn's ``snapshot``, the saved ``bbox_pred`` is un-normalised
(target means/stds folded in), so inference applies raw deltas; the sidecar still records the means/stds.

A solver state ``NAME.solverstate.safetensors`` (+ ``.json``) holds what an exact resume needs: the
training-space weights (un-folded), SGD momentum buffers, the sampling generator's and torch's RNG states
and the iteration. Only the newest one of a run is kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from frcnn_trt import __version__
from frcnn_trt.config import NETS, from_dict
from frcnn_trt.errors import CheckpointError, ConfigError
from frcnn_trt.files import is_finite_number, load_json, short
from frcnn_trt.io import atomic_open, atomic_write_bytes, atomic_write_json, canonical_safetensors
from frcnn_trt.model.faster_rcnn import FasterRCNN
from frcnn_trt.model.tensor_files import check_finite, check_safetensors

FORMAT = "frcnn-trt-checkpoint"
FORMAT_VERSION = 1
#: sidecar format versions this code reads
SUPPORTED_VERSIONS = (1,)
#: the largest sidecar read (config + class names + means/stds: a few kB in practice)
MAX_SIDECAR_BYTES = 16 << 20
#: the most classes (background included) and the longest class name accepted
MAX_CLASSES = 100_000
MAX_NAME_CHARS = 1024


@dataclass
class CheckpointInfo:
    """The JSON sidecar of a checkpoint."""

    net: str
    class_names: list[str]
    stage: str
    iteration: int
    config: dict[str, Any]
    bbox_means: list[float] = field(default_factory=list)  # [4K]
    bbox_stds: list[float] = field(default_factory=list)  # [4K]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "frcnn_trt_version": __version__,
                "net": self.net, "class_names": self.class_names, "stage": self.stage,
                "iteration": self.iteration, "bbox_means": self.bbox_means, "bbox_stds": self.bbox_stds,
                "extra": self.extra, "config": self.config}


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` atomically; the same tensors give the same bytes in any process (canonical header)."""
    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, canonical_safetensors(save(clean, metadata=metadata)))


def save_checkpoint(path: str | Path, model: nn.Module, info: CheckpointInfo) -> Path:
    """Write ``path`` (``.safetensors``) and its sidecar atomically; bbox_pred is saved un-normalised."""
    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in model.state_dict().items()}
    predictor = getattr(model, "predictor", None)
    if predictor is not None:
        std, mean = predictor.bbox_stds, predictor.bbox_means
        info.bbox_means = [float(x) for x in mean.tolist()]
        info.bbox_stds = [float(x) for x in std.tolist()]
        state["predictor.bbox_pred.weight"] = predictor.bbox_pred.weight.detach() * std[:, None]
        state["predictor.bbox_pred.bias"] = predictor.bbox_pred.bias.detach() * std + mean
        state["predictor.bbox_means"] = torch.zeros_like(mean)
        state["predictor.bbox_stds"] = torch.ones_like(std)
    _save_tensors(path, state, metadata={"format": FORMAT, "net": info.net})
    atomic_write_json(_sidecar(path), info.to_json())
    return path


def _field(data: dict[str, Any], key: str, side: Path, kind: type | tuple[type, ...]) -> Any:
    if key not in data:
        raise CheckpointError(f"checkpoint sidecar {side} lacks field {key!r}")
    value = data[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise CheckpointError(f"checkpoint sidecar {side}: field {key!r} has the wrong type ({short(value)})")
    return value


def _class_names(data: dict[str, Any], side: Path) -> list[str]:
    names = _field(data, "class_names", side, list)
    if not 2 <= len(names) <= MAX_CLASSES:
        raise CheckpointError(f"checkpoint sidecar {side}: class_names must list 2 to {MAX_CLASSES} names "
                              f"(background first), got {len(names)}")
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS or "\x00" in name:
            raise CheckpointError(f"checkpoint sidecar {side}: class_names[{i}] must be a non-empty name of at most "
                                  f"{MAX_NAME_CHARS} characters, got {short(name)}")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise CheckpointError(f"checkpoint sidecar {side}: class name {short(dup)} appears twice")
    return list(names)


def _floats(data: dict[str, Any], key: str, side: Path, count: int) -> list[float]:
    values = data.get(key, [])
    if not isinstance(values, list) or len(values) not in (0, count) or not all(
            is_finite_number(v) for v in values):
        raise CheckpointError(f"checkpoint sidecar {side}: {key} must be {count} finite numbers (4 per class), got "
                              f"{short(values)}")
    return [float(v) for v in values]


def read_info(path: str | Path) -> CheckpointInfo:
    """Read and check a checkpoint's sidecar; CheckpointError naming the file and the field otherwise."""
    path = Path(path).with_suffix(".safetensors")
    side = _sidecar(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not side.exists():
        raise CheckpointError(f"checkpoint {path} has no sidecar {side.name} (class names, net, config)")
    data = load_json(side, "checkpoint sidecar", MAX_SIDECAR_BYTES, error=CheckpointError)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = short(data.get("format")) if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{side} is not a frcnn-trt checkpoint sidecar (format={got})")
    version = _field(data, "format_version", side, int)
    if version not in SUPPORTED_VERSIONS:
        raise CheckpointError(f"checkpoint sidecar {side} has format_version {short(version)}; this frcnn-trt "
                              f"reads {', '.join(map(str, SUPPORTED_VERSIONS))}")
    net = _field(data, "net", side, str)
    if net.lower() not in {n.lower() for n in NETS}:
        raise CheckpointError(f"checkpoint sidecar {side}: unknown network {short(net)} (known: {', '.join(NETS)})")
    names = _class_names(data, side)
    iteration = _field(data, "iteration", side, int)
    if not 0 <= iteration < 1 << 62:
        raise CheckpointError(f"checkpoint sidecar {side}: iteration must be >= 0, got {short(iteration)}")
    extra = data.get("extra", {})
    if not isinstance(extra, dict):
        raise CheckpointError(f"checkpoint sidecar {side}: extra must be an object, got {short(extra)}")
    return CheckpointInfo(net=net, class_names=names, stage=_field(data, "stage", side, str), iteration=iteration,
                          config=_field(data, "config", side, dict),
                          bbox_means=_floats(data, "bbox_means", side, 4 * len(names)),
                          bbox_stds=_floats(data, "bbox_stds", side, 4 * len(names)), extra=extra)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file: header checked first, NaN/inf weights refused; CheckpointError naming the file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    check_safetensors(path, "checkpoint")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # the library's parser on a file that passed our checks: still the file's fault
        raise CheckpointError(f"checkpoint {path} is corrupt or not a safetensors file: {exc}") from None
    check_finite(tensors, path)
    return tensors


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path, *,
                    strict: bool = True) -> None:
    """Copy ``state`` into ``model``; a key or shape mismatch names the file and the first few keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    if shapes or (strict and (missing or unexpected)):
        parts = []
        if shapes:
            parts.append("shape mismatch: " + "; ".join(shapes[:4]))
        if missing:
            parts.append("missing: " + ", ".join(missing[:4]) + (" ..." if len(missing) > 4 else ""))
        if unexpected:
            parts.append("unexpected: " + ", ".join(unexpected[:4]) + (" ..." if len(unexpected) > 4 else ""))
        raise CheckpointError(f"{source} does not fit this model ({'; '.join(parts)})")
    model.load_state_dict(state, strict=False)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, CheckpointInfo]:
    """Build the model a checkpoint describes and load its weights (eval mode)."""

    path = Path(path).with_suffix(".safetensors")
    info = read_info(path)
    try:
        cfg = from_dict(info.config)
    except ConfigError as exc:  # the sidecar was edited or is from elsewhere
        raise CheckpointError(f"checkpoint sidecar {_sidecar(path)} holds an invalid config: {exc}") from None
    if cfg.MODEL.NET.lower() != info.net.lower():
        raise CheckpointError(f"checkpoint sidecar {_sidecar(path)}: net {info.net!r} but its config says "
                              f"MODEL.NET {cfg.MODEL.NET!r}")
    tensors = load_tensors(path)
    cls = tensors.get("predictor.cls_score.weight")
    if cls is not None and cls.dim() >= 1 and cls.shape[0] != info.num_classes:
        raise CheckpointError(f"checkpoint {path}: its sidecar lists {info.num_classes} class names but the "
                              f"classifier has {cls.shape[0]} outputs")
    model = FasterRCNN.from_config(cfg, info.num_classes)
    load_state_into(model, tensors, path)
    return model.to(device).eval(), info


# ---------------------------------------------------------------------------------------------- solver state


def save_solver_state(path: str | Path, model: nn.Module, momentum: dict[str, torch.Tensor],
                      rng: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write an exact-resume state (training-space weights, momentum, RNG states, iteration)."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {f"model/{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"momentum/{k}": v for k, v in momentum.items()})
    tensors.update({f"rng/{k}": v for k, v in rng.items()})
    _save_tensors(path, tensors, metadata={"format": FORMAT + "-solverstate"})
    with atomic_open(path.with_suffix(".json"), "w") as fh:
        json.dump(meta, fh, indent=2)
    return path


def load_solver_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor],
                                                  dict[str, torch.Tensor], dict[str, Any]]:
    path = Path(path)
    tensors = load_tensors(path)
    meta = load_json(path.with_suffix(".json"), "solver state sidecar", MAX_SIDECAR_BYTES, error=CheckpointError)
    if not isinstance(meta, dict):
        raise CheckpointError(f"solver state {path}: its sidecar is not a JSON object")
    model = {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}
    momentum = {k[9:]: v for k, v in tensors.items() if k.startswith("momentum/")}
    rng = {k[4:]: v for k, v in tensors.items() if k.startswith("rng/")}
    return model, momentum, rng, meta
