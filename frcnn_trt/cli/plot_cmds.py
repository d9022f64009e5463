"""``frcnn-trt plot``: redraw a training run's curves from its metrics files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from frcnn_trt.cli.app import app, printer


@app.command("plot")
def plot_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A training run folder (end2end, alt-opt with its stage folders, "
                                            "pretraining) or one *_metrics.jsonl file.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="PNG to write (default: <stage>_curves.png "
                                                "beside a single stage's metrics, training_curves.png in a "
                                                "folder of several stages).")] = None,
) -> None:
    """Draw the training curves (losses, learning rate) of a run from its *_metrics.jsonl files."""
    from frcnn_trt.train.metrics import find_metrics_files, plot_run

    path = plot_run(run_dir, output)
    files = find_metrics_files(run_dir)
    printer().print(f"[green]wrote[/] {path} ({len(files)} stage(s): "
                    + ", ".join(f.name.removesuffix("_metrics.jsonl") for f in files) + ")")
