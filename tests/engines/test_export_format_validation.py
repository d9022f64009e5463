"""export.json and the ONNX files it names: every field an engine uses is checked where it is read."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from frcnn_trt.engines.export_checks import graph_outputs
from frcnn_trt.engines.export_format import load_export
from frcnn_trt.errors import ExportError
from tests.helpers import tiny_export


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _ckpt, out = tiny_export(tmp_path_factory.mktemp("exp"), parity=False)
    return out


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "e"
    shutil.copytree(src, dst)
    return dst


def _edit(root: Path, path: tuple[Any, ...], value: Any) -> None:
    doc = json.loads((root / "export.json").read_text())
    node = doc
    for key in path[:-1]:
        node = node[key]
    if value is ...:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    (root / "export.json").write_text(json.dumps(doc))


def test_good_export_loads_and_graph_outputs_are_read(export_dir: Path) -> None:
    info = load_export(export_dir)
    outs = graph_outputs(info.detector_path)
    assert outs["cls_prob"][1] == info.num_classes and outs["bbox_pred"][1] == 4 * info.num_classes


def test_load_export_does_not_import_onnx(export_dir: Path) -> None:
    code = ("import sys; from frcnn_trt.engines.export_format import load_export; "
            f"load_export({str(export_dir)!r}); print('onnx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False", out.stdout + out.stderr


def test_graph_outputs_decodes_value_infos_by_hand(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    outs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 7, 0]),
            helper.make_tensor_value_info("b\u00e9", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, "h"])]
    node = helper.make_node("Identity", ["x"], ["a"])
    graph = helper.make_graph([node, helper.make_node("Identity", ["x"], ["b\u00e9"]),
                               helper.make_node("Identity", ["x"], ["c"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])], outs)
    graph.output[0].type.tensor_type.shape.dim[2].Clear()  # neither dim_value nor dim_param
    onnx.save(helper.make_model(graph), str(tmp_path / "m.onnx"))
    assert graph_outputs(tmp_path / "m.onnx") == {"a": ["n", 7, ""], "b\u00e9": [], "c": [1, "h"]}


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("class_names",), "abc", r"class_names must be a list"),
        (("class_names",), ["__background__", "a"], r"2 class_names but detector\.onnx's cls_prob has"),
        (("class_names",), None, r"class_names must be a list"),
        (("num_classes",), 99, r"num_classes 99 but"),
        (("preprocessing", "pixel_means_bgr"), [1, 2, None], r"pixel_means_bgr must be 3 finite numbers"),
        (("preprocessing", "pixel_means_bgr"), [1, 2], r"pixel_means_bgr must be 3 finite numbers"),
        (("preprocessing", "target_size"), "600", r"target_size must be an integer"),
        (("preprocessing", "max_size"), 0, r"max_size must be an integer in \[1"),
        (("anchors", "base_anchors"), [[0, 0, 1]], r"base_anchors must be"),
        (("anchors", "scales"), [], r"anchors\.scales must be"),
        (("anchors", "feat_stride"), 16.5, r"feat_stride must be an integer"),
        (("proposals", "test", "nms_thresh"), 2, r"proposals\.test\.nms_thresh must be a finite number"),
        (("test", "max_per_image"), -5, r"test\.max_per_image must be an integer"),
        (("format_version",), ..., r"lacks an integer format_version"),
        (("format_version",), 99, r"format_version 99; this frcnn-trt reads 1: upgrade"),
        (("files", "rpn.onnx", "sha256"), "00", r"sha256 must be 64 hexadecimal digits"),
        (("files", "rpn.onnx", "size"), "12", r"size must be a byte count"),
        (("files", "../escape.onnx"), {"size": 1, "sha256": "0" * 64}, r"leads outside"),
        (("files", "/etc/passwd"), {"size": 1, "sha256": "0" * 64}, r"is an absolute path"),
        (("precision", "rpn.onnx"), "fp8", r"precision of 'rpn\.onnx' must be one of"),
        (("roi_op", "pooled_shape"), [7], r"pooled_shape must be 2 positive integers"),
    ],
)
def test_export_json_fields_are_checked(export_dir: Path, tmp_path: Path, path: tuple[Any, ...], value: Any,
                                        message: str) -> None:
    root = _copy(export_dir, tmp_path)
    _edit(root, path, value)
    if path == ("class_names",) and isinstance(value, list):
        _edit(root, ("num_classes",), ...)  # only the graph can disagree now
    with pytest.raises(ExportError, match=message):
        load_export(root)


def test_sha_mismatch_and_special_files(export_dir: Path, tmp_path: Path) -> None:
    import os

    root = _copy(export_dir, tmp_path)
    data = bytearray((root / "rpn.onnx").read_bytes())
    data[-1] ^= 1
    (root / "rpn.onnx").write_bytes(bytes(data))
    with pytest.raises(ExportError, match=r"rpn\.onnx: SHA-256 .* differs"):
        load_export(root)
    (root / "rpn.onnx").unlink()
    os.mkfifo(root / "rpn.onnx")
    with pytest.raises(ExportError, match=r"rpn\.onnx: export file must be a regular file, this is a FIFO"):
        load_export(root, verify=False)
    (root / "export.json").write_bytes(b"\xef\xbb\xbf" + b"[" * 500 + b"]" * 500)
    with pytest.raises(ExportError, match=r"export\.json: export\.json nests deeper"):
        load_export(root)


def test_a_damaged_detector_graph_is_an_export_error(export_dir: Path, tmp_path: Path) -> None:
    root = _copy(export_dir, tmp_path)
    (root / "detector.onnx").write_bytes(b"\x3a\xff\xff\xff\xff\x0f")  # field 7 claiming 4 GiB
    with pytest.raises(ExportError, match=r"detector\.onnx: not a readable ONNX model"):
        graph_outputs(root / "detector.onnx")


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                     max_leaves=12)
_PATHS = st.sampled_from([("class_names",), ("net",), ("preprocessing",), ("preprocessing", "pixel_means_bgr"),
                          ("preprocessing", "target_size"), ("anchors",), ("anchors", "base_anchors"),
                          ("anchors", "scales"), ("proposals",), ("proposals", "test"), ("test",),
                          ("test", "score_thresh"), ("files",), ("files", "rpn.onnx"), ("precision",),
                          ("roi_op",), ("roi_op", "spatial_scale"), ("format_version",), ("num_classes",)])


@pytest.fixture(scope="module")
def fuzz_dir(export_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _copy(export_dir, tmp_path_factory.mktemp("fz"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(_PATHS, _JSON), min_size=1, max_size=3))
def test_fuzzed_export_json_loads_or_raises_an_export_error(export_dir: Path, fuzz_dir: Path,
                                                            edits: list[tuple[tuple[str, ...], Any]]) -> None:
    root = fuzz_dir
    doc = json.loads((export_dir / "export.json").read_text())
    for path, value in edits:
        node = doc
        for key in path[:-1]:
            node = node[key] if isinstance(node, dict) and isinstance(node.get(key), dict) else None
            if node is None:
                break
        if isinstance(node, dict):
            node[path[-1]] = value
    (root / "export.json").write_text(json.dumps(doc))
    try:
        load_export(root, verify=False)
    except ExportError as exc:
        assert "export.json" in str(exc) or "onnx" in str(exc)
