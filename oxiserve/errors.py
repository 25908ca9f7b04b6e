"""APIError family: every failure a client sees, as an HTTP status plus OpenAI's error body.

Handlers raise these; one place (the connection) turns them into responses through the
two hooks at the end, :func:`render_error` and :func:`error_response`, which the server
hands to ``http/`` (which knows no OpenAI shapes).
The body shape is OpenAI's: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

from typing import Any

import orjson

from oxiserve.http.messages import Headers, HTTPError


class StartupError(Exception):
    """The server cannot start as configured (one line for the user, no traceback)."""


class APIError(Exception):
    """Base class: an error answered with ``status`` and OpenAI's error body."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)

    def encode(self) -> bytes:
        return orjson.dumps(self.body())


class InvalidRequest(APIError):
    """400: the request is malformed or a parameter is invalid."""

    status = 400
    type = "invalid_request_error"


class NotFound(APIError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, model: str, *, param: str | None = "model") -> None:
        super().__init__(f"The model '{echo(model)}' does not exist", param=param)


class MethodNotAllowed(APIError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class NeedsSharedState(APIError):
    """501: the endpoint keeps state in one process, and several worker processes serve."""

    status = 501
    type = "invalid_request_error"
    code = "bus_required"

    def __init__(self, workers: int) -> None:
        super().__init__(
            f"This endpoint keeps state (runs, stored responses, conversations, threads) that "
            f"the {workers} worker processes do not share: it needs a shared bus "
            f"(--bus redis://HOST:PORT/N). Serve it with --bus, or with --workers 1."
        )


class BusUnavailable(APIError):
    """503: the bus that replicas share state through cannot be reached now."""

    status = 503
    type = "server_error"
    code = "bus_unavailable"

    def __init__(self, message: str = "") -> None:
        super().__init__(
            message
            or "The shared bus (Redis) cannot be reached: runs, stored responses, "
            "conversations and threads are unavailable for now. Retry shortly.",
            headers=(("retry-after", "1"),),
        )


class ServerError(APIError):
    status = 500
    type = "server_error"
    code = "internal_error"


ECHO_LIMIT = 256  # characters of a client's value repeated in an error message


def echo(value: str, limit: int = ECHO_LIMIT) -> str:
    """``value`` as an error message may repeat it: a 1 MB model name gets no 1 MB reply."""
    return value if len(value) <= limit else value[:limit] + f"... ({len(value)} characters)"


def error_body(
    message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def error_for_status(
    status: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    retry_after: float | None = None,
) -> APIError:
    """An APIError for any status (engine failures, protocol errors)."""
    error = APIError(message, code=code, param=param, status=status)
    error.type = _TYPE_BY_STATUS.get(
        status, "server_error" if status >= 500 else "invalid_request_error"
    )
    if retry_after is not None:
        seconds = max(1, round(retry_after))
        error.headers = (("retry-after", str(seconds)),)
    return error


def render_error(status: int, message: str, code: str | None) -> bytes:
    """The body of an error the http layer answers itself (404, 405, 500, protocol errors)."""
    return error_for_status(status, message, code=code).encode()


def error_response(exc: Exception) -> tuple[int, bytes, Headers] | None:
    """A handler's exception as (status, body, headers); None for one no handler meant."""
    if isinstance(exc, APIError):
        return exc.status, exc.encode(), exc.headers
    if isinstance(exc, HTTPError):  # e.g. Request.json() on a body that is not JSON
        return exc.status, InvalidRequest(exc.message, code=exc.code).encode(), ()
    return None
