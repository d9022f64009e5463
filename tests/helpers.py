"""Test helpers: the tiny-net config, and a tiny random-weight model with its export (CPU, a few seconds).

:func:`tiny_cfg` is the small CPU net with anchors scaled to small images (scales 2, 4, 8; RPN min size 4) at
112 px, for training tests; :func:`tiny_config` is the same config at the export tests' test scale (240, max 400,
TEST RPN 6000 / 300). :func:`tiny_export` writes (or reuses) its checkpoint and export in a folder, so
several test modules of one pytest session can share one export through ``tmp_path_factory.getbasetemp()``.
"""

from __future__ import annotations

from pathlib import Path

from frcnn_trt import config as C
from frcnn_trt.errors import ExportError

__all__ = ["tiny_cfg", "tiny_config", "tiny_export"]

TINY_CLASSES = 4


def tiny_cfg(**sections: object) -> C.Config:
    """The tiny CPU net at a small scale, end2end settings; ``sections`` override on top."""
    cfg = C.load(C.builtin("faster_rcnn_end2end"))
    cfg = C.override(
        cfg,
        MODEL={"NET": "tiny", "ANCHOR_SCALES": [2, 4, 8]},
        TRAIN={"SCALES": [112], "MAX_SIZE": 160, "RPN_MIN_SIZE": 4, "SNAPSHOT_ITERS": 0, "NUM_WORKERS": 0,
               "RPN_PRE_NMS_TOP_N": 600, "RPN_POST_NMS_TOP_N": 100, "BATCH_SIZE": 32, "RPN_BATCHSIZE": 64},
        TEST={"SCALES": [112], "MAX_SIZE": 160, "RPN_MIN_SIZE": 4, "RPN_PRE_NMS_TOP_N": 300, "RPN_POST_NMS_TOP_N": 50},
        SOLVER={"BASE_LR": 0.005, "STEPSIZE": 1000, "MAX_ITERS": 4, "DISPLAY": 2},
        DEVICE="cpu",
    )
    return C.override(cfg, **sections) if sections else cfg


def tiny_config(**sections: object) -> C.Config:
    """:func:`tiny_cfg` at the export tests' test scale: TEST scale 240 / max 400 and py-faster-rcnn's TEST RPN
    6000 / 300 (what an export records; the training settings do not reach an export)."""
    test = {"SCALES": [240], "MAX_SIZE": 400, "RPN_PRE_NMS_TOP_N": 6000, "RPN_POST_NMS_TOP_N": 300}
    cfg = tiny_cfg(TEST=test)
    return C.override(cfg, **sections) if sections else cfg


def tiny_export(root: str | Path, *, fp16: bool = False, parity: bool = True) -> tuple[Path, Path]:
    """``(checkpoint, export_dir)`` under ``root``: a random tiny model (RPN scores spread out, so proposals
    are not near-ties) and its export with the parity check (2 synthetic images). Reused when present."""
    # imported here: conftest imports this module, and the whole suite need not load the exporter to collect
    from frcnn_trt.engines.export_format import load_export
    from frcnn_trt.export.onnx_export import export_model, random_checkpoint, run_parity
    from frcnn_trt.export.parity import synthetic_images
    from frcnn_trt.io import sha256_file
    from frcnn_trt.model.checkpoint import load_checkpoint
    from frcnn_trt.model.faster_rcnn import FasterRCNN

    root = Path(root)
    ckpt = root / "tiny_final.safetensors"
    out = root / ("tiny_export_fp16" if fp16 else "tiny_export")
    if ckpt.is_file() and (out / "export.json").is_file():
        try:
            load_export(out, verify=False)
            return ckpt, out
        except ExportError:
            pass
    if not ckpt.is_file():
        random_checkpoint(ckpt, net="tiny", num_classes=TINY_CLASSES, cfg=tiny_config(), seed=0, rpn_spread=50.0)
    model, info = load_checkpoint(ckpt)
    assert isinstance(model, FasterRCNN)
    result = export_model(model, cfg=tiny_config(), class_names=info.class_names, output_dir=out, fp16=fp16,
                          source={"checkpoint": str(ckpt.resolve()), "sha256": sha256_file(ckpt)})
    if parity:
        run_parity(result, model, synthetic_images(2, sizes=((150, 200), (200, 133))))
    return ckpt, out
