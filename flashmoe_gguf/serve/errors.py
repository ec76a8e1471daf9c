"""Every error as OpenAI's API gives it: a status code and `{"error": {"message", "type", "param", "code"}}`.

A request's own problem is a 4xx (malformed JSON, unknown or invalid fields, a prompt longer than the context, a
template that refuses the messages); the server's is a 5xx: 503 when the queue is full (with Retry-After), the
server is stopping or the model cannot be loaded, 500 when the expert store failed during the request (the model
is reloaded for the next one) or anything unexpected happened.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Optional, Sequence

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from llama_cpp.server.errors import ErrorResponseFormatters
from starlette.exceptions import HTTPException

from .gate import QueueFull, ShuttingDown
from .model import GenerationStopped
from .proxy import ModelUnavailable

log = logging.getLogger("flashmoe.serve")

_CONTEXT = re.compile(r"Requested tokens \((\d+)\) exceed context window of (\d+)")


class ModelFailed(Exception):
    """The expert store failed during a request; the model was closed and is reloaded for the next request."""


def error_body(message: str, type_: str, code: Optional[str] = None, param: Optional[str] = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(status: int, message: str, type_: str, code: Optional[str] = None, param: Optional[str] = None,
                   headers: Optional[dict[str, str]] = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, code, param), status_code=status, headers=headers)


def _where(loc: Sequence[Any]) -> str:
    parts = [str(x) for x in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts)


def validation_response(exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    first = errors[0] if errors else {"msg": "invalid request", "loc": ()}
    kind, where = first.get("type"), _where(first.get("loc", ()))
    if kind == "json_invalid":
        ctx = first.get("ctx")
        detail = str(ctx.get("error", "")) if isinstance(ctx, dict) else ""
        return error_response(400, f"could not parse the JSON body of the request{': ' + detail if detail else ''}",
                              "invalid_request_error", "invalid_json")
    if kind == "extra_forbidden":
        return error_response(400, f"Unrecognized request argument supplied: {where}", "invalid_request_error",
                              "unknown_parameter", where or None)
    if kind == "missing" and not where:
        return error_response(400, "the request needs a JSON body", "invalid_request_error", "missing_body")
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return error_response(400, f"{where}: {msg}{more}" if where else msg + more, "invalid_request_error",
                          "invalid_value", where or None)


def http_response(exc: HTTPException) -> JSONResponse:
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    code = {401: "invalid_api_key", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return error_response(exc.status_code, str(exc.detail), kind, code, headers=getattr(exc, "headers", None))


def response_for(exc: BaseException, body: Any = None) -> JSONResponse:
    """The response for an exception a route raised. `body`: the parsed request, if it got that far."""
    if isinstance(exc, RequestValidationError):
        return validation_response(exc)
    if isinstance(exc, HTTPException):
        return http_response(exc)
    if isinstance(exc, QueueFull):
        return error_response(503, str(exc), "server_error", "queue_full",
                              headers={"Retry-After": str(exc.retry_after_s)})
    if isinstance(exc, (ShuttingDown, GenerationStopped)):
        return error_response(503, "the server is shutting down", "server_error", "server_shutting_down")
    if isinstance(exc, ModelUnavailable):
        return error_response(503, str(exc), "server_error", "model_unavailable")
    if isinstance(exc, ModelFailed):
        return error_response(500, str(exc), "server_error", "model_failed")
    if isinstance(exc, ValueError):
        match = _CONTEXT.search(str(exc))
        if match is not None and body is not None and hasattr(body, "max_tokens"):
            status, err = ErrorResponseFormatters.context_length_exceeded(body, match)
            return JSONResponse({"error": err}, status_code=status)
        return error_response(400, str(exc), "invalid_request_error",
                              "context_length_exceeded" if match else None)
    if _is_template_error(exc):
        return error_response(400, f"the chat template refused the messages: {exc}", "invalid_request_error",
                              "invalid_messages", "messages")
    log.error("unexpected error in a request", exc_info=exc)
    return error_response(500, f"{type(exc).__name__}: {exc}", "server_error", "internal_error")


def _is_template_error(exc: BaseException) -> bool:
    try:
        from jinja2 import TemplateError
    except ImportError:
        return False
    return isinstance(exc, TemplateError)
