"""The head memo (``http/heads.py``): a request taken from it is exactly what h11 would give.

The property test sends the same byte streams, whole and in pieces, twice over (so the
second pass meets memoized heads) to a server with the memo and to one without, and
compares every request the handler saw and every byte written.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oxiserve import Config
from oxiserve.errors import error_response, render_error
from oxiserve.http.connection import Connection
from oxiserve.http.context import ServerContext
from oxiserve.http.heads import HeadMemo, probe
from oxiserve.http.messages import Request, Response
from oxiserve.http.router import Router
from tests.test_connection_states import FakeTransport, _masked, responses

Seen = list[tuple[object, ...]]


def _context(seen: Seen, *, memo: bool, **overrides: object) -> ServerContext:
    def record(request: Request) -> Response:
        given = not request.request_id.startswith("req_")  # the client's, not a fresh one
        seen.append((
            request.method, request.path, request.query_string, request.headers,
            request.body, request.http_version, request.request_id if given else None,
        ))  # fmt: skip
        return Response(repr(seen[-1]).encode(), content_type="text/plain")

    router = Router()
    for method in ("GET", "POST", "DELETE"):
        router.add(method, "/echo", record)
    config = Config(access_log=False, **overrides)  # type: ignore[arg-type]
    ctx = ServerContext(
        config, router, asyncio.get_running_loop(),
        render_error=render_error, error_response=error_response,
    )  # fmt: skip
    if not memo:
        ctx.heads = HeadMemo(0)  # no head fits: every request goes through h11
    return ctx


def _serve(ctx: ServerContext, data: bytes, piece: int) -> tuple[Connection, FakeTransport]:
    conn, transport = Connection(ctx), FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    for start in range(0, len(data), piece):
        conn.data_received(data[start : start + piece])
    return conn, transport


async def _both(data: bytes, piece: int, **overrides: object) -> tuple[Seen, bytes, int]:
    """What the handler saw and what was written, with the memo (asserted equal to without it),
    and how many heads were memoized."""
    results = []
    for memo in (False, True):
        seen: Seen = []
        ctx = _context(seen, memo=memo, **overrides)
        for _ in range(2):  # the second time round, heads are memoized
            _, transport = _serve(ctx, data, piece)
        results.append((seen, _masked(bytes(transport.written)), len(ctx.heads)))
    (plain, plain_out, _), (memo_seen, memo_out, memoized) = results
    assert memo_seen == plain
    assert memo_out == plain_out
    return memo_seen, memo_out, memoized


# -- probe -----------------------------------------------------------------------------------


def test_the_key_leaves_out_only_the_content_length_digits() -> None:
    five = probe(b"POST /echo HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 1000)
    long = probe(b"POST /echo HTTP/1.1\r\nContent-Length: 12345\r\n\r\n", 1000)
    other = probe(b"POST /echo HTTP/1.1\r\nContent-Length: 5\r\nX: y\r\n\r\n", 1000)
    assert five is not None
    assert long is not None
    assert other is not None
    assert five.key == long.key != other.key
    assert (five.length, five.digits, five.end) == (5, "5", 47)
    bare = probe(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\nGET", 1000)
    assert bare is not None
    assert (bare.key, bare.length, bare.end) == (b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n", -1, 31)


@pytest.mark.parametrize(
    "data",
    [
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n",  # two fields
        b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",  # a list
        b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 0x5\r\n\r\n",
        b"\r\nGET / HTTP/1.1\r\n\r\n",  # leading empty line
        b"GET / HTTP/1.1\r\nHost: x\r\n",  # not complete
        b"GET / HTTP/1.1\r\nHost: " + b"x" * 1000 + b"\r\n\r\n",  # over max_head
    ],
)
def test_heads_that_are_never_memoized(data: bytes) -> None:
    assert probe(data, 1000) is None


def test_the_memo_keeps_at_most_its_size_dropping_the_oldest() -> None:
    memo = HeadMemo(16 * 1024, entries=4)
    for i in range(10):
        memo.put(b"%d" % i, None)  # type: ignore[arg-type]
    assert len(memo) == 4
    assert memo.get(b"5") is None  # one of the 6 oldest: dropped
    assert list(memo._entries) == [b"6", b"7", b"8", b"9"]


# -- the connection --------------------------------------------------------------------------


async def test_a_repeated_head_with_another_length_is_taken_from_the_memo() -> None:
    seen: Seen = []
    ctx = _context(seen, memo=True)
    head = b"POST /echo?q=1 HTTP/1.1\r\nHost: x\r\nX-Request-Id: abc\r\nContent-Length: "
    _serve(ctx, head + b"5\r\n\r\nhello", 1000)
    _, transport = _serve(ctx, head + b"11\r\n\r\nhello world" + head + b"2\r\n\r\nhi", 1000)
    assert len(ctx.heads) == 1
    assert [s[4] for s in seen] == [b"hello", b"hello world", b"hi"]
    assert [s[3]["content-length"] for s in seen] == ["5", "11", "2"]  # type: ignore[index]
    assert [s[6] for s in seen] == ["abc"] * 3
    assert responses(bytes(transport.written)) == [200, 200]
    assert b"x-request-id: abc" in transport.written


async def test_a_handler_changing_its_headers_leaves_the_memo_alone() -> None:
    seen: Seen = []
    ctx = _context(seen, memo=True)
    ctx.router.add("GET", "/mutate", lambda r: Response(repr(r.headers.pop("host")).encode()))
    get = b"GET /mutate HTTP/1.1\r\nHost: x\r\n\r\n"
    _, first = _serve(ctx, get, 1000)
    _, second = _serve(ctx, get, 1000)
    assert len(ctx.heads) == 1
    assert first.written.endswith(b"'x'")
    assert second.written.endswith(b"'x'")  # the memoized head still has its Host field


async def test_the_memo_never_lets_a_body_over_the_limit_through() -> None:
    seen: Seen = []
    ctx = _context(seen, memo=True, max_body_bytes=8)
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: "
    _serve(ctx, head + b"5\r\n\r\nhello", 1000)
    _, transport = _serve(ctx, head + b"9\r\n\r\n123456789", 1000)
    assert responses(bytes(transport.written)) == [413]
    assert len(seen) == 1


async def test_a_second_content_length_is_judged_by_h11_again() -> None:
    seen: Seen = []
    ctx = _context(seen, memo=True)
    _serve(ctx, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", 1000)
    smuggled = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\n"
    _, transport = _serve(ctx, smuggled + b"abcde", 1000)
    assert responses(bytes(transport.written)) == [400]
    assert len(seen) == 1


# -- same answers with and without the memo ---------------------------------------------------

_NAMES = st.sampled_from(["Content-Length", "content-length", "CONTENT-LENGTH", "Content-length"])


@st.composite
def _request(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["GET", "POST"] * 2 + ["DELETE", "HEAD"]))
    target = draw(st.sampled_from(["/echo"] * 4 + ["/echo?a=1&b", "http://h/echo", "/nope", "*"]))
    version = draw(st.sampled_from(["1.1", "1.1", "1.0"]))
    body = draw(st.binary(max_size=12))
    end = draw(st.sampled_from(["\r\n"] * 5 + ["\n"]))
    lines = [f"{method} {target} HTTP/{version}", "Host: x"]
    extra = ["X-Request-Id: r-1", "Connection: close", "Accept: */*", "X-Fold: a"]
    if draw(st.integers(0, 5)) == 0:  # now and then something h11 or the checks refuse
        extra += ["X-Request-Id: bad id", "Expect: 100-continue", " folded", "Bad\x01: x"]
    lines += draw(st.lists(st.sampled_from(extra), max_size=3))
    framing = draw(st.sampled_from(["length"] * 4 + ["zero-padded", "spaced", "list", "twice",
                                                     "short", "chunked", "none"]))  # fmt: skip
    name = draw(_NAMES)
    n = len(body)
    if framing == "length":
        lines.append(f"{name}: {n}")
    elif framing == "zero-padded":
        lines.append(f"{name}: 00{n}")
    elif framing == "spaced":
        lines.append(f"{name}:\t {n} ")
    elif framing == "list":
        lines.append(f"{name}: {n}, {n}")
    elif framing == "twice":
        lines += [f"{name}: {n}", f"Content-Length: {draw(st.sampled_from([n, n + 1]))}"]
    elif framing == "short":  # the rest of the body becomes the next request's start
        lines.append(f"{name}: {max(n - 2, 0)}")
    elif framing == "chunked":
        lines.append("Transfer-Encoding: chunked")
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (n, body) if n else b"0\r\n\r\n"
    head = end.join(lines) + end + end
    return head.encode("latin-1") + (body if framing != "none" else b"")


@settings(max_examples=200, deadline=None)
@given(requests=st.lists(_request(), min_size=1, max_size=5), piece=st.sampled_from([1, 5, 10**6]))
def test_requests_from_the_memo_equal_h11s(requests: list[bytes], piece: int) -> None:
    asyncio.run(_both(b"".join(requests), piece))


async def test_the_property_test_meets_memoized_heads() -> None:
    get = b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n"
    data = get + b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
    seen, out, memoized = await _both(data, 10**6)
    assert memoized == 2
    assert len(seen) == 4
    assert responses(out) == [200, 200]
