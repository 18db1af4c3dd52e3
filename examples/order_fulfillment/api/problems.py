"""RFC 9457 problem responses: every client error the API gives, and the handlers behind them.

An error is an ``application/problem+json`` document naming the offending field. Handlers
raise `ApiProblem`; `add_problem_handlers` turns it, failed validation, `InvalidOrderError`,
HTTP errors and unexpected exceptions into problem documents. `BodySizeLimit` refuses bodies
too large to parse with 413.
"""

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any
from uuid import uuid4

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..shop import InvalidOrderError
from .models import FieldError, Problem

logger = logging.getLogger("order_fulfillment.api")

MAX_BODY_BYTES = 64 * 1024
"""Request bodies above this are refused with 413 before anything parses them."""
PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE = "urn:order-fulfillment:problem:"
"""Prefix of the ``type`` of this API's problem documents; generic HTTP errors use about:blank."""


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_JSON


class ApiProblem(Exception):
    """Raised by handlers to answer with a problem document."""

    def __init__(
        self,
        status: int,
        kind: str,
        detail: str,
        *,
        title: str | None = None,
        errors: Sequence[FieldError] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.errors = list(errors)
        self.headers = headers


def problem(
    status: int,
    detail: str,
    *,
    kind: str | None = None,
    title: str | None = None,
    errors: Sequence[FieldError] = (),
    instance: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> ProblemResponse:
    """A problem response; ``kind`` names this API's problem type (else about:blank)."""
    body = Problem(
        type=f"{PROBLEM_TYPE}{kind}" if kind else "about:blank",
        title=title or HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        instance=instance,
        errors=list(errors) or None,
    )
    return ProblemResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


def problem_doc(description: str) -> dict[str, Any]:
    """An OpenAPI response documented as a problem document."""
    schema = {"$ref": "#/components/schemas/Problem"}
    return {"description": description, "content": {PROBLEM_JSON: {"schema": schema}}}


def field_path(location: Sequence[str | int]) -> str:
    """``("items", 0, "quantity")`` → ``items[0].quantity``."""
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


# ---------------------------------------------------------------------------- handlers


def add_problem_handlers(app: FastAPI) -> None:
    """Answer every error ``app`` raises with a problem document."""
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(InvalidOrderError, _on_invalid_order)
    app.add_exception_handler(ApiProblem, _on_api_problem)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected_error)


def _validation_problem(errors: Sequence[FieldError]) -> ProblemResponse:
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return problem(
        422,
        f"{first.field}: {first.message}{more}",
        kind="validation-error",
        title="Invalid request",
        errors=errors,
    )


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors: list[FieldError] = []
    for error in exc.errors():
        where, *path = error.get("loc", ("body",)) or ("body",)
        if error.get("type") == "json_invalid":
            position = path[0] if path else "?"
            reason = (error.get("ctx") or {}).get("error", "invalid JSON")
            return problem(
                400,
                f"the body is not valid JSON: {reason} at character {position}",
                kind="malformed-json",
                title="Malformed JSON",
                errors=[FieldError(field="body", location="body", message=reason, type="json")],
            )
        errors.append(
            FieldError(
                field=field_path(path) or str(where),
                location=str(where),
                message=str(error.get("msg", "invalid")),
                type=str(error.get("type", "invalid")),
            )
        )
    return _validation_problem(errors)


async def _on_invalid_order(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InvalidOrderError)
    return _validation_problem(
        [FieldError(field=exc.field, location="body", message=exc.message, type="invalid_order")]
    )


async def _on_api_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiProblem)
    return problem(
        exc.status,
        exc.detail,
        kind=exc.kind,
        title=exc.title,
        errors=exc.errors,
        headers=exc.headers,
    )


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    return problem(exc.status_code, detail, headers=exc.headers)


async def _on_unexpected_error(request: Request, exc: Exception) -> Response:
    instance = f"urn:uuid:{uuid4()}"
    logger.exception("api.error %s %s: %s", request.method, request.url.path, instance)
    return problem(
        500,
        "The server failed to handle the request; quote the instance id when reporting it.",
        instance=instance,
    )


# ---------------------------------------------------------------------------- body size


class BodySizeLimit:
    """Refuse bodies over ``max_bytes`` with 413 before anything parses them.

    A declared Content-Length is checked first; a chunked body is counted while it is read.
    The body is buffered (at most ``max_bytes``) and handed on to the application.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left: there is no one to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(
            413,
            f"the request body exceeds {self.max_bytes} bytes",
            kind="body-too-large",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)
