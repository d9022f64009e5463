"""A matplotlib figure on the Agg canvas, and its atomic PNG write."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from frcnn_trt.io import atomic_write_bytes

#: pixels per inch of every PNG written here
DPI = 100


def new_figure(width: float, height: float) -> Any:
    """A ``matplotlib.figure.Figure`` of ``width × height`` inches bound to an Agg canvas (headless; the global
    ``pyplot`` backend is left alone, so a notebook that imports the package keeps its own)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Any, path: str | Path) -> Path:
    """Render ``fig`` and write it to ``path`` atomically (a reader never sees half a PNG)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
