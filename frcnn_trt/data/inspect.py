"""``data inspect``: what a dataset holds and what was wrong with it, as a report and rich tables.

:func:`inspect_imdb` summarises an imdb (images, objects and difficult objects per class, images without
objects, image and box sizes, every issue with its file and reason). Later stages append their own rows
with :meth:`InspectReport.add_row` (e.g. section ``"roidb"``: flipped copies, entries filtered and why);
:func:`render_report` draws every section, so new rows need no new rendering code.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.console import Console, Group
from rich.table import Table

from frcnn_trt.data.imdb import DatasetIssue, Imdb
from frcnn_trt.data.skipped import skipped_lines

__all__ = ["InspectReport", "inspect_imdb", "print_report", "render_report"]

_SEVERITY_STYLE = {"error": "red", "warning": "yellow", "info": "dim"}


@dataclass
class InspectReport:
    """Facts about one dataset. ``sections`` holds ordered ``(label, value)`` rows per section name."""

    name: str
    classes: tuple[str, ...]
    num_images: int
    objects_per_class: dict[str, int]
    difficult_per_class: dict[str, int]
    images_without_objects: list[str]
    issues: list[DatasetIssue]
    sections: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    #: ``skipped: <file>: <reason>`` lines (:func:`frcnn_trt.data.skipped.skipped_lines`), as training logs them
    skipped: list[str] = field(default_factory=list)

    @property
    def num_objects(self) -> int:
        return sum(self.objects_per_class.values())

    @property
    def num_difficult(self) -> int:
        return sum(self.difficult_per_class.values())

    def add_row(self, section: str, label: str, value: object) -> None:
        """Append a ``label: value`` row to ``section`` (created at the end if new)."""
        self.sections.setdefault(section, []).append((label, str(value)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``--json`` output)."""
        return {
            "name": self.name,
            "classes": list(self.classes),
            "num_images": self.num_images,
            "num_objects": self.num_objects,
            "num_difficult": self.num_difficult,
            "objects_per_class": self.objects_per_class,
            "difficult_per_class": self.difficult_per_class,
            "images_without_objects": self.images_without_objects,
            "issues": [
                {"file": i.file, "message": i.message, "kind": i.kind, "severity": i.severity} for i in self.issues
            ],
            "sections": {k: [list(r) for r in v] for k, v in self.sections.items()},
            "skipped": list(self.skipped),
        }


def _range(values: np.ndarray) -> str:
    if values.size == 0:
        return "-"
    lo, med, hi = np.percentile(values, [0, 50, 100])
    return f"min {lo:g}, median {med:g}, max {hi:g}"


def inspect_imdb(imdb: Imdb) -> InspectReport:
    """Load ``imdb``'s annotations (non-strict problems become issues) and summarise them."""
    records = imdb.annotations()
    names = imdb.classes[1:]
    classes = np.concatenate([r.classes for r in records]) if records else np.zeros(0, np.int64)
    difficult = np.concatenate([r.difficult for r in records]) if records else np.zeros(0, bool)
    boxes = np.concatenate([r.boxes for r in records]) if records else np.zeros((0, 4), np.float32)
    per_class = np.bincount(classes, minlength=imdb.num_classes)
    diff_per_class = np.bincount(classes[difficult], minlength=imdb.num_classes)
    report = InspectReport(
        name=imdb.name,
        classes=imdb.classes,
        num_images=len(records),
        objects_per_class={c: int(per_class[k]) for k, c in enumerate(names, start=1)},
        difficult_per_class={c: int(diff_per_class[k]) for k, c in enumerate(names, start=1)},
        images_without_objects=[r.image_id for r in records if r.num_objects == 0],
        issues=imdb.issues,
    )
    report.skipped = skipped_lines(report.issues)
    widths = np.array([r.width for r in records])
    heights = np.array([r.height for r in records])
    box_w = boxes[:, 2] - boxes[:, 0] + 1
    box_h = boxes[:, 3] - boxes[:, 1] + 1
    report.add_row("dataset", "name", imdb.name)
    report.add_row("dataset", "type", type(imdb).__name__)
    report.add_row("dataset", "images", report.num_images)
    report.add_row("dataset", "classes", f"{imdb.num_classes - 1} (+ background)")
    report.add_row("dataset", "objects", f"{report.num_objects} ({report.num_difficult} difficult)")
    report.add_row("dataset", "images without objects", len(report.images_without_objects))
    report.add_row("dataset", "image width", _range(widths))
    report.add_row("dataset", "image height", _range(heights))
    report.add_row(
        "dataset",
        "landscape / portrait",
        f"{int((widths >= heights).sum())} / {int((widths < heights).sum())}",
    )
    report.add_row("dataset", "box width (px)", _range(box_w))
    report.add_row("dataset", "box height (px)", _range(box_h))
    report.add_row("dataset", "metric", "VOC07 11-point AP" if imdb.use_07_metric else "area under PR curve")
    counts = Counter((i.severity, i.kind) for i in report.issues)
    report.add_row("issues", "total", len(report.issues))
    for (severity, kind), n in sorted(counts.items()):
        report.add_row("issues", f"{kind.replace('_', ' ')} ({severity})", n)
    return report


def render_report(report: InspectReport, *, max_issues: int = 50) -> Group:
    """Rich renderables: one summary table (all sections), a per-class table and an issues table."""
    summary = Table(title=f"dataset {report.name}", show_header=False, title_justify="left")
    summary.add_column("item", style="bold")
    summary.add_column("value")
    for section, rows in report.sections.items():
        summary.add_row(f"[cyan]{section}[/cyan]", "")
        for label, value in rows:
            summary.add_row(f"  {label}", value)

    per_class = Table(title="objects per class", title_justify="left")
    per_class.add_column("index", justify="right")
    per_class.add_column("class")
    per_class.add_column("objects", justify="right")
    per_class.add_column("difficult", justify="right")
    for k, name in enumerate(report.classes[1:], start=1):
        n = report.objects_per_class.get(name, 0)
        style = "red" if n == 0 else None
        per_class.add_row(str(k), name, str(n), str(report.difficult_per_class.get(name, 0)), style=style)

    parts: list[Any] = [summary, per_class]
    if report.skipped:
        skipped = Table(title=f"skipped ({len(report.skipped)})", title_justify="left", show_header=False)
        skipped.add_column("what was skipped and why", overflow="fold")
        for line in report.skipped[:max_issues]:
            skipped.add_row(line, style="red")
        if len(report.skipped) > max_issues:
            skipped.add_row(f"... and {len(report.skipped) - max_issues} more (--json lists all)")
        parts.append(skipped)
    if report.issues:
        issues = Table(title=f"issues ({len(report.issues)})", title_justify="left")
        issues.add_column("severity")
        issues.add_column("kind")
        issues.add_column("file", overflow="fold")
        issues.add_column("problem", overflow="fold")
        order = {"error": 0, "warning": 1, "info": 2}
        shown = sorted(report.issues, key=lambda i: order.get(i.severity, 3))[:max_issues]
        for i in shown:
            issues.add_row(i.severity, i.kind, i.file, i.message, style=_SEVERITY_STYLE.get(i.severity))
        if len(report.issues) > len(shown):
            issues.add_row("", "", f"... and {len(report.issues) - len(shown)} more", "")
        parts.append(issues)
    return Group(*parts)


def print_report(report: InspectReport, console: Console | None = None, *, max_issues: int = 50) -> None:
    (console or Console()).print(render_report(report, max_issues=max_issues))
