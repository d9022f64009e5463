"""The ``frcnn-trt`` command line (typer).

Each command is a thin layer over the Python API: it parses options, calls one function and prints.
The project's own errors (:class:`frcnn_trt.errors.FrcnnError`) become one red line and exit code 1;
``--verbose`` shows the traceback instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup

from frcnn_trt.errors import FrcnnError
from frcnn_trt.log import console, setup_logging

_state: dict[str, Any] = {"verbose": False}


class _ErrorsAsLines(TyperGroup):
    """Turn FrcnnError into one red line and exit code 1 (or a traceback with ``--verbose``)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FrcnnError as exc:
            if _state["verbose"]:
                raise
            console(stderr=True).print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_ErrorsAsLines,
    help="py-faster-rcnn in PyTorch: train (alt-opt / end2end), export to ONNX, run with TensorRT / ONNX Runtime.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
data_app = typer.Typer(help="Datasets: make the synthetic set, inspect an imdb.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging and full tracebacks.")] = False,
) -> None:
    _state["verbose"] = verbose
    setup_logging(verbose)


# Options shared by several commands.
DataRoot = Annotated[Path, typer.Option("--data-root", help="Folder holding VOCdevkit<year>/ (py-faster-rcnn's data/).")]
ImdbName = Annotated[str, typer.Option("--imdb", help="voc_2007_trainval, a+b, voc:FOLDER[:split], coco:JSON[:IMAGES], synth:FOLDER:split")]


def main() -> None:
    app()
