"""What a connection and its server context offer each other, as Protocols (no import cycle).

``context.py`` implements :class:`Host` and keeps a set of :class:`Sweepable`;
``connection.py`` implements :class:`Sweepable` and is handed a :class:`Host`.  Neither
module imports the other, as hypercorn's ``typing.py`` breaks its cycles.

The error body's shape is the application's: the host carries ``render_error`` and
``error_response``, handed in by whoever builds it (the server wires OpenAI's shape).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

import h11

from oxiserve.config import Config
from oxiserve.http.budget import WriteBudget
from oxiserve.http.cors import CorsPolicy
from oxiserve.http.heads import HeadMemo
from oxiserve.http.messages import Headers
from oxiserve.http.phases import Moves
from oxiserve.http.router import Router

RenderError = Callable[[int, str, str | None], bytes]
"""``(status, message, code) -> body``: the JSON body of an error the http layer answers."""

ErrorResponse = Callable[[Exception], "tuple[int, bytes, Headers] | None"]
"""A handler's exception as ``(status, body, headers)``; None: not one the app expected
(the connection logs it and answers 500)."""


class Sweepable(Protocol):
    """What a connection offers the server's sweep and shutdown."""

    def check_timeout(self, now: float) -> None: ...

    def shutdown(self) -> None: ...

    def abort(self) -> None: ...

    @property
    def buffered(self) -> int: ...


class Host(Protocol):
    """What a server context offers its connections."""

    config: Config
    router: Router
    loop: asyncio.AbstractEventLoop
    closing: bool
    access_log: bool
    cors: CorsPolicy | None
    extra_headers: tuple[tuple[str, str], ...]
    allow_all: str
    budget: WriteBudget
    phase_moves: Moves
    heads: HeadMemo
    render_error: RenderError
    error_response: ErrorResponse

    def new_parser(self) -> h11.Connection: ...

    def new_id(self) -> str: ...

    def admit(self, conn: Sweepable) -> bool: ...

    def release(self, conn: Sweepable) -> None: ...
