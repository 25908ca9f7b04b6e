"""Request and response types passed between the connection and handlers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

Headers = tuple[tuple[str, str], ...]


class ResetConnection(Exception):
    """Answer by resetting the connection (RST), with no response and nothing logged: what
    a simulated abort asks for, so a client's handling of a dropped connection is tested."""


class HTTPError(Exception):
    """A refusal the http layer answers itself (``status``; the app renders the body).

    The application's ``error_response`` hook sees it first and may answer it its own way.
    """

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


@dataclass(slots=True)
class Request:
    """One parsed HTTP request with its whole body.

    ``headers`` maps lower-case names to values (repeated fields joined with
    ", " as RFC 9110 allows); ``params`` holds the router's ``{param}`` values;
    ``identity`` is who the app's checks found sent it (e.g. an API key's
    fingerprint; logged instead of any credential).
    """

    method: str
    path: str
    query_string: str
    headers: dict[str, str]
    body: bytes
    request_id: str
    http_version: str = "1.1"
    params: dict[str, str] = field(default_factory=dict)
    client: str = ""  # the peer's address ("" when the transport has none)
    identity: str = ""

    def json(self) -> Any:
        """The body parsed as JSON; 400 with a clear message when it is not."""
        if not self.body:
            raise HTTPError(400, "The request body is empty; expected a JSON object.")
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            raise HTTPError(400, f"The request body is not valid JSON: {exc}") from None


@dataclass(slots=True)
class Response:
    """A complete response (JSON by default)."""

    body: bytes
    status: int = 200
    content_type: str = "application/json"
    headers: Headers = ()


def json_response(obj: Any, status: int = 200, headers: Headers = ()) -> Response:
    return Response(orjson.dumps(obj), status, "application/json", headers)


class BodyWriter(Protocol):
    """What a streaming response writes to: chunked framing is done for it.

    ``write`` never blocks; when the client reads slowly the connection calls
    the registered pause listener and the stream should stop writing until the
    resume listener is called (buffered bytes stay bounded).
    """

    @property
    def paused(self) -> bool: ...

    @property
    def closed(self) -> bool: ...

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None:
        """Returns once more may be written without buffering beyond the bounds (or the
        client has gone); a producer of a large body awaits it between pieces."""
        ...

    def set_flow_listener(
        self, on_pause: Callable[[], None] | None, on_resume: Callable[[], None] | None
    ) -> None: ...

    async def wait_closed(self) -> None:
        """Returns when the client has gone away."""
        ...


StreamProducer = Callable[[BodyWriter], Awaitable[None]]


@dataclass(slots=True)
class StreamResponse:
    """A chunked response whose body ``producer`` writes while the head is already out."""

    producer: StreamProducer
    status: int = 200
    content_type: str = "text/event-stream"
    headers: Headers = ()


AnyResponse = Response | StreamResponse
SyncHandler = Callable[[Request], AnyResponse]
AsyncHandler = Callable[[Request], Awaitable[AnyResponse]]
