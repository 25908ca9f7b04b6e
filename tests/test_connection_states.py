"""The connection driven without sockets: every phase move, whole vs byte-by-byte input, flow.

As h11's own tests do, bytes are fed to the protocol object directly and what it writes
is read back from a fake transport; time is whatever ``check_timeout`` is told.
"""

from __future__ import annotations

import ast
import asyncio
import re
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from oxiserve import Config
from oxiserve.errors import error_response, render_error
from oxiserve.http import connection
from oxiserve.http.connection import Connection
from oxiserve.http.context import ServerContext
from oxiserve.http.messages import Request, Response
from oxiserve.http.phases import LINGER_SECONDS, TABLE, Phase, PhaseError, diagram, resolve
from oxiserve.http.router import Router

Move = tuple[Phase, Phase]
GET = b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
WAIT = 2.0  # seconds any wait below may take before the test fails


class FakeTransport:
    """What a Connection uses of a transport, recorded."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closing = False
        self.aborted = False
        self.reading = True
        self.eof = False
        self._changed = asyncio.Event()

    def write(self, data: bytes) -> None:
        self.written += data
        self._changed.set()

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 5555) if name == "peername" else default

    def close(self) -> None:
        self.closing = True
        self._changed.set()

    def abort(self) -> None:
        self.aborted = self.closing = True
        self._changed.set()

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait (bounded) until ``condition`` holds after some write or close."""
        async with asyncio.timeout(WAIT):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


class Recording(Connection):
    """A Connection that remembers every phase move it makes."""

    def __init__(self, ctx: ServerContext) -> None:
        self.moves: list[Move] = []
        super().__init__(ctx)

    def _enter(self, phase: Phase) -> None:
        self.moves.append((self.phase, phase))
        super()._enter(phase)


def make_context(gate: asyncio.Event | None = None, **overrides: object) -> ServerContext:
    router = Router()
    router.add("GET", "/hello", lambda r: Response(b'{"hi":1}'))
    router.add("POST", "/echo", lambda r: Response(r.body, content_type="text/plain"))
    router.add("GET", "/boom", _boom)
    router.add("POST", "/json", lambda r: Response(repr(r.json()).encode()))

    async def slow(request: Request) -> Response:
        if gate is not None:
            await gate.wait()
        return Response(b"slow")

    router.add("GET", "/slow", slow)
    config = Config(access_log=False, **overrides)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    return ServerContext(
        config, router, loop, render_error=render_error, error_response=error_response
    )


def _boom(request: Request) -> Response:
    raise RuntimeError("boom")


def open_connection(ctx: ServerContext) -> tuple[Recording, FakeTransport]:
    conn, transport = Recording(ctx), FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport


def responses(data: bytes) -> list[int]:
    return [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


# -- the table and its picture -------------------------------------------------------------


def test_the_module_docstring_draws_the_table() -> None:
    assert connection.__doc__ is not None
    assert textwrap.indent(diagram(), "    ") in connection.__doc__


def test_every_phase_may_close_and_closed_stays_closed() -> None:
    assert set(TABLE) == set(Phase)
    assert all(Phase.CLOSED in rule.next for rule in TABLE.values())
    assert set(TABLE[Phase.CLOSED].next) == {Phase.CLOSED}


ILLEGAL = [(a, b) for a in Phase for b in Phase if b not in TABLE[a].next]


@pytest.mark.parametrize(("current", "target"), ILLEGAL, ids=lambda p: p.name)
async def test_a_move_the_table_lacks_raises_naming_both_phases(
    current: Phase, target: Phase
) -> None:
    conn, _ = open_connection(make_context())
    conn.phase = current
    with pytest.raises(PhaseError, match=f"from {current.name} to {target.name}"):
        conn._enter(target)
    assert conn.phase is current


# -- one scenario per legal move ------------------------------------------------------------


async def _simple_get() -> Recording:
    conn, transport = open_connection(make_context())
    conn.data_received(GET)
    assert responses(bytes(transport.written)) == [200]
    return conn


async def _memoized_head() -> Recording:
    conn, transport = open_connection(make_context())
    conn.data_received(GET)  # h11 parses it; the head is memoized
    conn.data_received(GET)  # taken from the memo: straight to HANDLING
    assert responses(bytes(transport.written)) == [200, 200]
    assert conn.moves[-3:] == [
        (Phase.IDLE, Phase.HEADERS), (Phase.HEADERS, Phase.HANDLING), (Phase.HANDLING, Phase.IDLE),
    ]  # fmt: skip
    return conn


async def _refused_at_connect() -> Recording:
    ctx = make_context()
    ctx.closing = True  # admit() refuses
    conn, transport = open_connection(ctx)
    assert responses(bytes(transport.written)) == [503]
    assert transport.closing
    return conn


async def _keepalive_timeout() -> Recording:
    conn = await _simple_get()
    conn.check_timeout(conn.deadline - 0.01)
    assert conn.phase is Phase.IDLE
    conn.check_timeout(conn.deadline + 0.01)
    return conn


async def _bad_request_line() -> Recording:
    conn, transport = open_connection(make_context())
    conn.data_received(b"GET /\r\n")
    assert responses(bytes(transport.written)) == [400]
    assert transport.eof
    return conn


async def _linger_over() -> Recording:
    conn = await _bad_request_line()
    conn.check_timeout(conn.deadline + 0.01)
    return conn


async def _lost_in_headers() -> Recording:
    conn, _ = open_connection(make_context())
    conn.data_received(b"GET /hello HTTP/1.1\r\n")
    conn.connection_lost(None)
    return conn


async def _body_too_large() -> Recording:
    conn, transport = open_connection(make_context(max_body_bytes=4))
    conn.data_received(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert conn.phase is Phase.BODY
    conn.data_received(b"5\r\nhello\r\n")
    assert responses(bytes(transport.written)) == [413]
    return conn


async def _lost_in_body() -> Recording:
    conn, _ = open_connection(make_context())
    conn.data_received(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nhel")
    conn.connection_lost(None)
    return conn


async def _pipelined() -> Recording:
    conn, transport = open_connection(make_context())
    conn.data_received(GET * 2)
    assert responses(bytes(transport.written)) == [200, 200]
    return conn


async def _stalled() -> tuple[Recording, FakeTransport]:
    conn, transport = open_connection(make_context())
    conn.pause_writing()  # the client reads nothing: one answer goes out, then we wait
    conn.data_received(GET * 2)
    assert responses(bytes(transport.written)) == [200]
    assert conn.phase is Phase.STALLED
    return conn, transport


async def _stalled_then_pipelined() -> Recording:
    conn, transport = await _stalled()
    conn.resume_writing()
    assert responses(bytes(transport.written)) == [200, 200]
    return conn


async def _stalled_then_idle() -> Recording:
    conn, _transport = open_connection(make_context())
    conn.pause_writing()
    conn.data_received(GET)
    conn.resume_writing()
    assert conn.phase is Phase.IDLE
    return conn


async def _stalled_past_write_timeout() -> Recording:
    conn, transport = await _stalled()
    conn.check_timeout(conn.ctx.loop.time() + conn.ctx.config.write_timeout + 1)
    assert transport.aborted
    return conn


async def _close_requested() -> Recording:
    conn, transport = open_connection(make_context())
    conn.data_received(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b"connection: close" in transport.written
    assert transport.closing
    return conn


async def _closed_twice() -> Recording:
    conn = await _close_requested()
    conn.connection_lost(None)
    return conn


SCENARIOS: dict[Move, Callable[[], Awaitable[Recording]]] = {
    (Phase.IDLE, Phase.HEADERS): _simple_get,
    (Phase.IDLE, Phase.LINGER): _refused_at_connect,
    (Phase.IDLE, Phase.CLOSED): _keepalive_timeout,
    (Phase.HEADERS, Phase.BODY): _simple_get,
    (Phase.HEADERS, Phase.HANDLING): _memoized_head,
    (Phase.HEADERS, Phase.LINGER): _bad_request_line,
    (Phase.HEADERS, Phase.CLOSED): _lost_in_headers,
    (Phase.BODY, Phase.HANDLING): _simple_get,
    (Phase.BODY, Phase.LINGER): _body_too_large,
    (Phase.BODY, Phase.CLOSED): _lost_in_body,
    (Phase.HANDLING, Phase.IDLE): _simple_get,
    (Phase.HANDLING, Phase.HEADERS): _pipelined,
    (Phase.HANDLING, Phase.STALLED): _stalled_then_idle,
    (Phase.HANDLING, Phase.CLOSED): _close_requested,
    (Phase.STALLED, Phase.IDLE): _stalled_then_idle,
    (Phase.STALLED, Phase.HEADERS): _stalled_then_pipelined,
    (Phase.STALLED, Phase.CLOSED): _stalled_past_write_timeout,
    (Phase.LINGER, Phase.CLOSED): _linger_over,
    (Phase.CLOSED, Phase.CLOSED): _closed_twice,
}
LEGAL = [(a, b) for a in Phase for b in TABLE[a].next]


def test_every_legal_move_has_a_scenario() -> None:
    assert set(SCENARIOS) == set(LEGAL)


@pytest.mark.parametrize("move", LEGAL, ids=lambda m: f"{m[0].name}-{m[1].name}")
async def test_each_legal_move_happens(move: Move) -> None:
    conn = await SCENARIOS[move]()
    assert move in conn.moves


async def test_a_request_walks_the_phases_in_order() -> None:
    conn = await _simple_get()
    assert conn.moves == [
        (Phase.IDLE, Phase.HEADERS),
        (Phase.HEADERS, Phase.BODY),
        (Phase.BODY, Phase.HANDLING),
        (Phase.HANDLING, Phase.IDLE),
    ]


async def test_timeouts_answer_408_only_while_reading_a_request() -> None:
    for partial in (
        b"GET /hello HTTP/1.1\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n",
    ):
        conn, transport = open_connection(make_context())
        conn.data_received(partial)
        conn.check_timeout(conn.deadline + 0.01)
        assert responses(bytes(transport.written)) == [408]
        assert conn.phase is Phase.CLOSED


# -- input whole and byte by byte -----------------------------------------------------------

PIPELINE = b"".join(
    [
        b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Request-Id: r1\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nX-Request-Id: r2\r\n\r\nhello",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nX-Request-Id: r3\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        b"HEAD /hello HTTP/1.1\r\nHost: x\r\nX-Request-Id: r4\r\n\r\n",
        b"\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\nX-Request-Id: r5\r\n\r\n",
        b"DELETE /hello/ HTTP/1.1\r\nHost: x\r\nX-Request-Id: r6\r\n\r\n",
        b"POST /json HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nX-Request-Id: r7\r\n\r\n{x}",
        b"GET /boom HTTP/1.1\r\nHost: x\r\nX-Request-Id: r8\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\nX-Request-Id: r9\r\n\r\n",
    ]
)
STREAMS = {
    "keep-alive, then close": PIPELINE
    + b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "ends in a bad line": PIPELINE + b"BREW /pot HTCPCP/1.0\r\n\r\n",
    "ends in a smuggling shape": PIPELINE
    + b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
}


def _masked(data: bytes) -> bytes:
    data = re.sub(rb"date: [^\r]*", b"date: -", data)
    return re.sub(rb"req_[0-9a-f]+", b"req_-", data)


async def _output(data: bytes, piece: int) -> bytes:
    conn, transport = open_connection(make_context())
    for start in range(0, len(data), piece):
        conn.data_received(data[start : start + piece])
    return _masked(bytes(transport.written))


@pytest.mark.parametrize("name", list(STREAMS))
async def test_whole_and_byte_by_byte_input_give_identical_bytes(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    data = STREAMS[name]
    whole = await _output(data, len(data))
    for piece in (1, 2, 7):
        assert await _output(data, piece) == whole, piece
    assert responses(whole)[:9] == [200, 200, 200, 200, 404, 405, 400, 500, 200]
    assert b"allow: GET, HEAD" in whole
    assert b"\r\n\r\nhello" in whole
    assert b"\r\n\r\nabcde" in whole


# -- flow control ---------------------------------------------------------------------------


async def test_answers_wait_while_the_client_is_not_reading() -> None:
    conn, transport = await _stalled()
    conn.data_received(GET)  # more arrives while stalled: kept, not parsed
    assert responses(bytes(transport.written)) == [200]
    conn.check_timeout(conn.ctx.loop.time() + conn.ctx.config.keepalive_timeout + 1)
    assert conn.phase is Phase.STALLED  # no idle deadline while our answers wait
    conn.resume_writing()
    assert responses(bytes(transport.written)) == [200, 200, 200]
    assert conn.phase is Phase.IDLE


async def test_a_pipelined_flood_pauses_reading_until_the_answer_is_out() -> None:
    gate = asyncio.Event()
    conn, transport = open_connection(make_context(gate))
    conn.data_received(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    assert conn.phase is Phase.HANDLING
    flood = GET * (300 * 1024 // len(GET))
    conn.data_received(flood)
    assert not transport.reading
    gate.set()
    count = 1 + flood.count(b"GET ")
    await transport.until(lambda: len(responses(bytes(transport.written))) == count)
    assert transport.reading
    assert conn.phase is Phase.IDLE


async def test_a_client_leaving_mid_handler_cancels_it() -> None:
    gate = asyncio.Event()
    conn, transport = open_connection(make_context(gate))
    conn.data_received(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    task = conn._cycle.task
    assert task is not None
    conn.connection_lost(None)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, WAIT)
    assert transport.written == b""
    assert conn.moves[-1] == (Phase.HANDLING, Phase.CLOSED)


async def test_each_request_gets_a_fresh_cycle() -> None:
    conn, transport = open_connection(make_context())
    first = conn._cycle
    conn.data_received(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Request-Id: abc\r\n\r\n")
    assert conn._cycle is not first
    assert conn._cycle.request is None
    assert conn._cycle.fields == {}
    conn.data_received(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.written.count(b"x-request-id: abc") == 1


# -- http/ knows no OpenAI shapes -----------------------------------------------------------


def test_http_imports_nothing_of_the_api_layer() -> None:
    package = Path(connection.__file__).parent
    for module in package.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                name = node.module
            elif isinstance(node, ast.Import):
                name = node.names[0].name
            else:
                continue
            assert not name.startswith(("oxiserve.errors", "oxiserve.api")), (module, name)


async def test_error_bodies_are_the_ones_the_app_renders() -> None:
    router = Router()
    ctx = ServerContext(
        Config(access_log=False), router, asyncio.get_running_loop(),
        render_error=lambda status, message, code: b"<%d %s>" % (status, (code or "").encode()),
        error_response=lambda exc: None,
    )  # fmt: skip
    conn, transport = open_connection(ctx)
    conn.data_received(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.written.endswith(b"\r\n\r\n<404 not_found>")


def test_resolved_moves_carry_each_targets_timeout() -> None:
    config = Config(header_timeout=3.0, body_timeout=4.0, keepalive_timeout=5.0)
    moves = resolve(config)
    assert {a: set(b) for a, b in moves.items()} == {a: set(r.next) for a, r in TABLE.items()}
    assert moves[Phase.IDLE][Phase.HEADERS] == 3.0
    assert moves[Phase.HEADERS][Phase.BODY] == 4.0
    assert moves[Phase.HANDLING][Phase.IDLE] == 5.0
    assert moves[Phase.HEADERS][Phase.LINGER] == LINGER_SECONDS
    assert moves[Phase.BODY][Phase.HANDLING] is None
