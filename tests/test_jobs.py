"""The job supervisor: owned tasks, attached vs detached jobs, lookup, retention, shutdown."""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest

from oxiserve.broadcast import Topic
from oxiserve.jobs import JobSupervisor, Policy, ShuttingDown
from tests.conftest import RawClient, running, wait_until

TERMINAL = b"event: error\ndata: {}\n\n"


async def frames(topic: Topic, gate: asyncio.Event, count: int, done: bytes = b"end") -> None:
    """A job: ``count`` frames, each once ``gate`` is set (then it is cleared)."""
    for i in range(count):
        await gate.wait()
        gate.clear()
        topic.publish(b"frame %d;" % i)
    topic.close(done)


async def read_all(topic: Topic) -> bytes:
    sub = topic.subscribe()
    got = []
    try:
        while True:
            batch = await sub.receive()
            got.extend(batch if isinstance(batch, list) else batch.frames)
    except Exception:  # EndOfTopic
        pass
    finally:
        sub.close()
    return b"".join(got)


async def test_an_attached_job_stops_when_its_last_subscriber_leaves() -> None:
    jobs = JobSupervisor()
    topic, gate = Topic(16), asyncio.Event()
    job = jobs.start(frames(topic, gate, 100), topic)
    first, second = topic.subscribe(), topic.subscribe()
    first.close()
    job.release()
    assert not job.done  # one subscriber is still there
    second.close()
    job.release()
    await wait_until(lambda: job.done)
    assert job.task is not None
    assert job.task.cancelled()
    assert topic.closed  # the supervisor ended its topic
    assert jobs.running == 0
    assert jobs.get(job.id) is None  # attached jobs are not findable


async def test_a_detached_job_runs_alone_and_can_be_joined_late() -> None:
    jobs = JobSupervisor(retention=60)
    topic, gate = Topic(16), asyncio.Event()
    job = jobs.start(frames(topic, gate, 3), topic, policy=Policy.DETACHED, job_id="run_1")
    sub = topic.subscribe()
    sub.close()
    job.release()  # nobody listens: a detached job does not care
    gate.set()
    await wait_until(lambda: topic.seq == 1)
    found = jobs.get("run_1")
    assert found is job
    late = asyncio.ensure_future(read_all(found.topic))  # another connection: snapshot, live
    await wait_until(lambda: topic.statistics().subscribers == 1)
    for seq in (2, 3):
        gate.set()
        await wait_until(lambda seq=seq: topic.seq >= seq)  # type: ignore[misc]
    assert await asyncio.wait_for(late, 2) == b"frame 0;frame 1;frame 2;end"
    await wait_until(lambda: job.done)
    assert jobs.get("run_1") is job  # ended, still within its retention


async def test_an_ended_detached_job_is_forgotten_after_its_retention() -> None:
    now = [100.0]
    jobs = JobSupervisor(retention=30, clock=lambda: now[0])
    topic = Topic(4)

    async def quick() -> None:
        topic.close(b"end")

    job = jobs.start(quick(), topic, policy=Policy.DETACHED)
    await wait_until(lambda: job.done)
    now[0] += 29.0
    assert jobs.get(job.id) is job
    now[0] += 2.0
    assert jobs.get(job.id) is None


async def test_a_job_may_keep_a_retention_of_its_own() -> None:
    now = [100.0]
    jobs = JobSupervisor(retention=30, clock=lambda: now[0])
    gate = asyncio.Event()

    async def held(topic: Topic) -> None:
        await gate.wait()
        topic.close(b"end")

    first, second = Topic(4), Topic(4)
    brief = jobs.start(held(first), first, policy=Policy.DETACHED, retention=0.0)
    usual = jobs.start(held(second), second, policy=Policy.DETACHED)
    assert jobs.get(brief.id) is brief  # running: found whatever its retention
    gate.set()
    await wait_until(lambda: brief.done and usual.done)
    assert jobs.get(brief.id) is None  # ended with retention 0: gone at once
    assert jobs.get(usual.id) is usual
    now[0] += 31.0
    assert jobs.get(usual.id) is None


async def test_at_most_max_retained_ended_jobs_are_kept_the_oldest_go_first() -> None:
    jobs = JobSupervisor(retention=60, max_retained=2)

    async def quick(topic: Topic) -> None:
        topic.close(b"end")

    ended = []
    for _ in range(3):
        topic = Topic(4)
        job = jobs.start(quick(topic), topic, policy=Policy.DETACHED)
        await wait_until(lambda job=job: job.done)  # type: ignore[misc]
        ended.append(job)
    assert [jobs.get(job.id) for job in ended] == [None, ended[1], ended[2]]


async def test_a_failing_job_is_logged_once_and_ends_nothing_else(
    caplog: pytest.LogCaptureFixture,
) -> None:
    jobs = JobSupervisor()
    bad_topic, good_topic, gate = Topic(4), Topic(4), asyncio.Event()

    async def broken() -> None:
        raise RuntimeError("engine exploded")

    bad = jobs.start(broken(), bad_topic, terminal=TERMINAL)
    good = jobs.start(frames(good_topic, gate, 1), good_topic)
    with caplog.at_level(logging.ERROR, logger="oxiserve.jobs"):
        await wait_until(lambda: bad_topic.closed)  # the supervisor's done callback ran
    assert [r.getMessage() for r in caplog.records].count(f"job {bad.id} failed") == 1
    assert bad_topic.closed  # with its terminal frame: a reader is not left waiting
    assert b"".join(bad_topic.subscribe().receive_nowait()) == TERMINAL  # type: ignore[arg-type]
    gate.set()
    await wait_until(lambda: good.done)
    assert good.task is not None
    assert not good.task.cancelled()


async def test_shutdown_waits_then_cancels_and_cancelled_jobs_end_with_their_terminal() -> None:
    jobs = JobSupervisor()
    quick_topic, slow_topic = Topic(4), Topic(4)
    quick_gate, slow_gate = asyncio.Event(), asyncio.Event()
    quick = jobs.start(frames(quick_topic, quick_gate, 1), quick_topic)
    slow = jobs.start(
        frames(slow_topic, slow_gate, 1), slow_topic, policy=Policy.DETACHED, terminal=TERMINAL
    )
    listener = asyncio.ensure_future(read_all(slow_topic))
    shutting = asyncio.ensure_future(jobs.shutdown(timeout=0.3))
    quick_gate.set()  # this one finishes within the timeout: it is not cancelled
    await asyncio.wait_for(shutting, 3)
    assert quick.task is not None
    assert not quick.task.cancelled()
    assert slow.task is not None
    assert slow.task.cancelled()
    assert await asyncio.wait_for(listener, 2) == TERMINAL  # never silence
    with pytest.raises(ShuttingDown):
        jobs.start(frames(Topic(4), asyncio.Event(), 1), Topic(4))


async def test_server_shutdown_ends_a_stream_with_an_error_event_not_silence() -> None:
    async with running(sim_itl_ms=50, shutdown_timeout=0.3) as server:
        client = await RawClient.connect(server)
        body = orjson.dumps(
            {"model": "oxiserve-sim", "messages": [{"role": "user", "content": "hi"}],
             "stream": True, "max_tokens": 1000}
        )  # fmt: skip
        await client.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        await client.reader.readuntil(b"data: {")  # the stream is under way
        assert server.state is not None
        assert server.state.jobs.running == 1
        await server.stop(timeout=0.3)
        rest = await client.read_all()
        await client.close()
    last_frame, _, after = rest[rest.rindex(b"data: {") :].partition(b"\n\n")
    assert orjson.loads(last_frame[len(b"data: ") :])["error"]["code"] == "shutting_down"
    assert after == b"\r\n0\r\n\r\n"  # then the chunked body ended properly
