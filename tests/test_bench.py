"""The bench kit measures correctly: tiny bounded loads against a live oxiserve, the HTTP
client's parsers on split input, and the peers it compares against.

These tests check the tool's figures are well-formed and consistent, never timing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.__main__ import main as bench_main
from bench.catalog import LOOPS, OXISERVE, PEERS, SCENARIOS, SERVERS, ServerSpec
from bench.client import (
    ChunkedDecoder,
    HTTPConnection,
    ProtocolError,
    SSESplitter,
    build_request,
    parse_frame,
    parse_head,
)
from bench.compare import Sizes, compare
from bench.compare_report import render_markdown, render_terminal
from bench.footprint import measure_footprint
from bench.load import LoadSpec
from bench.peers.raw_peer import RawHTTP
from bench.probe import first_token_ms
from bench.procs import Pinning, ServerProcess, ServerStartError, check_loop
from bench.run import RunOptions, RunReport, run_benchmark
from bench.scenarios import ChatStream, Target, Workload
from bench.stats import Distribution, RequestResult, percentile, summarize
from oxiserve import Config, Server

TIMEOUT = 20.0
RUN_KEYS = {
    "kind",
    "timestamp",
    "git_commit",
    "machine",
    "scenario",
    "target",
    "server",
    "pinning",
    "client_loop",
    "load",
    "workload",
    "unavailable",
    "summary",
}
SUMMARY_KEYS = {
    "requests",
    "ok",
    "errors",
    "duration_s",
    "requests_per_s",
    "tokens",
    "tokens_per_s",
    "events",
    "events_per_s",
    "ttfb_ms",
    "ttft_ms",
    "itl_ms",
    "e2e_ms",
    "server_cpu_s",
    "server_cpu_us_per_event",
    "server_cpu_us_per_request",
    "client_cpu_util",
    "probe_ttft_ms",
    "server_rss_mb",
}


@asynccontextmanager
async def oxiserve(**config: Any) -> AsyncIterator[Server]:
    config.setdefault("db", ":memory:")
    async with Server(Config(port=0, access_log=False, log_level="warning", **config)) as server:
        yield server


async def bench(url: str, scenario: str, tmp_path: Path, **options: Any) -> RunReport:
    """A tiny bounded run of ``scenario`` against ``url``, result file in ``tmp_path``."""
    load = options.pop("load", LoadSpec(concurrency=2, requests=6, timeout=10.0))
    opts = RunOptions(
        scenario=scenario,
        url=url,
        load=load,
        workload=Workload(**options),
        results_dir=tmp_path,
        progress=False,
    )
    async with asyncio.timeout(TIMEOUT):
        return await run_benchmark(opts)


def assert_well_formed(report: RunReport) -> None:
    assert report.path is not None
    doc = json.loads(report.path.read_text())
    assert set(doc) == RUN_KEYS
    assert set(doc["summary"]) == SUMMARY_KEYS
    assert {"platform", "python", "cpu_count", "cpu_model"} <= set(doc["machine"])
    s = report.summary
    assert s.ok + sum(s.errors.values()) == s.requests
    for dist in (s.ttfb_ms, s.ttft_ms, s.itl_ms, s.e2e_ms):
        if dist is not None:
            assert 0 <= dist.min <= dist.p50 <= dist.p90 <= dist.p99 <= dist.max
            assert dist.min <= dist.mean <= dist.max


# -- scenarios against a live oxiserve ------------------------------------------------------


@pytest.mark.parametrize("usage", [True, False])
async def test_chat_stream_counts_every_token_and_event(tmp_path: Path, usage: bool) -> None:
    async with oxiserve() as server:
        report = await bench(server.url, "chat-stream", tmp_path, max_tokens=7, include_usage=usage)
    s = report.summary
    assert_well_formed(report)
    assert (s.requests, s.ok, s.errors) == (6, 6, {})
    assert s.tokens == 6 * 7
    # role chunk + one chunk per token + finish chunk (+ usage chunk)
    assert s.events == 6 * (7 + 2 + usage)
    assert s.ttft_ms is not None
    assert s.ttft_ms.count == 6
    assert s.itl_ms is not None
    assert s.itl_ms.count == 6 * (7 - 1)
    assert s.e2e_ms is not None
    assert s.e2e_ms.count == 6


async def test_completions_stream_counts_tokens(tmp_path: Path) -> None:
    async with oxiserve() as server:
        report = await bench(server.url, "completions-stream", tmp_path, max_tokens=5)
    assert_well_formed(report)
    s = report.summary
    assert (s.ok, s.tokens) == (6, 30)
    assert s.events >= s.tokens
    assert s.itl_ms is not None
    assert s.itl_ms.count == 6 * 4


@pytest.mark.parametrize(
    ("scenario", "tokens_each"),
    [("chat", 9), ("completions", 9), ("embeddings", 0), ("health", 0)],
)
async def test_json_scenarios(tmp_path: Path, scenario: str, tokens_each: int) -> None:
    async with oxiserve() as server:
        report = await bench(server.url, scenario, tmp_path, max_tokens=9)
    assert_well_formed(report)
    s = report.summary
    assert (s.requests, s.ok, s.errors, s.events) == (6, 6, {}, 0)
    assert s.tokens == 6 * tokens_each
    assert s.e2e_ms is not None
    assert s.e2e_ms.count == 6


@pytest.mark.parametrize("scenario", ["chat-stream", "chat", "completions", "embeddings"])
async def test_injected_errors_are_counted_exactly(tmp_path: Path, scenario: str) -> None:
    load = LoadSpec(concurrency=3, requests=9, timeout=10.0)
    async with oxiserve() as server:
        report = await bench(
            server.url,
            scenario,
            tmp_path,
            load=load,
            max_tokens=3,
            sim_error=503,
            sim_error_every=3,
        )
    assert_well_formed(report)
    s = report.summary
    assert s.errors == {"status:503": 3}
    assert s.ok == 6
    if scenario != "embeddings":
        assert s.tokens == 6 * 3  # failed requests produce no tokens


@pytest.mark.parametrize(
    ("kind", "expected"), [("server_error", "status:"), ("mid_stream", "stream_error")]
)
async def test_simulated_failures_are_errors(tmp_path: Path, kind: str, expected: str) -> None:
    async with oxiserve(sim_failure_rate=1.0, sim_failure_types=(kind,)) as server:
        report = await bench(server.url, "chat-stream", tmp_path, max_tokens=6)
    s = report.summary
    assert (s.requests, s.ok) == (6, 0)
    assert sum(s.errors.values()) == 6
    assert all(k.startswith(expected) for k in s.errors), s.errors


async def test_poisson_arrivals_and_duration_bound(tmp_path: Path) -> None:
    async with oxiserve() as server:
        poisson = await bench(
            server.url, "health", tmp_path, load=LoadSpec(concurrency=2, rate=5000.0, requests=25)
        )
        timed = await bench(server.url, "health", tmp_path, load=LoadSpec(duration=0.05))
    assert (poisson.summary.requests, poisson.summary.ok) == (25, 25)
    assert poisson.doc["load"]["rate"] == 5000.0
    assert timed.summary.requests >= 1
    assert timed.summary.duration_s >= 0.05
    assert poisson.path != timed.path


@pytest.mark.parametrize("scenario", ["runs-stream", "fanout"])
async def test_assistant_scenarios_on_oxiserve(tmp_path: Path, scenario: str) -> None:
    async with oxiserve() as server:
        report = await bench(server.url, scenario, tmp_path, max_tokens=5, subscribers=2)
    assert_well_formed(report)
    s = report.summary
    assert report.unavailable is None, report.unavailable
    per_run = 1 + 2 if scenario == "fanout" else 1
    assert (s.requests, s.ok) == (6 * per_run, 6 * per_run), s.errors
    assert s.tokens >= 6 * 5


@pytest.mark.parametrize(
    ("scenario", "events"), [("responses-stream", 40 + 8), ("resume-ring", 8), ("resume-lagged", 5)]
)
async def test_responses_scenarios_on_oxiserve(tmp_path: Path, scenario: str, events: int) -> None:
    # A ring of 16 frames: the lagged resume really is past it, and is rebuilt (text checked).
    async with oxiserve(stream_buffer=16) as server:
        report = await bench(server.url, scenario, tmp_path, max_tokens=40)
    assert_well_formed(report)
    s = report.summary
    assert (s.requests, s.ok) == (6, 6), s.errors
    assert s.events == 6 * events  # 40 deltas and 8 other events; 8 resumed; 1 delta + 4
    assert s.ttfb_ms is not None


@pytest.mark.parametrize(
    "scenario", ["runs-stream", "fanout", "chat-stream", "responses-stream", "resume-ring"]
)
async def test_missing_endpoints_are_reported_not_raised(tmp_path: Path, scenario: str) -> None:
    # the raw peer answers 404 to everything but /health and chat completions
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: RawHTTP(burst=False), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        report = await bench(f"http://127.0.0.1:{port}", scenario, tmp_path, max_tokens=3)
    finally:
        server.close()
        await server.wait_closed()
    if scenario == "chat-stream":  # the peer has it: a control for the two above
        assert (report.summary.ok, report.summary.tokens) == (6, 18)
        return
    assert report.unavailable is not None
    assert report.unavailable.startswith("endpoint not available (404): POST /v1/")
    assert report.summary.errors == {"status:404": 1}
    assert json.loads(report.path.read_text())["unavailable"] == report.unavailable  # type: ignore[union-attr]


def test_cli_run_starts_oxiserve_and_measures_its_cpu(tmp_path: Path) -> None:
    argv = [
        "run",
        "--scenario",
        "chat-stream",
        "--requests",
        "5",
        "--max-tokens",
        "4",
        "--no-pin",
        "--loop",
        "asyncio",
        "--server-loop",
        "uvloop",
        "--results-dir",
        str(tmp_path),
    ]
    assert bench_main(argv) == 0
    [path] = tmp_path.glob("*-chat-stream.json")
    doc = json.loads(path.read_text())
    assert doc["server"]["started_by_bench"] is True
    assert doc["server"]["loop"] == "uvloop"
    assert doc["client_loop"] == "asyncio"
    assert doc["pinning"] == "not pinned (disabled)"
    summary = doc["summary"]
    assert (summary["ok"], summary["tokens"]) == (5, 20)
    assert summary["server_cpu_s"] is not None
    assert summary["server_cpu_s"] >= 0


# -- the HTTP client -------------------------------------------------------------------------

CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n"
    b'12;ext=1\r\ndata: {"a":1}\n\ndat\r\n'
    b"5\r\na: 2\n\r\n"
    b"1\r\n\n\r\n"
    b"0\r\nx-trailer: yes\r\n\r\n"
)
SIZED = b"HTTP/1.1 404 Not Found\r\ncontent-length: 5\r\n\r\nnope!"


def feed_all(pieces: list[bytes]) -> tuple[bytes, bool, bytes]:
    decoder = ChunkedDecoder()
    body = b"".join(decoder.feed(p) for p in pieces)
    return body, decoder.done, decoder.leftover


def test_chunked_decoder_whole_and_byte_by_byte() -> None:
    raw = CHUNKED.split(b"\r\n\r\n", 1)[1] + b"NEXT"
    whole = feed_all([raw])
    split = feed_all([raw[i : i + 1] for i in range(len(raw))])
    assert whole == split == (b'data: {"a":1}\n\ndata: 2\n\n', True, b"NEXT")


@given(st.lists(st.binary(min_size=1, max_size=40), max_size=8), st.data())
def test_chunked_decoder_any_split(chunks: list[bytes], data: st.DataObject) -> None:
    raw = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=10)))
    pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    assert feed_all(pieces) == (b"".join(chunks), True, b"")


@pytest.mark.parametrize("bad", [b"0x5\r\nhello\r\n", b"+5\r\nhello\r\n", b"5\r\nhelloXX"])
def test_chunked_decoder_rejects_bad_framing(bad: bytes) -> None:
    with pytest.raises(ProtocolError):
        ChunkedDecoder().feed(bad)


def test_sse_splitter_and_frames() -> None:
    stream = b'data: {"x":1}\r\n\r\n: ping\n\nevent: done\ndata: [DONE]\n\ndata: par'
    for pieces in ([stream], [stream[i : i + 1] for i in range(len(stream))]):
        splitter = SSESplitter()
        frames = [f for p in pieces for f in splitter.feed(p)]
        assert [parse_frame(f) for f in frames] == [
            parse_frame(b'data: {"x":1}'),
            None,
            parse_frame(b"event: done\ndata: [DONE]"),
        ]
        assert splitter.pending == b"data: par"
    event = parse_frame(b"event: done\ndata: [DONE]")
    assert event is not None
    assert (event.event, event.data) == ("done", b"[DONE]")


def test_parse_head() -> None:
    head = parse_head(b"HTTP/1.1 200 OK\r\nA: 1\r\na: 2\r\nConnection: close\r\nContent-Length: 3")
    assert (head.status, head.headers["a"], head.keep_alive, head.content_length) == (
        200,
        "1, 2",
        False,
        3,
    )
    with pytest.raises(ProtocolError):
        parse_head(b"HTTP/2 200 OK")


async def test_client_reads_byte_by_byte_responses_on_one_connection() -> None:
    """A tiny server answers the first request with two responses written one byte at a
    time (the second is read from the leftover of the first), then a third one."""
    requests: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for payload in (CHUNKED + SIZED, b"", SIZED):
            requests.append(await reader.readuntil(b"\r\n\r\n"))
            for i in range(len(payload)):
                writer.write(payload[i : i + 1])
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    conn = HTTPConnection("127.0.0.1", port)
    try:
        async with asyncio.timeout(TIMEOUT):
            await conn.connect()
            got = []
            for _ in range(3):
                conn.send(build_request("GET", "/x", f"127.0.0.1:{port}"))
                head = await conn.read_head()
                got.append((head.status, await conn.read_body(head)))
    finally:
        await conn.close()
        server.close()
        await server.wait_closed()
    assert got == [(200, b'data: {"a":1}\n\ndata: 2\n\n'), (404, b"nope!"), (404, b"nope!")]
    assert len(requests) == 3
    assert requests[0].startswith(b"GET /x HTTP/1.1\r\nhost: 127.0.0.1:")


# -- statistics ------------------------------------------------------------------------------


def test_percentiles_interpolate() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    dist = Distribution.of([3.0, 1.0, 2.0], scale=1e3)
    assert dist is not None
    assert (dist.min, dist.p50, dist.max) == (1e3, 2e3, 3e3)
    assert Distribution.of([]) is None


@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=200))
def test_distribution_is_ordered(values: list[float]) -> None:
    dist = Distribution.of(values)
    assert dist is not None
    assert dist.min <= dist.p50 <= dist.p90 <= dist.p99 <= dist.max


def test_summarize_counts_errors_and_rates() -> None:
    ok = RequestResult(0.0, 1.0, 200, 0.1, 0.2, tokens=3, events=5)
    bad = RequestResult(0.0, 0.5, 503, 0.1, error="status:503")
    s = summarize([ok, bad, replace(ok)], duration=2.0, server_cpu=0.01)
    assert (s.requests, s.ok, s.errors, s.tokens, s.events) == (3, 2, {"status:503": 1}, 6, 10)
    assert (s.requests_per_s, s.events_per_s) == (1.5, 5.0)
    assert s.server_cpu_us_per_event == pytest.approx(1000.0)
    assert s.e2e_ms is not None
    assert s.e2e_ms.count == 2


# -- peers and the comparison ----------------------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("key", [p.key for p in PEERS])
async def test_peer_serves_health_and_streams_tokens(tmp_path: Path, key: str, loop: str) -> None:
    spec = SERVERS[key]
    pytest.importorskip({"fastapi-sse": "sse_starlette", "aiohttp": "aiohttp"}.get(key, "orjson"))
    pytest.importorskip(loop)
    async with asyncio.timeout(TIMEOUT), ServerProcess(spec.argv(loop=loop)) as server:
        # the ready line names the loop the peer runs on, read from the running loop
        assert server.loop == loop
        health = await bench(server.url, "health", tmp_path, load=LoadSpec(requests=1))
        stream = await bench(server.url, "chat-stream", tmp_path, max_tokens=5)
        chat = await bench(server.url, "chat", tmp_path, max_tokens=5)
    assert (health.summary.ok, health.summary.requests) == (1, 1)
    assert (stream.summary.ok, stream.summary.tokens, stream.summary.events) == (6, 30, 6 * 8)
    assert (chat.summary.ok, chat.summary.tokens) == (6, 30)


def _tiny_sizes() -> Sizes:
    return Sizes(
        duration=0.05,
        warmup=0.02,
        long_stream_tokens=40,
        streams=3,
        stream_tokens=8,
        json_concurrency=2,
        footprint_runs=1,
        idle_connections=20,
        import_runs=1,
        fanout=(1,),
    )


async def test_peer_default_loop_is_asyncio_and_a_wrong_loop_is_caught() -> None:
    raw = SERVERS["raw"]
    async with asyncio.timeout(TIMEOUT), ServerProcess(raw.argv()) as server:
        assert server.loop == "asyncio"
        check_loop(server, "asyncio")
        check_loop(server, None)
        with pytest.raises(ServerStartError, match="runs on the asyncio loop, not on uvloop"):
            check_loop(server, "uvloop")


async def test_the_probe_times_a_first_token_and_refuses_errors() -> None:
    async with oxiserve(sim_ttft_ms=30) as server:
        target = Target.parse(server.url)
        request = ChatStream(target, Workload(max_tokens=2)).request_for(0)
        ms = await asyncio.to_thread(first_token_ms, target.host, target.port, request, 5.0)
        assert ms is not None
        assert ms >= 30  # it waited for the first token, not the head or the role chunk
        missing = request.replace(b"/v1/chat/completions", b"/v1/nothing-here")
        refused = await asyncio.to_thread(first_token_ms, target.host, target.port, missing, 5.0)
        assert refused is None


async def test_compare_on_both_loops_renders_a_table_per_loop() -> None:
    pytest.importorskip("uvloop")
    sizes = _tiny_sizes()
    raw = SERVERS["raw"]
    runs = []
    async with asyncio.timeout(TIMEOUT * 4):
        for loop in LOOPS:
            runs.append(
                await compare(
                    [OXISERVE, raw],
                    sizes,
                    pinning=Pinning.plan(enabled=False),
                    footprint=False,
                    loop=loop,
                    log=lambda line: None,
                )
            )
    for loop, results in zip(LOOPS, runs, strict=True):
        assert [(r.failure, r.loop) for r in results] == [(None, loop), (None, loop)]
        for result in results:
            figures = result.figures
            assert figures["events_per_s_32"] > 0
            assert figures["probe_ttft_p50_ms"] > 0  # the probe beside the 3 streams
            assert figures["health_rps"] > 0
            assert result.summaries["stream_1"].tokens % 40 == 0
            assert all(not s.errors for s in result.summaries.values())
            assert result.to_dict()["loop"] == loop
    context = {"pinning": "not pinned", "client_loop": "asyncio", "machine": {}}
    text = render_terminal(runs, sizes, context)
    markdown = render_markdown(runs, sizes, context)
    assert "streamed events/s, 3 streams" in text
    assert "x)" in text
    assert text.count("goals:") == 2
    assert text.count("oxiserve / naive raw asyncio.Protocol") >= 2
    # one table per loop, in order, each naming its loop in its heading and top-left cell
    headings = [
        f"Every server on the {loop} event loop (started with --loop {loop})" for loop in LOOPS
    ]
    assert text.index(headings[0]) < text.index(headings[1])
    tables = markdown.split("**Every server on the ")[1:]
    assert [t.split(" ", 1)[0] for t in tables] == list(LOOPS)
    for loop, table in zip(LOOPS, tables, strict=True):
        assert f"\n| {loop} loop | oxiserve | naive raw asyncio.Protocol |\n" in table
        assert table.count("\n|") >= 8
    assert markdown.count("Measured on") == 1
    assert "One comparison per server loop (asyncio, uvloop)" in markdown


async def test_compare_reports_a_server_that_fails_to_start() -> None:
    # a peer that exits at once: reported in its column, the other server still measured
    broken = ServerSpec("broken", "broken peer", "bench.peers.raw_peer", ("--port", "-1"))
    async with asyncio.timeout(TIMEOUT * 2):
        results = await compare(
            [OXISERVE, broken],
            _tiny_sizes(),
            pinning=Pinning.plan(enabled=False),
            footprint=False,
            loop="asyncio",
            log=lambda line: None,
        )
    assert results[0].failure is None
    assert results[1].failure is not None
    assert "failed" in render_terminal(
        [results], _tiny_sizes(), {"pinning": "-", "client_loop": "-"}
    )


def test_cli_footprint_on_both_loops_writes_one_document(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("uvloop")
    argv = ["footprint", "--quick", "--servers", "raw", "--loops", "uvloop,asyncio"]
    argv += ["--no-pin", "--loop", "asyncio", "--results-dir", str(tmp_path)]
    assert bench_main(argv) == 0
    [path] = tmp_path.glob("*-footprint.json")
    doc = json.loads(path.read_text())
    assert [run["loop"] for run in doc["runs"]] == ["uvloop", "asyncio"]
    for run in doc["runs"]:
        raw = run["servers"]["raw"]
        assert (raw["loop"], raw["failure"]) == (run["loop"], None)
        assert raw["figures"]["cold_start_ms"] > 0
    out = capsys.readouterr().out
    assert out.index("on the uvloop event loop") < out.index("on the asyncio event loop")


def test_cli_rejects_unknown_loops(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench_main(["compare", "--loops", "asyncio,trio"])
    assert "comma-separated names of asyncio, uvloop" in capsys.readouterr().err


async def test_footprint_of_a_peer() -> None:
    async with asyncio.timeout(TIMEOUT):
        fp = await measure_footprint(SERVERS["raw"], runs=1, connections=20, import_runs=1)
    assert fp.cold_start_ms > 0
    assert fp.cold_start_runs_ms == (fp.cold_start_ms,)
    assert fp.connections == 20
    assert fp.connections_rss_mb is not None
    assert fp.idle_rss_mb > 0
    assert fp.import_ms is not None
    assert fp.import_ms > 0


def test_every_scenario_has_a_name_and_builds() -> None:
    assert set(SCENARIOS) >= {
        "chat-stream",
        "chat",
        "completions",
        "embeddings",
        "health",
        "runs-stream",
        "fanout",
    }
    assert orjson.loads(build_request("POST", "/p", "h:1", b"{}").split(b"\r\n\r\n")[1]) == {}


async def test_the_simulator_cost_is_server_cpu_over_paced_tokens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bench import sim_cost

    monkeypatch.setattr(sim_cost, "CONCURRENCY", (1, 8))
    monkeypatch.setattr(sim_cost, "MAX_TOKENS", 5)
    monkeypatch.setattr(sim_cost, "ITL_MS", 5.0)
    results = await sim_cost.measure(seconds=0.5)
    assert [r.concurrency for r in results] == [1, 8]
    for r in results:
        assert r.tokens > 0
        assert r.tokens % 5 == 0  # whole answers, counted from their usage
        # paced: an answer's 5 tokens take at least its 4 gaps of 5 ms
        assert r.tokens_per_s <= r.concurrency * 5 / (4 * 0.005) * 1.05
    table = sim_cost.render(results)
    assert "| 8 |" in table
    assert all(set(row) >= {"met", "server_cpu_us_per_token"} for row in sim_cost.to_json(results))
