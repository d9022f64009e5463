"""The ``frcnn-trt`` application object, its sub-apps and what the commands share.

Each command is a thin layer over the Python API: it parses options, calls one function and prints.
The project's own errors (:class:`frcnn_trt.errors.FrcnnError`) become one red line and exit code 1;
``--verbose`` shows the traceback instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from frcnn_trt import config as C
from frcnn_trt.errors import FrcnnError
from frcnn_trt.log import console, setup_logging

#: ``--backend`` choices in help texts (the backends' own list, fastest first)
#: ``--backend`` help. The names come from the backend specs (``frcnn_trt.engines.backends``); importing them here
#: would import torch and every runtime for ``--help``, so the help points to ``doctor``, which lists them, and an
#: unknown name is refused with the list when the command runs.
BACKEND_CHOICES = "auto (the fastest that can run here) or a backend name (`frcnn-trt doctor` lists them)"

_state: dict[str, Any] = {"verbose": False}


class _ErrorsAsLines(TyperGroup):
    """Turn FrcnnError into one red line and exit code 1 (or a traceback with ``--verbose``)."""

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except FrcnnError as exc:
            if _state["verbose"]:
                raise
            console(stderr=True).print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_ErrorsAsLines,
    help="py-faster-rcnn in PyTorch: train (alt-opt / end2end), export to ONNX, run with TensorRT / ONNX "
    "Runtime.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
data_app = typer.Typer(help="Datasets: make the synthetic set, inspect an imdb.", no_args_is_help=True)
app.add_typer(data_app, name="data")
train_app = typer.Typer(help="Train: end2end (approximate joint) or alt-opt (four stages).", no_args_is_help=True)
app.add_typer(train_app, name="train")
import_app = typer.Typer(help="Import models trained elsewhere as frcnn-trt checkpoints.", no_args_is_help=True)
app.add_typer(import_app, name="import")


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging and full tracebacks.")] = False,
) -> None:
    _state["verbose"] = verbose
    setup_logging(verbose)


# Options shared by several commands.
DataRoot = Annotated[Path, typer.Option("--data-root", help="Folder holding VOCdevkit<year>/ (py-faster-rcnn's "
                                        "data/).")]
ImdbName = Annotated[str, typer.Option(
    "--imdb", help="voc_2007_trainval, a+b, voc:FOLDER[:split], coco:JSON[:IMAGES], synth:FOLDER[:split]")]
CfgFiles = Annotated[list[Path] | None, typer.Option("--cfg", help="YAML config file(s), applied in order.")]
WITH_SET = {"allow_extra_args": True, "ignore_unknown_options": True}
SET_HELP = (" Trailing `--set KEY VALUE ...` overrides config keys (py-faster-rcnn's form), e.g. "
            "--set TRAIN.SCALES [480].")


def set_pairs(ctx: typer.Context) -> list[str]:
    """py-faster-rcnn's ``--set KEY VALUE ...`` (argparse REMAINDER): everything after ``--set``."""
    args = list(ctx.args)
    if not args:
        return []
    if args[0] != "--set":
        raise typer.BadParameter(f"unexpected arguments: {' '.join(args)} (config overrides go after --set)")
    return args[1:]


def config_from(cfg_files: list[Path] | None, ctx: typer.Context, **sections: Any) -> Any:

    cfg = C.resolve(cfg_files or [], [])
    if sections:
        cfg = C.override(cfg, **sections)
    return C.from_list(set_pairs(ctx), cfg)


def printer() -> Any:
    from rich.console import Console

    from frcnn_trt.distributed import is_main_process

    return console() if is_main_process() else Console(quiet=True)  # under torchrun only rank 0 prints


# ------------------------------------------------------------------------------------------------ data


def train_config(net: str, mode: str, cfg_files: list[Path] | None, ctx: typer.Context, **sections: Any) -> Any:

    files = list(cfg_files) if cfg_files else [C.default_for(net, mode)]
    cfg = C.override(C.resolve(files), MODEL={"NET": net}, **sections)
    return C.from_list(set_pairs(ctx), cfg)


def output_dir(output: Path | None, cfg: C.Config, imdb_name: str) -> Path:
    """py-faster-rcnn's ``output/<EXP_DIR>/<imdb name>/`` unless given."""
    return output or Path("output") / cfg.EXP_DIR / imdb_name.replace("/", "_").replace(":", "_")
