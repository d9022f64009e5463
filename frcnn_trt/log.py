"""Logging setup: stdlib ``logging`` with a ``rich`` handler on a terminal, plain lines otherwise."""

from __future__ import annotations

import logging
import sys
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

LOGGER_NAME = "frcnn_trt"


_STDERR: Console | None = None


def is_interactive() -> bool:
    return sys.stdout.isatty()


def stderr_console() -> Console:
    """The one stderr console shared by the log handler and progress bars (so bars and lines don't clash)."""
    global _STDERR
    if _STDERR is None:
        _STDERR = Console(stderr=True, highlight=False, soft_wrap=True)
    return _STDERR


class IterationProgress:
    """A rich progress bar over iterations on a terminal; nothing when stderr is not one (CI, logs, files)."""

    def __init__(self, label: str, total: int, start: int = 0, enabled: bool = True) -> None:
        self._progress: Progress | None = None
        if enabled and sys.stderr.isatty():
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeRemainingColumn(), TextColumn("{task.fields[loss]}"),
                                      console=stderr_console(), transient=True)
            self._task = self._progress.add_task(label, total=total, completed=start, loss="")

    def __enter__(self) -> IterationProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def update(self, done: int, loss: float | None = None) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=done, loss=f"loss {loss:.4f}" if loss is not None else "")

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


#: the name of the one handler :func:`setup_logging` installs (and replaces when called again)
_HANDLER_NAME = "frcnn_trt.console"
_ROOT_HANDLER_NAME = "frcnn_trt.foreign"


def console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler on whatever ``sys.stderr`` is when a record is written, not when the handler was made: an
    embedding program (or a test runner) that swaps and closes stderr never leaves a handler on a closed file."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ assigns it; the property always wins
        pass


def setup_logging(verbose: bool = False) -> logging.Logger:
    """Configure the package logger once (idempotent); ``verbose`` turns on DEBUG."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    for h in list(logger.handlers):
        if h.get_name() == _HANDLER_NAME:
            logger.removeHandler(h)
    handler: logging.Handler
    if sys.stderr.isatty():
        handler = RichHandler(console=stderr_console(), show_path=False, rich_tracebacks=verbose,
                              log_time_format="[%H:%M:%S]")
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(message)s", "%H:%M:%S"))
    handler.set_name(_HANDLER_NAME)
    logger.addHandler(handler)
    _root_handler()
    return logger


class _ForeignOnly(logging.Filter):
    """Records of other libraries' loggers (the package's own already went to its handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(LOGGER_NAME)


def _root_handler() -> None:
    """Give the root logger a handler of its own: other libraries' warnings are shown once, and a library that
    logs through ``logging.info(...)`` no longer installs ``basicConfig``'s handler, which would print each of
    the package's records a second time (they propagate to the root)."""
    root = logging.getLogger()
    if any(h.get_name() == _ROOT_HANDLER_NAME for h in root.handlers):
        return
    handler = _StderrHandler()
    handler.setLevel(logging.WARNING)
    handler.addFilter(_ForeignOnly())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(name)s: %(message)s", "%H:%M:%S"))
    handler.set_name(_ROOT_HANDLER_NAME)
    root.addHandler(handler)


def get_logger(name: str) -> logging.Logger:
    """A child of the package logger (``frcnn_trt.<name>``)."""
    if not name.startswith(LOGGER_NAME):
        name = f"{LOGGER_NAME}.{name}"
    return logging.getLogger(name)
