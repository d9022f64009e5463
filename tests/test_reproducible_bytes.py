"""The same weights give the same file bytes in any process (so SHA-256 provenance only changes with content)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from frcnn_trt.io import canonical_safetensors, npz_bytes

_SAVE = """
import sys, torch
from frcnn_trt import config as C
from frcnn_trt.model.checkpoint import CheckpointInfo, save_checkpoint
from frcnn_trt.model.faster_rcnn import FasterRCNN
from tests.helpers import tiny_cfg
cfg = tiny_cfg()
torch.manual_seed(0)
model = FasterRCNN.from_config(cfg, 3)
info = CheckpointInfo(net="tiny", class_names=["__background__", "a", "b"], stage="s", iteration=1,
                      config=C.to_dict(cfg))
save_checkpoint(sys.argv[1], model, info)
"""


def test_checkpoint_bytes_match_across_processes(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    digests = set()
    for seed in ("0", "12345"):
        out = tmp_path / f"m{seed}.safetensors"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-c", _SAVE, str(out)], check=True, cwd=root, env=env, timeout=300)
        digests.add((hashlib.sha256(out.read_bytes()).hexdigest(),
                     hashlib.sha256(out.with_suffix(".json").read_bytes()).hexdigest()))
    assert len(digests) == 1


def test_canonical_header_sorts_metadata_and_keeps_data() -> None:
    import torch
    from safetensors.torch import load, save

    tensors = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(3, dtype=torch.int64)}
    raw = save(tensors, metadata={"z": "1", "a": "2", "net": "tiny"})
    out = canonical_safetensors(raw)
    n = int.from_bytes(out[:8], "little")
    assert n % 8 == 0 and out[8:8 + n].startswith(b'{"__metadata__":{"a":"2","net":"tiny","z":"1"}')
    assert canonical_safetensors(out) == out and out[8 + n:] == raw[-len(out[8 + n:]):]
    back = load(out)
    assert all(torch.equal(back[k], tensors[k]) for k in tensors)
    single = save(tensors, metadata={"format": "x"})
    assert canonical_safetensors(single) == single  # the library's own layout when there is one order only


def test_npz_bytes_do_not_depend_on_the_clock() -> None:
    arrays = {"boxes": np.arange(8, dtype=np.float32).reshape(2, 4), "counts": np.array([2], np.int64)}
    first = npz_bytes(arrays)
    import time

    time.sleep(2.1)  # zip timestamps have a 2-second resolution
    assert npz_bytes(arrays) == first
    import io

    with np.load(io.BytesIO(first), allow_pickle=False) as z:
        assert np.array_equal(z["boxes"], arrays["boxes"]) and z["counts"].tolist() == [2]
