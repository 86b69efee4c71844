"""Every error leaves the API as JSON ``{code, message, details}`` with a stable ``code``.

Domain errors (:class:`engine.errors.ProgressionError`) carry their own code and
status; FastAPI/Starlette errors (404 route, 405, 422 validation) and unexpected
exceptions are mapped here too. A 500 never leaks a traceback: it logs one and
answers with a reference id.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.service import RPCError, RPCStatusCode

from engine.errors import ProgressionError

log = logging.getLogger("progression.api")


class ErrorBody(BaseModel):
    code: str
    message: str
    details: Any = None


class ApiError(ProgressionError):
    """An error raised by the API layer with an explicit HTTP status."""

    def __init__(self, status: int, code: str, message: str, details: Any = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message, code=code, details=details)
        self.status = status
        self.headers = headers


class Unauthenticated(ApiError):
    def __init__(self, message: str = "a valid bearer token is required") -> None:
        super().__init__(401, "unauthenticated", message, headers={"WWW-Authenticate": "Bearer"})


class UnknownQueryParameters(ApiError):
    """A query parameter the route does not read: refused (422) rather than ignored, so a typo such as
    ``?type=`` for ``?event_type=`` never answers an unfiltered result as if it were the filtered one."""

    def __init__(self, unknown: list[str], known: list[str], suggestions: dict[str, str]) -> None:
        hint = "".join(f"; did you mean {suggestions[n]!r} for {n!r}?" for n in unknown if n in suggestions)
        listed = ", ".join(known) if known else "none"
        super().__init__(422, "unknown_query_parameter",
                         f"unknown query parameter{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(repr(n) for n in unknown)}{hint} (this route reads: {listed})",
                         {"unknown": unknown, "known": known, "suggestions": suggestions})


class BodyTooLarge(StarletteHTTPException):
    """An HTTPException so that FastAPI's body parsing re-raises it as is (it wraps other errors in 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")
        self.limit = limit


_STATUS_CODES = {
    400: "invalid_body", 401: "unauthenticated", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    406: "not_acceptable", 409: "conflict", 413: "request_too_large", 415: "unsupported_media_type",
    422: "validation_error", 429: "too_many_requests", 503: "unavailable",
}


def error_response(status: int, code: str, message: str, details: Any = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"code": code, "message": message, "details": jsonable_encoder(details)}
    return JSONResponse(body, status_code=status, headers=headers)


def _doc(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


# OpenAPI documentation of the error answers, merged into each route's ``responses``.
COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _doc("Missing, invalid or revoked bearer token (`unauthenticated`)"),
    403: _doc("The caller's roles, team or segregation of duties forbid this (`forbidden` and specific codes)"),
    413: _doc("Request body larger than the configured limit (`request_too_large`)"),
    422: _doc("The request does not validate (`validation_error`, `invalid_spec`, ...), or names a query "
              "parameter the route does not read (`unknown_query_parameter`, details.unknown lists them)"),
    500: _doc("Unexpected error (`internal_error`); never includes a traceback"),
    503: _doc("The database or Temporal is unreachable for now (`service_unavailable`); retry after Retry-After"),
}
# Routes that read a request body: it may not parse at all (not UTF-8 JSON, broken multipart) or be of a
# content type the route does not read.
BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _doc("The body cannot be parsed: not UTF-8 JSON, malformed multipart (`invalid_body`)"),
    415: _doc("The body's content type is not one this route reads (`unsupported_media_type`)"),
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: _doc("No such resource, or not visible to the caller (`not_found`)")}
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: _doc("Conflicts with the current state (`progression_exists`, `gate_not_open`, `idempotency_in_flight`, ...)")
}


_AWAY_HINTS = ("connection", "connect", "server closed", "terminating", "timeout", "timed out",
               "database is locked", "could not receive", "could not send", "the database system is")


def _database_away(exc: Exception) -> bool:
    if isinstance(exc, InterfaceError) or getattr(exc, "connection_invalidated", False):
        return True
    message = str(getattr(exc, "orig", None) or exc).lower()
    return any(hint in message for hint in _AWAY_HINTS)


def http_error_text(request: Request, exc: StarletteHTTPException) -> tuple[str, str]:
    """(code, message) of a FastAPI/Starlette HTTP error (404 route, 405, unparsable body, ...)."""
    code = _STATUS_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route {request.method} {request.url.path}"
    if exc.status_code == 400:  # FastAPI/Starlette could not parse the body (bad UTF-8, broken multipart)
        message = f"the request body cannot be parsed: {message}"
    if exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    return code, message


async def http_exception_response(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code, message = http_error_text(request, exc)
    return error_response(exc.status_code, code, message, None, getattr(exc, "headers", None))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProgressionError)
    async def _domain(request: Request, exc: ProgressionError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.details, getattr(exc, "headers", None))

    app.add_exception_handler(StarletteHTTPException, http_exception_response)  # type: ignore[arg-type]

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"field": ".".join(str(p) for p in err.get("loc", ())), "message": err.get("msg", ""),
             "type": err.get("type", "")}
            for err in exc.errors()
        ]
        first = details[0] if details else {"field": "", "message": "invalid request"}
        message = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
        return error_response(422, "validation_error", message, details)

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        # A lost connection or a database that is away: nothing was committed, a retry may succeed.
        # Other operational errors (a missing table, a broken schema) are bugs: 500 with a reference.
        if not _database_away(exc):
            return await _unexpected(request, exc)
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc.__class__.__name__)
        return error_response(503, "service_unavailable", "the database is unavailable; retry shortly",
                              {"dependency": "database"}, {"Retry-After": "5"})

    @app.exception_handler(RPCError)
    async def _temporal_error(request: Request, exc: RPCError) -> JSONResponse:
        if exc.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
            log.warning("temporal unavailable on %s %s: %s", request.method, request.url.path, exc.message)
            return error_response(503, "service_unavailable", "the workflow service is unavailable; retry shortly",
                                  {"dependency": "temporal"}, {"Retry-After": "5"})
        return await _unexpected(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        ref = uuid.uuid4().hex[:12]
        log.exception("unexpected error %s on %s %s", ref, request.method, request.url.path)
        return error_response(500, "internal_error", f"internal error (reference {ref})", {"reference": ref})
