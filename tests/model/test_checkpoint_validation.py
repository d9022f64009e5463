"""Checkpoint sidecars and tensors a user hands us: every fault is a CheckpointError naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from frcnn_trt import config as C
from frcnn_trt.errors import CheckpointError, FrcnnError
from frcnn_trt.model.checkpoint import CheckpointInfo, load_checkpoint, load_tensors, read_info, save_checkpoint
from frcnn_trt.model.faster_rcnn import FasterRCNN
from frcnn_trt.model.weights import read_state_dict
from tests.helpers import tiny_cfg

NAMES = ["__background__", "a", "b"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = FasterRCNN.from_config(cfg, len(NAMES))
    info = CheckpointInfo(net="tiny", class_names=list(NAMES), stage="test", iteration=1, config=C.to_dict(cfg))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.safetensors", model, info)


def _copy(ckpt: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "c.safetensors"
    shutil.copy(ckpt, dst)
    shutil.copy(ckpt.with_suffix(".json"), dst.with_suffix(".json"))
    return dst


def _edit_sidecar(path: Path, **changes: Any) -> None:
    side = path.with_suffix(".json")
    data = json.loads(side.read_text())
    for k, v in changes.items():
        if v is ...:
            data.pop(k)
        else:
            data[k] = v
    side.write_text(json.dumps(data))


def test_good_checkpoint_loads(ckpt: Path) -> None:
    model, info = load_checkpoint(ckpt)
    assert info.class_names == NAMES and isinstance(model, FasterRCNN)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"class_names": "abc"}, r"class_names' has the wrong type"),
        ({"class_names": ["__background__", ""]}, r"class_names\[1\] must be a non-empty name"),
        ({"class_names": ["__background__", 3]}, r"class_names\[1\] must be a non-empty name"),
        ({"class_names": ["__background__", "a", "a"]}, r"class name 'a' appears twice"),
        ({"class_names": ["__background__", "a", "b", "c"], "bbox_means": [], "bbox_stds": []},
         r"lists 4 class names but the classifier has 3"),
        ({"net": "AlexNet"}, r"unknown network 'AlexNet'"),
        ({"net": "ZF"}, r"net 'ZF' but its config says MODEL.NET 'tiny'"),
        ({"format_version": ...}, r"lacks field 'format_version'"),
        ({"format_version": 7}, r"format_version 7; this frcnn-trt reads 1"),
        ({"format_version": "1"}, r"format_version' has the wrong type"),
        ({"iteration": -1}, r"iteration must be >= 0"),
        ({"iteration": True}, r"iteration' has the wrong type"),
        ({"bbox_means": [0.0] * 11}, r"bbox_means must be 12 finite numbers"),
        ({"config": {"TRAIN": {"FG_THRESH": 7}}}, r"invalid config: TRAIN\.FG_THRESH must be ≤ 1"),
        ({"config": []}, r"config' has the wrong type"),
        ({"extra": 3}, r"extra must be an object"),
        ({"format": "other"}, r"not a frcnn-trt checkpoint sidecar"),
    ],
)
def test_sidecar_fields_are_checked(ckpt: Path, tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    path = _copy(ckpt, tmp_path)
    _edit_sidecar(path, **changes)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_sidecar_non_standard_json_is_refused(ckpt: Path, tmp_path: Path) -> None:
    path = _copy(ckpt, tmp_path)
    side = path.with_suffix(".json")
    side.write_text(side.read_text().replace('"iteration": 1', '"iteration": NaN'))
    with pytest.raises(CheckpointError, match=r"c\.json: checkpoint sidecar: non-standard JSON constant NaN"):
        read_info(path)
    side.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CheckpointError, match=r"c\.json: checkpoint sidecar is not valid"):
        read_info(path)


def test_non_finite_weights_are_refused_naming_the_tensor(ckpt: Path, tmp_path: Path) -> None:
    path = _copy(ckpt, tmp_path)
    tensors = load_tensors(path)
    tensors["predictor.cls_score.bias"][1] = float("nan")
    path.write_bytes(save(tensors, metadata={"format": "frcnn-trt-checkpoint", "net": "tiny"}))
    with pytest.raises(CheckpointError, match=r"c\.safetensors: tensor predictor\.cls_score\.bias holds NaN or inf"):
        load_checkpoint(path)


@pytest.mark.parametrize("cut", [0, 5, 8, 100, -1])
def test_truncated_or_garbage_safetensors_name_the_file(ckpt: Path, tmp_path: Path, cut: int) -> None:
    path = _copy(ckpt, tmp_path)
    data = ckpt.read_bytes()
    path.write_bytes(data[:cut] if cut >= 0 else data + b"tail")
    with pytest.raises(CheckpointError, match=r"c\.safetensors: checkpoint"):
        load_tensors(path)


def test_hand_made_headers_are_bounded(tmp_path: Path) -> None:
    path = tmp_path / "h.safetensors"
    for header in [b'{"a":{"dtype":"F32","shape":[1000000000000],"data_offsets":[0,4]}}',
                   b'{"a":{"dtype":"X9","shape":[1],"data_offsets":[0,4]}}',
                   b'{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}',
                   b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', b"[1, 2]"]:
        header += b" " * (-len(header) % 8)
        path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
        with pytest.raises(CheckpointError, match=r"h\.safetensors"):
            load_tensors(path)
    path.write_bytes((1 << 62).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointError, match=r"header length"):
        load_tensors(path)


@pytest.mark.parametrize(
    "content",
    [b"hello world\n", b"", b"\x80", b"\x80\x02}q\x00.", b"PK\x03\x04garbage", b"\x00" * 64, "é".encode()],
)
def test_a_non_torch_file_passed_as_weights_is_a_checkpoint_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"x\.pth: "):
        read_state_dict(path)


def test_zip_bombs_are_refused(tmp_path: Path) -> None:
    import zipfile

    path = tmp_path / "bomb.pth"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data/0", b"\0" * (64 << 20))
    with pytest.raises(CheckpointError, match=r"bomb\.pth: weights file member .* zip bomb"):
        read_state_dict(path)


def test_non_finite_pth_weights_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save({"conv.weight": torch.tensor([1.0, float("inf")])}, path)
    with pytest.raises(CheckpointError, match=r"w\.pth: tensor conv\.weight holds NaN or inf"):
        read_state_dict(path)


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                     max_leaves=12)
_FIELDS = st.sampled_from(["format", "format_version", "net", "class_names", "stage", "iteration", "config",
                           "bbox_means", "bbox_stds", "extra"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(_FIELDS, _JSON, min_size=1, max_size=3))
def test_fuzzed_sidecars_load_or_raise_a_project_error(ckpt: Path, tmp_path: Path, changes: dict[str, Any]) -> None:
    path = _copy(ckpt, tmp_path)
    _edit_sidecar(path, **changes)
    try:
        read_info(path)
    except CheckpointError as exc:
        assert "c.json" in str(exc) or "c.safetensors" in str(exc)
    except FrcnnError as exc:  # pragma: no cover - would be a wrong error type
        pytest.fail(f"{type(exc).__name__}: {exc}")
