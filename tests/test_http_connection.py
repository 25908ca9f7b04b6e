"""Connection behaviour over real sockets: keep-alive, pipelining, framing, routing, shutdown."""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest

from oxiserve.http.messages import Request, Response
from tests.conftest import RawClient, in_flight, mask_volatile, running, wait_until

CHAT_BODY = b'{"model":"oxiserve-sim","messages":[{"role":"user","content":"hi"}]}'
CHAT = b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (
    len(CHAT_BODY),
    CHAT_BODY,
)

REQUESTS = (
    b"GET /health HTTP/1.1\r\nHost: t\r\nX-Request-Id: a1\r\n\r\n"
    b"GET /v1/models HTTP/1.1\r\nHost: t\r\nX-Request-Id: a2\r\n\r\n"
    b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nX-Request-Id: a3\r\n"
    b"Content-Type: application/json\r\nContent-Length: 40\r\n\r\n"
    b'{"model": "oxiserve-sim", "input": "hi"}'
    b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nX-Request-Id: a4\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
    b'14\r\n{"model": "oxiserve-\r\n14\r\nsim", "input": "yo"}\r\n0\r\n\r\n'
    b"GET /v1/models/nope HTTP/1.1\r\nHost: t\r\nX-Request-Id: a5\r\nConnection: close\r\n\r\n"
)


async def test_pipelined_requests_are_answered_in_order(raw: object) -> None:
    client = await raw()  # type: ignore[operator]
    await client.send(REQUESTS)
    ids, statuses = [], []
    for _ in range(5):
        status, headers, _ = await client.read_response()
        ids.append(headers["x-request-id"])
        statuses.append(status)
    assert ids == ["a1", "a2", "a3", "a4", "a5"]
    assert statuses == [200, 200, 200, 200, 404]
    assert await client.closed_by_server()  # Connection: close honoured


async def test_byte_by_byte_delivery_gives_the_same_responses(raw: object) -> None:
    whole = await raw()  # type: ignore[operator]
    await whole.send(REQUESTS)
    expected = await whole.read_all()
    trickle = await raw()  # type: ignore[operator]
    for i in range(len(REQUESTS)):
        trickle.writer.write(REQUESTS[i : i + 1])
        await trickle.writer.drain()
    got = await trickle.read_all()
    assert mask_volatile(got) == mask_volatile(expected)
    assert got.count(b"HTTP/1.1 ") == 5


async def test_many_pipelined_requests_in_one_packet(raw: object) -> None:
    client = await raw()  # type: ignore[operator]
    await client.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n" * 2000)
    for _ in range(2000):
        status, _, body = await client.read_response()
        assert (status, body) == (200, b'{"status":"ok"}')


async def test_keep_alive_reuses_the_connection(raw: object) -> None:
    client = await raw()  # type: ignore[operator]
    for _ in range(3):
        await client.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, body = await client.read_response()
        assert (status, body) == (200, b'{"status":"ok"}')
        assert "connection" not in headers
    assert not client.reader.at_eof()


async def test_http_1_0_gets_answered_and_closed(raw: object) -> None:
    client = await raw()  # type: ignore[operator]
    await client.send(b"GET /health HTTP/1.0\r\n\r\n")
    data = await client.read_all()
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert b"connection: close" in data


async def test_every_response_has_request_id_length_and_date(raw: object) -> None:
    client = await raw()  # type: ignore[operator]
    await client.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
    _, headers, body = await client.read_response()
    assert headers["x-request-id"].startswith("req_")
    assert headers["content-length"] == str(len(body))
    assert headers["date"].endswith("GMT")
    await client.send(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Request-Id: mine-42\r\n\r\n")
    _, headers, _ = await client.read_response()
    assert headers["x-request-id"] == "mine-42"
    await client.send(
        b"GET /health HTTP/1.1\r\nHost: t\r\nX-Request-Id: " + b"x" * 300 + b"\r\n\r\n"
    )
    _, headers, _ = await client.read_response()
    assert headers["x-request-id"].startswith("req_")  # an absurd id is replaced, not echoed


async def test_unknown_path_404_and_wrong_method_405_with_allow(raw: object) -> None:
    client = await raw()  # type: ignore[operator]
    await client.send(b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n")
    status, _, body = await client.read_response()
    assert status == 404
    assert orjson.loads(body)["error"]["type"] == "invalid_request_error"
    await client.send(b"DELETE /v1/chat/completions HTTP/1.1\r\nHost: t\r\n\r\n")
    status, headers, body = await client.read_response()
    assert status == 405
    assert headers["allow"] == "POST"
    assert orjson.loads(body)["error"]["code"] == "method_not_allowed"
    await client.send(b"POST /v1/models HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
    status, headers, _ = await client.read_response()
    assert (status, headers["allow"]) == (405, "GET, HEAD")


async def test_head_works_where_get_does(raw: object) -> None:
    client = await raw()  # type: ignore[operator]
    await client.send(b"HEAD /v1/models HTTP/1.1\r\nHost: t\r\n\r\n")
    head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    assert b"content-length: " in head
    await client.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")  # no body came before this
    status, _, body = await client.read_response()
    assert (status, body) == (200, b'{"status":"ok"}')


async def test_handler_exception_is_a_500_with_the_traceback_only_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def boom(request: Request) -> Response:
        raise RuntimeError("secret internals")

    async def aboom(request: Request) -> Response:
        raise KeyError("more internals")

    async with running() as server:
        server.context.router.add("GET", "/boom", boom)
        server.context.router.add("GET", "/aboom", aboom)
        client = await RawClient.connect(server)
        with caplog.at_level(logging.ERROR, logger="oxiserve.http"):
            for path in (b"/boom", b"/aboom"):
                await client.send(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path)
                status, _, body = await client.read_response()
                assert status == 500
                error = orjson.loads(body)["error"]
                assert error["type"] == "server_error"
                assert "internals" not in body.decode()
        assert "secret internals" in caplog.text
        assert "Traceback" in caplog.text
        await client.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")  # still usable
        assert (await client.read_response())[0] == 200
        await client.close()


async def test_two_embedded_servers_in_one_process() -> None:
    async with running(model_name="first") as one, running(model_name="second") as two:
        assert one.port != two.port
        for server, name in ((one, b"first"), (two, b"second")):
            client = await RawClient.connect(server)
            await client.send(b"GET /v1/models HTTP/1.1\r\nHost: t\r\n\r\n")
            _, _, body = await client.read_response()
            assert [m["id"].encode() for m in orjson.loads(body)["data"]] == [name]
            await client.close()


async def test_graceful_shutdown_lets_an_in_flight_request_finish() -> None:
    async with running(sim_ttft_ms=300) as server:
        client = await RawClient.connect(server)
        await client.send(CHAT)
        idle = await RawClient.connect(server)
        await idle.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        await idle.read_response()
        await wait_until(lambda: in_flight(server))
        stopping = asyncio.create_task(server.stop(timeout=5.0))
        status, headers, data = await client.read_response()
        assert status == 200
        assert headers["connection"] == "close"
        assert orjson.loads(data)["choices"][0]["finish_reason"] == "stop"  # no max_tokens: not cut
        assert await idle.closed_by_server()
        await asyncio.wait_for(stopping, 5)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(server.host, server.port)
        await client.close()
        await idle.close()


async def test_shutdown_timeout_aborts_what_is_still_running() -> None:
    async with running(sim_ttft_ms=10_000) as server:
        client = await RawClient.connect(server)
        await client.send(CHAT)
        await wait_until(lambda: in_flight(server))
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(server.stop(timeout=0.2), 5)
        assert loop.time() - started < 4
        assert await client.closed_by_server()
        await client.close()


async def test_pipelined_flood_during_a_slow_request_is_not_buffered_without_bound() -> None:
    async with running(sim_ttft_ms=300) as server:
        client = await RawClient.connect(server)
        await client.send(CHAT)
        await wait_until(lambda: in_flight(server))
        flood = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n" * 30_000  # 1 MB, pipelined
        client.writer.write(flood)
        (conn,) = server.context.connections
        peak = 0

        def watch() -> bool:
            nonlocal peak
            peak = max(peak, len(conn._backlog))
            return not in_flight(server) or peak > 2_000_000

        await wait_until(watch)
        assert peak < 512 * 1024  # reading paused; the kernel holds the rest
        status, _, _ = await client.read_response()
        assert status == 200
        for _ in range(30_000):  # every pipelined request is still answered, in order
            status, _, data = await client.read_response()
            assert (status, data) == (200, b'{"status":"ok"}')
        await client.close()


async def test_trailing_slash_is_ignored_everywhere(raw: object) -> None:
    client = await raw()  # type: ignore[operator]
    for path in (b"/health/", b"/v1/models/", b"/v1/models/oxiserve-sim/"):
        await client.send(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path)
        status, _, _ = await client.read_response()
        assert status == 200, path


async def test_protocol_errors_echo_the_request_id(raw: object) -> None:
    client = await raw()  # type: ignore[operator]
    await client.send(
        b"POST /health HTTP/1.1\r\nHost: t\r\nX-Request-Id: trace-7\r\nContent-Length: 1\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    status, headers, _ = await client.read_response()
    assert (status, headers["x-request-id"]) == (400, "trace-7")


async def test_cors_is_off_by_default(raw: object) -> None:
    client = await raw()  # type: ignore[operator]
    await client.send(
        b"OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: t\r\nOrigin: https://app.example\r\n"
        b"Access-Control-Request-Method: POST\r\n\r\n"
    )
    status, headers, _ = await client.read_response()
    assert status == 405
    assert "access-control-allow-origin" not in headers


async def test_cors_preflight_and_responses_for_allowed_origins() -> None:
    async with running(cors_allow_origins="https://app.example, https://b.example") as server:
        client = await RawClient.connect(server)
        await client.send(
            b"OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: t\r\nOrigin: https://app.example\r\n"
            b"Access-Control-Request-Method: POST\r\n"
            b"Access-Control-Request-Headers: authorization, content-type\r\n\r\n"
        )
        status, headers, _ = await client.read_response()
        assert status == 204
        assert headers["access-control-allow-origin"] == "https://app.example"
        assert headers["access-control-allow-methods"] == "POST"
        assert headers["access-control-allow-headers"] == "authorization, content-type"
        assert headers["vary"] == "origin"
        await client.send(
            b"GET /v1/models HTTP/1.1\r\nHost: t\r\nOrigin: https://b.example\r\n\r\n"
        )
        status, headers, _ = await client.read_response()
        assert status == 200
        assert headers["access-control-allow-origin"] == "https://b.example"
        assert "x-request-id" in headers["access-control-expose-headers"]
        await client.send(
            b"GET /v1/models HTTP/1.1\r\nHost: t\r\nOrigin: https://evil.example\r\n\r\n"
        )
        status, headers, _ = await client.read_response()
        assert status == 200
        assert "access-control-allow-origin" not in headers
        await client.close()


async def test_cors_headers_appear_once_and_vary_on_origin() -> None:
    async with running(cors_allow_origins="https://app.example") as server:
        client = await RawClient.connect(server)
        await client.send(
            b"OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: t\r\nOrigin: https://app.example\r\n"
            b"Access-Control-Request-Method: POST\r\n\r\n"
            b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        data = await asyncio.wait_for(client.reader.readuntil(b'{"status":"ok"}'), 5)
        preflight, _, plain = data.partition(b"HTTP/1.1 200")
        assert preflight.count(b"access-control-allow-origin: https://app.example\r\n") == 1
        assert preflight.count(b"vary: origin\r\n") == 1
        assert b"access-control-allow-origin" not in plain  # no Origin sent
        assert plain.count(b"vary: origin\r\n") == 1
        await client.close()
