"""Rate limits are global with a bus: what one replica admits, the others take from the
same caller's budget within a tick."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from oxiserve import Server
from oxiserve.api.limits import Limits, RateLimited
from oxiserve.bus.limits import CHANNEL, SharedLimits
from tests.conftest import running
from tests.redis_server import PrivateRedis

CHAT = {"model": "oxiserve-sim", "messages": [{"role": "user", "content": "hi"}]}


WHO = "127.0.0.1"  # the caller without API keys: its address


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait (bounded) for what a replica learns from the others' ticks."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "the replicas did not agree in time"
        await asyncio.sleep(0.01)


def limits_of(server: Server) -> Limits:
    assert server.state is not None
    assert server.state.limits is not None
    return server.state.limits


def listening(*servers: Server) -> Callable[[], bool]:
    """Every server's bus has joined the limits channel."""

    def check() -> bool:
        return all(s.state is not None and s.state.bus is not None
                   and CHANNEL in s.state.bus._subscribed for s in servers)  # fmt: skip

    return check


async def test_requests_admitted_by_one_replica_count_on_the_other(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    shared = {"bus": private_redis.new_database(), "db": str(tmp_path / "shared.db"),
              "rate_limit_rps": 0.01, "rate_limit_burst": 4}  # fmt: skip
    async with running(**shared) as a, running(**shared) as b, httpx.AsyncClient() as client:
        await until(listening(a, b))
        for _ in range(4):
            assert (await client.post(f"{a.url}/v1/chat/completions", json=CHAT)).status_code == 200
        await until(lambda: limits_of(b).requests_left(WHO) < 1)  # A's four, taken on B too
        refused = await client.post(f"{b.url}/v1/chat/completions", json=CHAT)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"


async def test_without_a_bus_each_server_has_its_own_budget(tmp_path: Path) -> None:
    alone = {"rate_limit_rps": 0.01, "rate_limit_burst": 4}
    async with running(**alone) as a, running(**alone) as b, httpx.AsyncClient() as client:
        for _ in range(4):
            assert (await client.post(f"{a.url}/v1/chat/completions", json=CHAT)).status_code == 200
        assert (await client.post(f"{b.url}/v1/chat/completions", json=CHAT)).status_code == 200


async def test_open_streams_count_across_replicas_and_are_given_back(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    shared = {"bus": private_redis.new_database(), "db": str(tmp_path / "shared.db"),
              "max_concurrent_streams": 1, "sim_itl_ms": 20,
              "sim_default_max_tokens": 1000}  # fmt: skip
    body = {**CHAT, "stream": True}
    async with running(**shared) as a, running(**shared) as b, httpx.AsyncClient() as client:
        await until(listening(a, b))
        async with client.stream("POST", f"{a.url}/v1/chat/completions", json=body) as held:
            assert held.status_code == 200
            chunks = held.aiter_bytes()  # held: a dropped iterator would close the stream
            await chunks.__anext__()
            await until(lambda: limits_of(b).streams_open_elsewhere(WHO) == 1)
            refused = await client.post(f"{b.url}/v1/chat/completions", json=body)
            assert refused.status_code == 429
        await until(lambda: limits_of(b).streams_open_elsewhere(WHO) == 0)  # closed on A
        short = {**CHAT, "stream": True, "max_tokens": 2}
        again = await client.post(f"{b.url}/v1/chat/completions", json=short)
        assert again.status_code == 200


class _FakeBus:
    replica = "here"

    def on_broadcast(self, channel: str, handler: object) -> None:
        self.handler = handler


def test_a_tick_out_of_shape_changes_nothing_and_debts_are_bounded() -> None:
    limits = Limits(rps=1.0, burst=4, tpm=600)
    shared = SharedLimits(_FakeBus(), limits)  # type: ignore[arg-type]
    for bad in ({"spent": [1, 2]}, {"spent": {WHO: ["inf", 0]}}, {"spent": {WHO: [1e308, 0]}},
                {"spent": {WHO: [float("nan"), 0]}}, {"streams": {WHO: -1}},
                {"spent": {WHO: [True, 0]}}):  # fmt: skip
        with pytest.raises(ValueError, match=r"objects|number|range"):
            shared._heard({"from": "there", **bad})
    assert limits.requests_left(WHO) == 4  # a full bucket: nothing was taken
    shared._heard({"from": "there", "spent": {WHO: [1e9, 1e9]}, "streams": {WHO: 2}})
    assert -4 <= limits.requests_left(WHO) < -3.9  # one bucketful owed at most (it refills)
    assert limits.streams_open_elsewhere(WHO) == 2
    limits.admit("another")  # the headers of a caller in debt still render
    with pytest.raises(RateLimited):
        limits.admit(WHO)
