"""The Redis bus on its own: a topic mirrored by one bus, followed through another, leases."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator

import pytest

from oxiserve.broadcast import EndOfTopic, Lagged, Topic
from oxiserve.bus import BusDown, NotOwned, OwnerUnreachable, RedisBus
from oxiserve.responses import objects
from oxiserve.responses.writer import ResponseWriter, TopicChannel
from oxiserve.runs import objects as run_objects
from tests.redis_server import PrivateRedis


@pytest.fixture
async def buses(private_redis: PrivateRedis) -> AsyncIterator[tuple[RedisBus, RedisBus]]:
    url = private_redis.new_database()
    a, b = RedisBus(url, lease_timeout=1.0), RedisBus(url, lease_timeout=1.0)
    await a.start()
    await b.start()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def until(check: object, timeout: float = 10.0) -> None:
    assert callable(check)
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def run_topic(capacity: int) -> Topic:
    return Topic(capacity, lambda key, text: run_objects.message_delta(f"msg_{key}", text))


def mirrored(bus: RedisBus, job_id: str, capacity: int = 64) -> Topic:
    """A run's topic (its deltas name message ``msg_<key>``), mirrored by ``bus``."""
    topic = run_topic(capacity)
    bus.mirror(job_id, "run", topic, lambda key: f"msg_{key}", retention=5)
    return topic


async def drain(topic: Topic, cursor: int = 0, delivered: dict[int, int] | None = None) -> bytes:
    sub = topic.subscribe(cursor, delivered)
    out: list[bytes] = []
    while True:
        try:
            got = await asyncio.wait_for(sub.receive(), 10)
        except EndOfTopic:
            return b"".join(out)
        out += got.frames if isinstance(got, Lagged) else got


async def test_a_followed_topic_is_the_owners_frame_for_frame(
    buses: tuple[RedisBus, RedisBus],
) -> None:
    a, b = buses
    topic = mirrored(a, "run_1")
    topic.publish(b"event: created\n\n")
    for i in range(20):
        topic.publish_text(f"t{i} ")
        await asyncio.sleep(0)
    await a.sync()
    followed = await b.follow("run_1", 64)
    assert followed is not None
    live = asyncio.create_task(drain(followed.topic))
    for i in range(20, 40):
        topic.publish_text(f"t{i} ", key=1 if i % 2 else 0)
        await asyncio.sleep(0)
    topic.close(b"event: done\n\n")
    remote = await asyncio.wait_for(live, 10)
    assert remote == await drain(topic)
    assert followed.topic.text(1) == topic.text(1)


@pytest.mark.parametrize("pace", ["trimmed", "burst"])
async def test_a_reader_behind_the_stream_gets_exactly_the_missed_text(
    buses: tuple[RedisBus, RedisBus], pace: str
) -> None:
    """``trimmed``: the stream kept only its last entries; ``burst``: the ring overran what
    the bus had flushed, many times (the mirror notes frames as they come: nothing is lost)."""
    a, b = buses
    topic = Topic(16, None, None)
    writer = ResponseWriter(TopicChannel(topic))
    topic = writer_topic = topic
    response = objects.response_object("resp_1", "m", {}, background=True)
    writer.begin(response)
    writer.open_message(0, "msg_a")
    a.mirror("resp_1", "response", writer_topic, writer.item_id, retention=5,
             layout=lambda key: (writer.seqs[key], writer.ends[key]))  # fmt: skip
    for i in range(1500):  # far past the 16-entry stream (kept ~100 by MAXLEN ~) and ring
        writer.text(0, f"w{i} ")
        if pace == "trimmed" and i % 4 == 0:
            await asyncio.sleep(0.003)  # each batch flushed before the ring overruns it
    await a.sync()
    followed = await b.follow("resp_1", 16)
    assert followed is not None
    assert followed.topic.seq == topic.seq
    if pace == "trimmed":  # rebuilt from the stream's last entries, above the cursor
        assert 50 < followed.topic._ring.floor < followed.topic.seq
    else:  # one entry of 1500 frames: the follower's own 16-frame ring lags the cursor
        assert followed.topic._ring.floor == 0
    cursor = 50
    delivered = followed.delivered_at(cursor)
    assert delivered == writer.delivered_at(cursor)
    writer.close_message(0, topic.text(0))
    topic.close()
    got = await drain(followed.topic, cursor, delivered)
    text = "".join(
        part.split(b'"delta":"')[1].split(b'"')[0].decode()
        for part in got.split(b"\n\n")
        if b"output_text.delta" in part
    )
    assert text == topic.text(0)[delivered[0] :]
    numbers = [int(p.split(b'"sequence_number":')[1].split(b",")[0])
               for p in got.split(b"\n\n") if p]  # fmt: skip
    assert numbers == sorted(numbers)
    assert numbers[0] >= cursor


async def test_an_expired_lease_is_failed_by_the_other_bus_once(
    buses: tuple[RedisBus, RedisBus], private_redis: PrivateRedis
) -> None:
    a, b = buses
    failed: list[tuple[str, str]] = []

    async def fail_a(job_id: str, seq: int) -> list[bytes]:
        failed.append(("a", job_id))
        return [b"event: failed\n\n"]

    async def fail_b(job_id: str, seq: int) -> list[bytes]:
        failed.append(("b", job_id))
        return [b"event: failed\n\n"]

    a.on_expired("run", fail_a)
    b.on_expired("run", fail_b)
    topic = mirrored(a, "run_9", 8)
    topic.publish(b"event: created\n\n")
    await a.lease("run", "run_9")
    await asyncio.sleep(1.5)
    assert failed == []  # renewed while its owner lives
    followed = await b.follow("run_9", 8)
    assert followed is not None
    await a.close()  # the owner stops renewing, as a dead one does
    await until(lambda: failed, timeout=10)
    await asyncio.wait_for(followed.topic.wait_first(), 5)
    await until(lambda: followed.topic.closed)
    await asyncio.sleep(1.0)
    assert len(failed) == 1
    assert followed.topic.text(0) == ""


async def test_readers_following_at_once_share_one_rebuilt_topic(
    buses: tuple[RedisBus, RedisBus],
) -> None:
    a, b = buses
    topic = mirrored(a, "run_2")
    topic.publish(b"event: created\n\n")
    await a.sync()
    followed = await asyncio.gather(*(b.follow("run_2", 64) for _ in range(50)))
    assert len({id(f) for f in followed}) == 1  # one topic, fed by the one read loop
    first = followed[0]
    assert first is not None
    readers = [asyncio.create_task(drain(first.topic)) for _ in range(3)]
    topic.publish_text("after")
    topic.close(b"event: done\n\n")
    assert all(got.endswith(b"event: done\n\n") for got in await asyncio.gather(*readers))


async def test_every_key_of_a_mirror_expires_and_an_ended_one_within_its_retention(
    buses: tuple[RedisBus, RedisBus],
) -> None:
    a, _ = buses
    client = a._client
    topic = mirrored(a, "run_3")
    topic.publish(b"event: created\n\n")
    for i in range(30):
        topic.publish_text(f"t{i} ", key=i % 2)
        if i % 5 == 0:
            await a.sync()
    await a.sync()
    keys = await client.keys("oxi:{run_3}:*")
    assert len(keys) == 8  # the pointer; stream, hash, controls; text and layout of 2 keys
    ttls = [await client.pttl(key) for key in keys]
    assert all(5_000 < ttl <= 3_600_000 for ttl in ttls), ttls
    topic.close(b"event: done\n\n")
    await until(lambda: not a._mirrors)
    ttls = [await client.pttl(key) for key in await client.keys("oxi:{run_3}:*")]
    assert all(0 < ttl <= 5_000 for ttl in ttls), ttls


async def test_a_flush_interval_batches_more_tokens_per_entry(private_redis: PrivateRedis) -> None:
    url = private_redis.new_database()
    counts = {}
    for interval in (0.0, 0.2):
        bus = RedisBus(url, lease_timeout=1.0, flush_interval=interval)
        await bus.start()
        try:
            job = f"run_i{int(interval * 1000)}"
            topic = mirrored(bus, job, 1024)
            for i in range(60):  # a token every 10 ms for 0.6 s
                topic.publish_text(f"t{i} ")
                await asyncio.sleep(0.01)
            topic.close(b"event: done\n\n")
            await until(functools.partial(lambda b: not b._mirrors, bus))
            gen = (await bus._client.get(f"oxi:{{{job}}}:g")).decode()
            counts[interval] = await bus._client.xlen(f"oxi:{{{job}}}:{gen}:s")
        finally:
            await bus.close()
    assert counts[0.2] <= 0.6 / 0.2 + 3  # one entry per 200 ms, and the ends
    assert counts[0.0] > 2 * counts[0.2]


async def test_a_generation_written_again_stops_its_readers_and_the_new_one_is_whole(
    buses: tuple[RedisBus, RedisBus],
) -> None:
    """After a failed flush the owner writes the job again as a new generation: readers of
    the old one end (with an error event: they re-attach) and a new reader gets it all."""
    a, b = buses
    topic = mirrored(a, "run_4")
    topic.publish(b"event: created\n\n")
    topic.publish_text("before ")
    await a.sync()
    old = await b.follow("run_4", 64)
    assert old is not None
    (mirror,) = a._mirrors
    mirror.broken = True  # as a failed flush leaves it
    topic.publish_text("after")
    await a.sync()
    await until(lambda: old.topic.closed)
    assert b"server_error" in await drain(old.topic)
    new = await b.follow("run_4", 64)
    assert new is not None
    assert new is not old
    topic.close(b"event: done\n\n")
    await asyncio.wait_for(new.topic.wait_first(), 5)
    await until(lambda: new.topic.closed)
    assert new.topic.text(0) == "before after"


async def test_what_others_write_into_redis_stops_no_loop(buses: tuple[RedisBus, RedisBus]) -> None:
    a, b = buses

    async def echo(job_id: str, args: dict[str, object]) -> dict[str, object]:
        return {"echo": job_id}

    a.handle("echo", echo)
    await a.lease("run", "run_5")
    for junk in (b"not json", b"[1, 2]", b'{"op": 3}', b'{"reply": 1, "call": "x"}'):
        await b._client.publish(f"oxi:replica:{a.replica}", junk)
    assert await b.call("run", "run_5", "echo", {}) == {"echo": "run_5"}  # a still listens
    topic = mirrored(a, "run_6")
    topic.publish(b"event: created\n\n")
    await a.sync()
    spoiled = await b.follow("run_6", 64)
    assert spoiled is not None
    gen = (await a._client.get("oxi:{run_6}:g")).decode()
    await a._client.xadd(f"oxi:{{run_6}}:{gen}:s", {b"tjunk": b"x"}, id="100-0")
    await until(lambda: spoiled.topic.closed)  # its readers re-attach
    other = mirrored(a, "run_7")
    await a.sync()
    fine = await b.follow("run_7", 64)
    assert fine is not None
    other.publish_text("still read")
    other.close(b"event: done\n\n")
    await until(lambda: fine.topic.closed)
    assert fine.topic.text(0) == "still read"  # b's read loop lived on
    await a._client.hset(f"oxi:{{run_7}}:{gen}:h", "ix", "y")
    await a._client.set("oxi:{run_8}:g", "nogen")
    await a._client.hset("oxi:{run_8}:nogen:h", "ix", "y")
    assert await b.follow("run_8", 64) is None  # keys not ours: as if there were none


async def test_a_call_to_an_owner_that_does_not_answer_is_not_taken_for_no_owner(
    buses: tuple[RedisBus, RedisBus],
) -> None:
    a, b = buses
    with pytest.raises(NotOwned):  # nobody holds it: the caller may act alone
        await b.call("run", "run_none", "cancel_run", {})
    await a._client.hset("oxi:owners", "run:run_ghost", "a-replica-that-is-gone")
    with pytest.raises(OwnerUnreachable):  # somebody holds it: retry, do not act alone
        await b.call("run", "run_ghost", "cancel_run", {})


async def test_a_refused_command_is_not_an_outage(buses: tuple[RedisBus, RedisBus]) -> None:
    a, b = buses
    await a._client.set("oxi:{run_10}:g", "g1")
    await a._client.set("oxi:{run_10}:g1:h", "a string, not a hash")
    with pytest.raises(BusDown):  # this call fails ...
        await b.follow("run_10", 64)
    assert b.healthy  # ... and only it
    topic = mirrored(a, "run_11")
    topic.publish_text("one ")
    await a.sync()
    gen = (await a._client.get("oxi:{run_11}:g")).decode()
    await a._client.xadd(f"oxi:{{run_11}}:{gen}:s", {b"x": b"y"}, id="99999-0")  # its top now
    topic.publish_text("two")  # the owner's next XADD is refused (its id is below the top)
    await a.sync()
    assert a.healthy
    topic.close(b"event: done\n\n")
    await a.sync()
    followed = await b.follow("run_11", 64)  # written again as a new generation
    assert followed is not None
    await until(lambda: followed.topic.closed)
    assert followed.topic.text(0) == "one two"


async def test_an_owner_that_stalled_past_its_lease_stops_the_job_a_wiped_lease_is_retaken(
    buses: tuple[RedisBus, RedisBus],
) -> None:
    a, b = buses
    lost: list[str] = []
    failed: list[str] = []

    async def stop(job_id: str) -> None:
        lost.append(job_id)

    async def fail(job_id: str, seq: int) -> list[bytes]:
        failed.append(job_id)
        return []

    a.on_lost("run", stop)
    b.on_expired("run", fail)
    await a.lease("run", "run_kept")
    await a.lease("run", "run_stalled")
    await a._client.zrem("oxi:leases", "run:run_kept")  # as a Redis that lost its data
    renewing = a._tasks[2]  # the lease loop: a stalled owner renews nothing
    assert renewing.get_coro().__name__ == "_lease_loop"  # type: ignore[union-attr]
    renewing.cancel()
    await until(lambda: "run_stalled" in failed, timeout=15)
    await a._renew()  # the owner wakes up
    assert lost == ["run_stalled"]
    assert "run:run_kept" in a._leases  # no tombstone: taken again, not given up
    assert await a._client.zscore("oxi:leases", "run:run_kept") is not None
