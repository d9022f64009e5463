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
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from frcnn_trt import __version__
from frcnn_trt.config import from_dict
from frcnn_trt.errors import CheckpointError
from frcnn_trt.io import atomic_open, atomic_write_bytes, atomic_write_json
from frcnn_trt.model.faster_rcnn import FasterRCNN

FORMAT = "frcnn-trt-checkpoint"
FORMAT_VERSION = 1


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
    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, save(clean, metadata=metadata))


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


def read_info(path: str | Path) -> CheckpointInfo:
    """Read a checkpoint's sidecar, with a clear error if it is missing or malformed."""
    path = Path(path).with_suffix(".safetensors")
    side = _sidecar(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} has no sidecar {side.name} (class names, net, config)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint sidecar {side} is unreadable or not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{side} is not a frcnn-trt checkpoint sidecar (format={data.get('format')!r})"
                              if isinstance(data, dict) else f"{side} is not a frcnn-trt checkpoint sidecar")
    try:
        return CheckpointInfo(net=str(data["net"]), class_names=list(data["class_names"]),
                              stage=str(data["stage"]), iteration=int(data["iteration"]),
                              config=dict(data["config"]), bbox_means=list(data.get("bbox_means", [])),
                              bbox_stds=list(data.get("bbox_stds", [])), extra=dict(data.get("extra", {})))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint sidecar {side} lacks or mangles field {exc}") from None


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning a corrupt or truncated file into a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a safetensors file: {exc}") from None


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
    except Exception as exc:  # ConfigError and friends: the sidecar was edited or is from elsewhere
        raise CheckpointError(f"checkpoint sidecar {_sidecar(path)} holds an invalid config: {exc}") from None
    model = FasterRCNN.from_config(cfg, info.num_classes)
    load_state_into(model, load_tensors(path), path)
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
    try:
        meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"solver state {path}: sidecar unreadable: {exc}") from None
    model = {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}
    momentum = {k[9:]: v for k, v in tensors.items() if k.startswith("momentum/")}
    rng = {k[4:]: v for k, v in tensors.items() if k.startswith("rng/")}
    return model, momentum, rng, meta
