"""Training metrics on disk: one JSON line per iteration, and the PNG curves drawn from them.

Every training run (end2end, each alt-opt stage, crop pretraining) appends to ``<stage>_metrics.jsonl`` in its
output folder, one object per iteration::

    {"stage": "stage1_rpn", "iteration": 20, "lr": 0.001, "s_per_iter": 0.41, "images_per_s": 2.44,
     "losses": {"rpn_loss_cls": 0.21, "rpn_loss_bbox": 0.05, "total_loss": 0.26}, "metrics": {}}

(``metrics``: other numbers, such as pretraining's accuracy; ``s_per_iter``: the wall time of that iteration,
snapshots excluded; ``images_per_s``: images of the iteration over it — crops for pretraining.)

Why JSON Lines: a row is appended with one ``write`` and flushed, so a killed run leaves every finished row and
at most one torn last line, which :func:`read_metrics` skips with a warning. A resumed run first keeps only the
rows up to the iteration it resumes from (rewritten atomically), so no iteration appears twice; the rows up to a
snapshot are fsync'ed before its solver state is written, so a resume never lacks them. The file is appended
to, not replaced, so it is the one file of a run not written through :func:`frcnn_trt.io.atomic_open`; it is
created by :func:`frcnn_trt.io.atomic_write_text`, with the same permissions.

Figures: ``<stage>_curves.png`` beside the file; an alt-opt run's four stages side by side in
``training_curves.png`` of the run folder. :func:`plot_run` (``frcnn-trt plot RUN_DIR``) redraws them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import IO, Any

import numpy as np

from frcnn_trt.errors import FrcnnError, TrainingError
from frcnn_trt.files import check_regular_file, number, parse_json, read_bytes, short
from frcnn_trt.io import atomic_write_text
from frcnn_trt.log import get_logger
from frcnn_trt.plotting import StageCurves, draw_training_curves

__all__ = [
    "CURVES_SUFFIX",
    "METRICS_SUFFIX",
    "RUN_FIGURE",
    "MetricsLog",
    "MetricsRow",
    "default_figure",
    "draw_stage",
    "find_metrics_files",
    "load_stage_curves",
    "metrics_log",
    "plot_run",
    "read_metrics",
    "redraw",
]

logger = get_logger("metrics")

METRICS_SUFFIX = "_metrics.jsonl"
CURVES_SUFFIX = "_curves.png"
#: the figure of a run folder holding several stages (alt-opt)
RUN_FIGURE = "training_curves.png"
#: the largest metrics file read (an 80k-iteration stage is about 25 MB)
MAX_METRICS_BYTES = 512 << 20
#: the order stages are drawn in, left to right (others follow, by path)
STAGE_ORDER = ("pretrain", "stage1_rpn", "stage1_fast_rcnn", "stage2_rpn", "stage2_fast_rcnn", "end2end")


@dataclass(frozen=True)
class MetricsRow:
    stage: str
    iteration: int
    lr: float
    s_per_iter: float
    images_per_s: float
    losses: dict[str, float]
    metrics: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ writing


class MetricsLog:
    """Appends the rows of one stage to ``path``; the rows beyond ``start`` (an earlier run's, past the snapshot
    this run resumes from) are dropped first, all of them when ``start`` is 0."""

    def __init__(self, path: str | Path, stage: str, *, start: int = 0, images_per_iter: int = 1) -> None:
        self.path, self.stage, self.images_per_iter = Path(path), stage, images_per_iter
        self._keep_until(start)
        self._fh: IO[str] | None = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._t0 = time.perf_counter()

    def _keep_until(self, start: int) -> None:
        kept: list[str] = []
        if start > 0 and self.path.exists():
            kept = [json.dumps(_row_json(r), allow_nan=False) + "\n" for r in
                    read_metrics(self.path, strict=False) if r.iteration <= start]
        atomic_write_text(self.path, "".join(kept))

    def start_iteration(self) -> None:
        """Mark the start of an iteration (its row's ``s_per_iter`` is measured from here)."""
        self._t0 = time.perf_counter()

    def append(self, iteration: int, losses: Mapping[str, float], lr: float,
               metrics: Mapping[str, float] | None = None) -> None:
        """One row: the iteration just finished, its losses and learning rate, its time since
        :meth:`start_iteration` (or since the previous row)."""
        seconds = max(time.perf_counter() - self._t0, 1e-9)
        row = MetricsRow(self.stage, int(iteration), float(lr), seconds, self.images_per_iter / seconds,
                         {k: float(v) for k, v in losses.items()}, {k: float(v) for k, v in (metrics or {}).items()})
        if self._fh is not None:
            self._fh.write(json.dumps(_row_json(row), allow_nan=False) + "\n")
            self._fh.flush()
        self._t0 = time.perf_counter()  # the next iteration starts now, unless start_iteration says otherwise

    def sync(self) -> None:
        """Every row so far on disk (before a snapshot's solver state is written)."""
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self.sync()
            self._fh.close()
            self._fh = None


def _row_json(r: MetricsRow) -> dict[str, Any]:
    return {"stage": r.stage, "iteration": r.iteration, "lr": r.lr, "s_per_iter": round(r.s_per_iter, 6),
            "images_per_s": round(r.images_per_s, 4), "losses": r.losses, "metrics": r.metrics}


@contextmanager
def metrics_log(enabled: bool, path: Path, stage: str, *, start: int, images_per_iter: int,
                draw: Callable[[], object]) -> Iterator[MetricsLog | None]:
    """A :class:`MetricsLog` (None when not ``enabled``: the other ranks under torchrun), closed and its figure
    drawn (:func:`redraw`) when the block ends, also when it ends by an error."""
    if not enabled:
        yield None
        return
    log = MetricsLog(path, stage, start=start, images_per_iter=images_per_iter)
    try:
        yield log
    finally:
        log.close()
        redraw(draw, path.with_name(path.name.replace(METRICS_SUFFIX, CURVES_SUFFIX)).name)


def redraw(draw: Callable[[], object], what: str) -> None:
    """Call ``draw``; a figure that cannot be drawn is a warning, never the end of a training run."""
    try:
        draw()
    except (FrcnnError, OSError, ValueError, RuntimeError, ImportError) as e:
        logger.warning("could not draw %s: %s", what, e)


# ------------------------------------------------------------------------------------------------ reading


def read_metrics(path: str | Path, *, strict: bool = True) -> list[MetricsRow]:
    """The rows of a metrics file, each checked (types, finite numbers, ranges).

    A torn last line (no line end: the run was killed while writing it) is skipped with a warning. Any other bad
    line raises :class:`TrainingError` naming the file and line (``strict``) or is skipped with a warning.
    """
    data = read_bytes(path, "training metrics file", MAX_METRICS_BYTES, TrainingError)
    lines = data.split(b"\n")
    rows: list[MetricsRow] = []
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        torn = n == len(lines)  # the last piece had no line end
        try:
            rows.append(_parse_row(raw, f"{path}:{n}"))
        except TrainingError as e:
            if strict and not torn:
                raise
            logger.warning("%s: %s, line skipped", "torn last line" if torn else "bad line", e)
    return rows


def _parse_row(raw: bytes, where: str) -> MetricsRow:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TrainingError(f"{where}: not UTF-8 text") from None
    obj = parse_json(text, where, "metrics row", max_nesting=4, error=TrainingError)
    if not isinstance(obj, dict):
        raise TrainingError(f"{where}: a metrics row must be a JSON object, got {short(obj)}")
    missing = [k for k in ("stage", "iteration", "lr", "losses") if k not in obj]
    if missing:
        raise TrainingError(f"{where}: metrics row lacks {', '.join(missing)}")
    if not isinstance(obj["stage"], str) or not obj["stage"]:
        raise TrainingError(f"{where}: stage must be a non-empty string, got {short(obj['stage'])}")

    def num(key: str, **kw: Any) -> Any:
        return number(obj.get(key, 0.0), f"{where}: {key}", error=TrainingError, **kw)

    return MetricsRow(obj["stage"], num("iteration", integer=True, lo=1), num("lr", lo=0.0), num("s_per_iter", lo=0.0),
                      num("images_per_s", lo=0.0), _values(obj["losses"], f"{where}: losses", required=True),
                      _values(obj.get("metrics", {}), f"{where}: metrics", required=False))


def _values(obj: Any, where: str, *, required: bool) -> dict[str, float]:
    if not isinstance(obj, dict) or (required and not obj):
        raise TrainingError(f"{where}: expected {'a non-empty' if required else 'an'} object of numbers, got "
                            f"{short(obj)}")
    return {str(k): number(v, f"{where}.{k}", error=TrainingError) for k, v in obj.items()}


def load_stage_curves(path: str | Path) -> StageCurves:
    """A metrics file as the arrays a figure takes (a loss missing from some rows is NaN there: a gap)."""
    rows = read_metrics(path)
    for prev, row in pairwise(rows):
        if row.iteration <= prev.iteration:
            raise TrainingError(f"{path}: iteration {row.iteration} follows {prev.iteration} (rows out of order "
                                "or repeated: not one run's file)")
    name = rows[0].stage if rows else Path(path).name.removesuffix(METRICS_SUFFIX)

    def column(key: str, extra: bool) -> np.ndarray:
        return np.array([(r.metrics if extra else r.losses).get(key, np.nan) for r in rows], dtype=np.float64)

    loss_keys = sorted({k for r in rows for k in r.losses})
    metric_keys = sorted({k for r in rows for k in r.metrics})
    return StageCurves(name=name, iterations=np.array([r.iteration for r in rows], dtype=np.int64),
                       losses={k: column(k, False) for k in loss_keys}, lr=np.array([r.lr for r in rows]),
                       extra={k: column(k, True) for k in metric_keys})


def find_metrics_files(run: str | Path) -> list[Path]:
    """A metrics file itself, or those of a run folder and of its stage folders (one level down), in
    :data:`STAGE_ORDER`."""
    run = Path(run)
    if not run.is_dir():
        check_regular_file(run, "training metrics file", TrainingError)
        return [run]
    found = [p for p in [*run.glob(f"*{METRICS_SUFFIX}"), *run.glob(f"*/*{METRICS_SUFFIX}")] if not
             p.name.startswith(".")]

    def order(p: Path) -> tuple[int, str]:
        stage = p.name.removesuffix(METRICS_SUFFIX)
        return (STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER), str(p))

    return sorted(found, key=order)


def default_figure(run: Path, files: list[Path]) -> Path:
    """``<stage>_curves.png`` beside a single stage's file, else ``training_curves.png`` in the run folder."""
    if len(files) == 1 and (not run.is_dir() or files[0].parent == run):
        return files[0].with_name(files[0].name.replace(METRICS_SUFFIX, CURVES_SUFFIX))
    return run / RUN_FIGURE


def draw_stage(folder: str | Path, name: str, title: str | None = None) -> Path:
    """Stage ``name``'s ``<name>_curves.png`` from its ``<name>_metrics.jsonl`` in ``folder``."""
    folder = Path(folder)
    return draw_training_curves([load_stage_curves(folder / f"{name}{METRICS_SUFFIX}")],
                                folder / f"{name}{CURVES_SUFFIX}", title or f"training curves · {name}")


def plot_run(run: str | Path, output: str | Path | None = None) -> Path:
    """Draw the curves of a run folder (alt-opt: its stages side by side) or of one metrics file; returns the
    PNG (default: :func:`default_figure`)."""
    run = Path(run)
    if not run.exists():
        raise TrainingError(f"{run}: no such run folder or metrics file")
    files = find_metrics_files(run)
    if not files:
        raise TrainingError(f"{run}: no training metrics (*{METRICS_SUFFIX}) in this folder or its stage folders")
    stages = [load_stage_curves(f) for f in files]
    target = Path(output) if output is not None else default_figure(run, files)
    title = f"training curves · {run.resolve().name}" if run.is_dir() else f"training curves · {stages[0].name}"
    return draw_training_curves(stages, target, title)
