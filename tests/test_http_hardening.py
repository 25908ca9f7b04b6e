"""The HTTP layer refuses what it must, with the right status or a clean close, over raw sockets."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from tests.conftest import RawClient, running

GET = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"


async def _status_then_close(client: RawClient, data: bytes) -> tuple[int, dict[str, str], bytes]:
    await client.send(data)
    status, headers, body = await client.read_response()
    assert await client.closed_by_server()
    return status, headers, body


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        pytest.param(
            b"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + GET,
            400,
            id="content-length-with-transfer-encoding",
        ),
        pytest.param(b"GET /health HTTP/1.1\r\nHost: t\r\nX-A: a\x07b\r\n\r\n", 400, id="bel"),
        pytest.param(b"GET /health HTTP/1.1\r\nHost: t\r\nX-A: a\x7fb\r\n\r\n", 400, id="del"),
        pytest.param(
            b"POST /health HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            id="transfer-encoding-in-http-1.0",
        ),
        pytest.param(b"GET /health HTTP/2.0\r\nHost: t\r\n\r\n", 505, id="http-2.0"),
        pytest.param(b"GET health HTTP/1.1\r\nHost: t\r\n\r\n", 400, id="target-without-slash"),
        pytest.param(b"GET * HTTP/1.1\r\nHost: t\r\n\r\n", 400, id="star-with-get"),
        pytest.param(
            b"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            400,
            id="conflicting-content-length",
        ),
        pytest.param(b"GET /health HTTP/1.1\r\n\r\n", 400, id="missing-host"),
        pytest.param(
            b"POST /health HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\nContent-Length: 5\r\n\r\n",
            400,
            id="forbidden-trailer",
        ),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, id="tls-hello"),
    ],
)
async def test_invalid_requests_get_an_error_and_a_close(
    raw: object, request_bytes: bytes, status: int
) -> None:
    client = await raw()  # type: ignore[operator]
    got, headers, body = await _status_then_close(client, request_bytes)
    assert got == status
    assert headers["connection"] == "close"
    error = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]


async def test_smuggled_request_is_never_answered(raw: object) -> None:
    client = await raw()  # type: ignore[operator]
    smuggle = (
        b"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 44\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        b"GET /v1/models HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    await client.send(smuggle)
    everything = await client.read_all()
    assert everything.count(b"HTTP/1.1") == 1
    assert everything.startswith(b"HTTP/1.1 400")
    assert b'"object":"list"' not in everything


async def test_header_block_too_large_is_431() -> None:
    async with running(max_header_bytes=4096) as server:
        client = await RawClient.connect(server)
        big = b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n"
        status, _, _ = await _status_then_close(client, big)
        assert status == 431
        await client.close()


async def test_header_block_too_large_arriving_at_once_is_431(raw: object) -> None:
    """h11 alone accepts a complete 32 KiB header block; our own count refuses it."""
    client = await raw()  # type: ignore[operator]
    fields = b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 300) for i in range(60))
    status, _, _ = await _status_then_close(
        client, b"GET /health HTTP/1.1\r\nHost: t\r\n" + fields + b"\r\n"
    )
    assert status == 431


async def test_too_many_header_fields_is_431(raw: object) -> None:
    client = await raw()  # type: ignore[operator]
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(101))
    status, _, _ = await _status_then_close(
        client, b"GET /health HTTP/1.1\r\nHost: t\r\n" + fields + b"\r\n"
    )
    assert status == 431


async def test_body_too_large_by_content_length_is_413_without_reading_it() -> None:
    async with running(max_body_bytes=1000) as server:
        client = await RawClient.connect(server)
        head = b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nContent-Length: 5000000\r\n\r\n"
        status, _, body = await _status_then_close(client, head)
        assert status == 413
        assert orjson.loads(body)["error"]["code"] == "request_too_large"
        await client.close()


async def test_chunked_body_too_large_is_413() -> None:
    async with running(max_body_bytes=1000) as server:
        client = await RawClient.connect(server)
        head = b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        status, _, _ = await _status_then_close(client, head + b"800\r\n" + b"x" * 0x800 + b"\r\n")
        assert status == 413
        await client.close()


@pytest.mark.parametrize(
    "line", [b"GET /\r\n", b"\r\nGET /\n", b"hello\r\n", b"GET /health HTTP/1.1 extra\r\n"]
)
async def test_a_request_line_that_cannot_be_http_1_is_400_at_once(line: bytes) -> None:
    # header_timeout is long: the answer must come from the line itself, not from a timeout.
    async with running(header_timeout=30) as server:
        client = await RawClient.connect(server)
        status, _headers, body = await _status_then_close(client, line)
        assert status == 400
        assert orjson.loads(body)["error"]["code"] == "bad_request"
        await client.close()


async def test_a_valid_request_line_arriving_in_pieces_is_not_judged_early(raw: object) -> None:
    client = await raw()  # type: ignore[operator]
    for piece in (b"GE", b"T /hea", b"lth HTTP/1", b".1\r", b"\nHost: t\r\n", b"\r\n"):
        await client.send(piece)
    status, _, body = await client.read_response()
    assert (status, body) == (200, b'{"status":"ok"}')


async def test_empty_lines_before_a_request_are_ignored(raw: object) -> None:
    client = await raw()  # type: ignore[operator]
    await client.send(b"\r\n\r\n" + GET + b"\r\n" + GET)  # before the first, between two
    for _ in range(2):
        status, _, body = await client.read_response()
        assert (status, body) == (200, b'{"status":"ok"}')
    await client.send(b"\r\n")  # an empty line alone is no request: nothing is answered
    await client.send(GET)
    status, _, _ = await client.read_response()
    assert status == 200


@pytest.mark.parametrize(
    "target", [b"http://example.com/health", b"HTTP://x:80/health", b"https://x/health?a=1"]
)
async def test_absolute_form_targets_are_accepted(raw: object, target: bytes) -> None:
    client = await raw()  # type: ignore[operator]
    await client.send(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target)
    status, _, body = await client.read_response()
    assert (status, body) == (200, b'{"status":"ok"}')


async def test_options_star_answers_the_servers_methods(raw: object) -> None:
    client = await raw()  # type: ignore[operator]
    await client.send(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n" + GET)
    status, headers, body = await client.read_response()
    assert (status, body, headers["content-length"]) == (200, b"", "0")
    assert set(headers["allow"].split(", ")) == {"GET", "HEAD", "POST", "DELETE", "OPTIONS"}
    status, _, _ = await client.read_response()  # the connection goes on
    assert status == 200


async def test_an_unknown_models_name_is_echoed_truncated(raw: object) -> None:
    name = "m" * 1_000_000
    data = orjson.dumps({"model": name, "messages": [{"role": "user", "content": "hi"}]})
    client = await raw()  # type: ignore[operator]
    await client.send(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s"
        % (len(data), data)
    )
    status, _, body = await client.read_response()
    assert status == 404
    assert len(body) < 1024
    error = orjson.loads(body)["error"]
    assert error["code"] == "model_not_found"
    assert "1000000 characters" in error["message"]


async def test_slowloris_headers_are_cut_off() -> None:
    async with running(header_timeout=0.3) as server:
        client = await RawClient.connect(server)
        await client.send(b"GET /health HTTP/1.1\r\nHost: t\r\n")
        for _ in range(20):  # keep trickling header bytes, never finishing
            await client.send(b"X: y\r\n")
            try:
                data = await asyncio.wait_for(client.reader.read(), 0.05)
            except TimeoutError:
                continue
            assert data == b"" or data.startswith(b"HTTP/1.1 408")
            break
        else:
            pytest.fail("the server kept a trickling header block open")
        await client.close()


async def test_body_timeout_closes() -> None:
    async with running(body_timeout=0.2) as server:
        client = await RawClient.connect(server)
        await client.send(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nab"
        )
        data = await client.read_all(timeout=3.0)
        assert data.startswith(b"HTTP/1.1 408")
        await client.close()


async def test_idle_keep_alive_connection_is_closed() -> None:
    async with running(keepalive_timeout=0.2) as server:
        client = await RawClient.connect(server)
        await client.send(GET)
        status, _, _ = await client.read_response()
        assert status == 200
        assert await client.closed_by_server(timeout=3.0)
        await client.close()


async def test_connections_over_the_limit_get_503_and_close() -> None:
    async with running(max_connections=2) as server:
        first, second = await RawClient.connect(server), await RawClient.connect(server)
        for client in (first, second):  # make sure both are registered
            await client.send(GET)
            assert (await client.read_response())[0] == 200
        third = await RawClient.connect(server)
        status, headers, _ = await third.read_response()
        assert status == 503
        assert headers["connection"] == "close"
        assert await third.closed_by_server()
        for client in (first, second, third):
            await client.close()


async def test_expect_100_continue_gets_interim_response(raw: object) -> None:
    client = await raw()  # type: ignore[operator]
    body = b'{"model": "oxiserve-sim", "input": "hi"}'
    await client.send(
        b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    interim = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    await client.send(body)
    status, _, data = await client.read_response()
    assert status == 200
    assert orjson.loads(data)["object"] == "list"


async def test_half_closed_client_still_gets_its_answers(raw: object) -> None:
    client = await raw()  # type: ignore[operator]
    await client.send(GET + GET)
    client.writer.write_eof()
    data = await client.read_all()
    assert data.count(b"HTTP/1.1 200 OK") == 2
