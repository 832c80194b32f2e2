"""Every error leaves the service as `{"error": {"code", "message"}}` with a meaningful status, never a trace."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

# nginx's code for "client closed request": the client never reads it, the metrics and the log do.
CLIENT_GONE = 499


class ApiError(Exception):
    """An error meant for the client: status, stable machine-readable code, human message."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def bad_image(message: str) -> ApiError:
    return ApiError(400, "invalid_image", message)


def too_large(message: str) -> ApiError:
    return ApiError(413, "too_large", message)


def unsupported(message: str) -> ApiError:
    return ApiError(415, "unsupported_media_type", message)


def invalid_parameter(message: str) -> ApiError:
    return ApiError(422, "invalid_parameter", message)


def client_gone(message: str) -> ApiError:
    return ApiError(CLIENT_GONE, "client_disconnected", message)


def error_response(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _status_code_name(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


def _describe_validation(errors: list[Any]) -> str:
    parts = []
    for error in errors:
        # loc is e.g. ("query", "score_threshold"); the first element only says where FastAPI looked.
        loc = [str(p) for p in error.get("loc", ())[1:]] or [str(p) for p in error.get("loc", ())]
        parts.append(f"{'.'.join(loc)}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    # Routing 404/405 and errors Starlette raises itself (e.g. a malformed multipart body is a 400).
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    return error_response(exc.status_code, _status_code_name(exc.status_code), message, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, "invalid_parameter", _describe_validation(list(exc.errors())))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises after this response, so the server logs the traceback; the client never sees it.
    log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
    return error_response(500, "internal_error", "internal error; see the server log")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
