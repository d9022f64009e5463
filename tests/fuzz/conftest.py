"""The valid base files the corpus starts from, made once per session (a few seconds: the tiny export)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.fuzz.corpus import Base
from tests.helpers import tiny_export

#: the ids of the base dataset's split "test" (the corpus breaks the first one)
IMAGE_IDS = ("000000", "000001", "000002")
CLASSES = ("circle", "square", "triangle")  # 3 classes: the tiny model has 4 outputs with background


def _coco_json(root: Path, out: Path) -> None:
    from frcnn_trt.data.factory import get_imdb

    anns = get_imdb(f"synth:{root}:test", root).annotations()
    images, annotations = [], []
    for n, a in enumerate(anns, start=1):
        images.append({"id": n, "file_name": Path(a.path).name, "width": a.width, "height": a.height})
        for k, (box, cls) in enumerate(zip(a.boxes.tolist(), a.classes.tolist(), strict=True)):
            x1, y1, x2, y2 = box
            annotations.append({"id": n * 1000 + k, "image_id": n, "category_id": int(cls), "iscrowd": 0,
                                "bbox": [x1, y1, x2 - x1 + 1, y2 - y1 + 1], "area": (x2 - x1 + 1) * (y2 - y1 + 1)})
    cats = [{"id": i, "name": c} for i, c in enumerate(CLASSES, start=1)]
    out.write_text(json.dumps({"images": images, "annotations": annotations, "categories": cats}))


@pytest.fixture(scope="session")
def corpus_base(tmp_path_factory: pytest.TempPathFactory) -> Base:
    from frcnn_trt.data.synthetic import make_synthetic_dataset
    from frcnn_trt.train.rpn_generate import Proposals, save_proposals

    root = tmp_path_factory.mktemp("corpus_base")
    ds = root / "shapes"
    make_synthetic_dataset(ds, num_images=4, image_size=(64, 48), classes=CLASSES, seed=0, test_fraction=0.5)
    (ds / "ImageSets" / "Main" / "test.txt").write_text("\n".join(IMAGE_IDS) + "\n")
    ckpt, export = tiny_export(root / "model", parity=False)
    side = ckpt.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta["class_names"] = ["__background__", *CLASSES]
    side.write_text(json.dumps(meta, indent=2))
    boxes = {i: np.array([[0, 0, 10, 10], [5, 5, 20, 20]], np.float32) for i in IMAGE_IDS}
    scores = {i: np.array([0.9, 0.5], np.float32) for i in IMAGE_IDS}
    proposals = save_proposals(root / "props" / "proposals.npz", Proposals(list(IMAGE_IDS), boxes, scores, {}))
    coco = root / "instances.json"
    _coco_json(ds, coco)
    return Base(dataset=ds, checkpoint=ckpt, export=export, proposals=proposals, coco_json=coco,
                image_ids=IMAGE_IDS)
