"""Logging setup: stdlib ``logging`` with a ``rich`` handler on a terminal, plain lines otherwise."""

from __future__ import annotations

import logging
import sys

from rich.console import Console
from rich.logging import RichHandler

LOGGER_NAME = "frcnn_trt"


def is_interactive() -> bool:
    return sys.stdout.isatty()


def console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def setup_logging(verbose: bool = False) -> logging.Logger:
    """Configure the package logger once (idempotent); ``verbose`` turns on DEBUG."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    for h in list(logger.handlers):
        if getattr(h, "_frcnn_trt", False):
            logger.removeHandler(h)
    handler: logging.Handler
    if sys.stderr.isatty():
        handler = RichHandler(console=console(stderr=True), show_path=False, rich_tracebacks=verbose,
                              log_time_format="[%H:%M:%S]")
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(message)s", "%H:%M:%S"))
    handler._frcnn_trt = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    return logger


def get_logger(name: str) -> logging.Logger:
    """A child of the package logger (``frcnn_trt.<name>``)."""
    if not name.startswith(LOGGER_NAME):
        name = f"{LOGGER_NAME}.{name}"
    return logging.getLogger(name)
