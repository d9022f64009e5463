"""The package's logging: each record printed once, even after another library logs through the root logger."""

from __future__ import annotations

import logging

import pytest

from frcnn_trt.log import get_logger, setup_logging


def test_records_print_once_when_a_library_logs_through_the_root(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    package = logging.getLogger("frcnn_trt")
    saved_package = list(package.handlers)
    try:
        root.handlers.clear()
        root.setLevel(logging.WARNING)  # the default (an INT8 test may have quietened the root logger)
        setup_logging()
        setup_logging()  # idempotent: one handler each
        logging.info("a library's info through the root")  # with no root handler this ran basicConfig()
        get_logger("x").info("package message")
        logging.getLogger("otherlib").warning("foreign warning")
        logging.getLogger("otherlib").info("foreign info")
        err = capsys.readouterr().err
        assert err.count("package message") == 1
        assert err.count("foreign warning") == 1 and "otherlib" in err
        assert "foreign info" not in err and "a library's info" not in err
        assert len([h for h in root.handlers if h.get_name() == "frcnn_trt.foreign"]) == 1
    finally:
        root.handlers[:] = saved
        root.setLevel(level)
        package.handlers[:] = saved_package
