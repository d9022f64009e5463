"""Every error the service answers with: a status code and a JSON body ``{"error": ..., "detail": ...}``.

``error`` is a short stable word a client can branch on (``"payload_too_large"``, ``"unsupported_media_type"``,
``"invalid_image"``, ``"invalid_parameter"``, ``"overloaded"``, …); ``detail`` is one human sentence. Handlers
below turn :class:`Problem` and Starlette's own HTTP exceptions (404, 405, malformed multipart) into that body,
and anything else into a plain 500: a traceback goes to the server log, never to a client.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

__all__ = ["Problem", "error_response", "exception_handlers"]

log = logging.getLogger("frcnn_trt.serve")

_WORDS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
          415: "unsupported_media_type", 422: "invalid_request", 500: "internal_error", 503: "overloaded"}


class Problem(Exception):
    """An answer other than 200: ``status``, ``error`` word, ``detail`` sentence and extra ``headers``."""

    def __init__(self, status: int, error: str, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = dict(headers or {})


def error_response(status: int, error: str, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=dict(headers or {}))


async def _problem(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)  # registered for Problem only
    return error_response(exc.status, exc.error, exc.detail, exc.headers)


async def _http_exception(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # registered for HTTPException only
    status = int(exc.status_code)
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail else HTTPStatus(status).phrase
    return error_response(status, _WORDS.get(status, "http_error"), detail, exc.headers)


async def _unexpected(_request: Request, exc: Exception) -> Response:
    log.error("internal error: %r", exc, exc_info=exc)
    return error_response(500, "internal_error", "the server failed to answer this request (see its log)")


def exception_handlers() -> dict[type[Exception] | int, object]:
    """Starlette's ``exception_handlers`` for the app."""
    return {Problem: _problem, HTTPException: _http_exception, Exception: _unexpected}
