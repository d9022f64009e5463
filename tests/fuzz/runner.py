"""Running one corpus case through its reader: a valid result or a project error, in time; anything else fails."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from frcnn_trt import config as C
from frcnn_trt.errors import FrcnnError
from tests.fuzz.corpus import Base, Case

__all__ = ["CaseTimeout", "check_outcome", "read_case", "time_limit"]


class CaseTimeout(Exception):
    """A case ran past its time limit (a hang)."""


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """SIGALRM after ``seconds``: a blocking read (a FIFO opened for reading) is interrupted, not waited on."""
    def fire(signum: int, frame: Any) -> None:
        raise CaseTimeout(f"no result after {seconds} s (a hang)")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _imdb_ids(name: str) -> set[str]:
    from frcnn_trt.data.factory import get_imdb

    return {a.image_id for a in get_imdb(name, "data").annotations()}


def read_case(case: Case, base: Base, target: Any) -> set[str] | None:
    """Run the reader of ``case.kind`` on ``target``; the image ids it kept (None for kinds without ids)."""
    from frcnn_trt.data.images import read_image
    from frcnn_trt.engines.export_format import load_export
    from frcnn_trt.evaluation import load_detections
    from frcnn_trt.model.checkpoint import load_checkpoint, load_tensors, read_info
    from frcnn_trt.model.weights import read_state_dict
    from frcnn_trt.train.rpn_generate import load_proposals
    from tests.helpers import tiny_cfg

    kind = case.kind
    if kind in ("voc_xml", "image_set", "classes_txt", "coco_json"):
        return _imdb_ids(target)
    if kind == "image":
        name, img = target
        with contextlib.suppress(FrcnnError):  # the image alone: refused or read; then the dataset around it
            read_image(img)
        return _imdb_ids(name)
    if kind == "config_yaml":
        C.load(target)
    elif kind == "config_set":
        C.from_list(target, tiny_cfg())
    elif kind == "checkpoint_sidecar":
        read_info(target)
        load_checkpoint(target)
    elif kind == "safetensors":
        load_tensors(target)
    elif kind == "export_json":
        load_export(target)
    elif kind == "proposals":
        load_proposals(target)
    elif kind == "weights":
        read_state_dict(target)
    elif kind == "detections":
        return set(load_detections(target, ("__background__", "circle", "square", "triangle"),
                                   image_ids=list(base.image_ids)).image_ids)
    else:
        raise AssertionError(f"unknown corpus kind {kind}")
    return None


def check_outcome(case: Case, base: Base, folder: Path, seconds: int = 20) -> str | None:
    """``None`` when the case ends as it must; otherwise one line saying what went wrong."""
    try:
        with time_limit(seconds):
            target = case.build(base, folder)
            kept = read_case(case, base, target)
    except FrcnnError as e:
        msg = str(e)
        if "\n" in msg.strip() or len(msg) > 3000:
            return f"error message is not one short line ({len(msg)} chars): {msg[:200]!r}"
        if case.survivors:
            return f"refused the whole input, dropping the good records beside the bad one: {msg[:300]}"
        return None
    except CaseTimeout as e:
        return str(e)
    except Exception as e:
        return f"{type(e).__name__}: {str(e)[:300]}"
    if case.must_refuse:
        return "accepted an input that must be refused"
    if case.survivors and kept is not None and not set(case.survivors) <= kept:
        return f"good records lost: kept {sorted(kept)[:5]}, expected {list(case.survivors)}"
    return None
