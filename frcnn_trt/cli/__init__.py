"""The ``frcnn-trt`` command line (typer).

Each command is a thin layer over the Python API: it parses options, calls one function and prints. The
application and what the commands share live in :mod:`frcnn_trt.cli.app`; each ``*_cmds`` module registers its
commands on it when imported. The project's own errors (:class:`frcnn_trt.errors.FrcnnError`) become one red line
and exit code 1; ``--verbose`` shows the traceback instead.
"""

from __future__ import annotations

from frcnn_trt.cli import data_cmds, deploy_cmds, plot_cmds, serve_cmds, train_cmds
from frcnn_trt.cli.app import app

__all__ = ["app", "data_cmds", "deploy_cmds", "main", "plot_cmds", "serve_cmds", "train_cmds"]


def main() -> None:
    app()
