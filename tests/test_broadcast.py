"""Tests for oxiserve.broadcast: unit tests, then a model-based property test."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oxiserve.broadcast import (
    ClosedTopic,
    EndOfTopic,
    Lagged,
    Subscriber,
    Topic,
    TopicStatistics,
    WouldBlock,
)
from oxiserve.broadcast.fanout import FanOut
from oxiserve.broadcast.recovery import RecoveryLog
from oxiserve.broadcast.ring import CONTROL, FrameRing
from tests.conftest import wait_all_tasks_blocked

TIMEOUT = 2.0
_T = TypeVar("_T")


def enc(key: int, text: str) -> bytes:
    return f"T{key}:{text}|".encode()


def make_topic(capacity: int = 8) -> Topic:
    return Topic(capacity, encode_text=enc)


def recorder() -> tuple[list[bytes], Callable[[bytes], None]]:
    calls: list[bytes] = []
    return calls, calls.append


async def started(coro: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
    """``coro`` in a new task, returned once the task is blocked inside it.

    The task sets an event, then runs ``coro`` on without a break until ``coro`` waits; only
    then can this task, woken by the event, resume.
    """
    began = asyncio.Event()

    async def run() -> _T:
        began.set()
        return await coro

    task = asyncio.create_task(run())
    await asyncio.wait_for(began.wait(), TIMEOUT)
    return task


# --- construction -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "actual"), [(1, 2), (2, 2), (3, 4), (5, 8), (1024, 1024), (1025, 2048)]
)
def test_capacity_rounds_up_to_power_of_two(asked: int, actual: int) -> None:
    topic = make_topic(asked)
    assert topic.capacity == actual
    sub = topic.subscribe()
    for i in range(actual):
        topic.publish_text(str(i))
    assert sub.receive_nowait() == [enc(0, str(i)) for i in range(actual)]  # all still held
    late = topic.subscribe()
    topic.publish_text("x")
    assert isinstance(late.receive_nowait(), Lagged)  # actual + 1 frames behind


@pytest.mark.parametrize("capacity", [0, -4])
def test_capacity_must_be_positive(capacity: int) -> None:
    with pytest.raises(ValueError, match="capacity"):
        Topic(capacity)


def test_a_resumed_subscriber_starts_at_its_cursor() -> None:
    topic = make_topic(4)
    topic.publish(b"C0|")
    for piece in ("a", "b", "c"):
        topic.publish_text(piece)  # frames 1..3
    resumed = topic.subscribe(2, {0: 1})  # it had frames 0 and 1: the text "a"
    assert resumed.receive_nowait() == [enc(0, "b"), enc(0, "c")]
    with pytest.raises(WouldBlock):  # at the head: nothing yet
        topic.subscribe(4).receive_nowait()
    with pytest.raises(ValueError, match="cursor"):
        topic.subscribe(5)
    with pytest.raises(ValueError, match="cursor"):
        topic.subscribe(-1)


def test_a_cursor_older_than_the_ring_gets_exactly_the_missed_text() -> None:
    topic = make_topic(2)
    topic.publish(b"C0|")
    for piece in ("ab", "cd", "ef", "gh"):
        topic.publish_text(piece)  # frames 1..4; the ring holds 3 and 4 only
    topic.publish(b"C5|")
    resumed = topic.subscribe(2, {0: 2})  # it had "ab" (frames 0 and 1)
    got = resumed.receive_nowait()
    assert isinstance(got, Lagged)
    assert got.frames == [enc(0, "cdefgh"), b"C5|"]
    assert topic.statistics().subscribers == 1


def test_subscriber_has_no_public_constructor() -> None:
    topic = make_topic()
    with pytest.raises(TypeError, match="no public constructor"):
        Subscriber(topic)
    assert topic.statistics().subscribers == 0  # nothing counted, nothing to drive below zero
    sub = topic.subscribe()
    assert isinstance(sub, Subscriber)
    sub.close()
    sub.close()
    assert topic.statistics().subscribers == 0


# --- the ring, alone ----------------------------------------------------------------------------


def test_ring_capacity_and_validation() -> None:
    assert [FrameRing(n).capacity for n in (1, 2, 3, 4, 5)] == [2, 2, 4, 4, 8]
    with pytest.raises(ValueError, match="capacity"):
        FrameRing(0)


def test_ring_wraps_around_and_holds_exactly_the_last_capacity_frames() -> None:
    ring = FrameRing(4)
    for seq in range(10):
        ring.put(seq, f"F{seq}|".encode(), key=seq % 2, end=seq)
    head = 10
    assert (ring.holds(6, head), ring.holds(5, head)) == (True, False)
    delivered: dict[int, int] = {}
    assert ring.since(6, head, delivered) == [b"F6|", b"F7|", b"F8|", b"F9|"]  # a full ring
    assert delivered == {0: 8, 1: 9}  # each key's length after its last frame read
    assert ring.since(9, head, delivered) == [b"F9|"]
    assert ring.since(7, head, {}) == [b"F7|", b"F8|", b"F9|"]  # wraps past slot 0
    assert ring.since(head, head, delivered) == []  # at the head


def test_ring_control_frames_leave_delivered_text_alone() -> None:
    ring = FrameRing(2)
    ring.put(0, b"T|", key=0, end=3)
    ring.put(1, b"C|")
    delivered = {0: 1}
    assert ring.since(0, 2, delivered) == [b"T|", b"C|"]
    assert delivered == {0: 3}
    ring.put(2, b"D|", key=CONTROL)
    assert ring.since(2, 3, delivered) == [b"D|"]
    assert delivered == {0: 3}


# --- the recovery log, alone --------------------------------------------------------------------


def make_log() -> RecoveryLog:
    log = RecoveryLog(encode_text=enc)
    # frame 0: "He" (key 0), 1: C0, 2: "x" (key 1), 3: "llo" (key 0), 4: C1, 5: "y" (key 1)
    assert log.add_text(0, "He") == 2
    log.add_control(1, b"C0|")
    assert log.add_text(1, "x") == 1
    assert log.add_text(0, "llo") == 5
    log.add_control(4, b"C1|")
    assert log.add_text(1, "y") == 2
    return log


def test_log_accumulates_text_per_key() -> None:
    log = make_log()
    assert (log.text(0), log.text(1), log.text(2)) == ("Hello", "xy", "")
    assert (log.length(0), log.length(1), log.length(2)) == (5, 2, 0)
    log.add_text(0, "!")
    assert log.text(0) == "Hello!"
    with pytest.raises(ValueError, match="key"):
        log.add_text(-1, "a")


@pytest.mark.parametrize(
    ("cursor", "delivered", "expected"),
    [
        (0, {}, [b"T0:He|", b"C0|", b"T0:llo|", b"T1:x|", b"C1|", b"T1:y|"]),
        (1, {0: 2}, [b"C0|", b"T0:llo|", b"T1:x|", b"C1|", b"T1:y|"]),
        (2, {0: 2}, [b"T0:llo|", b"T1:x|", b"C1|", b"T1:y|"]),  # C0 was read
        (4, {0: 4, 1: 1}, [b"T0:o|", b"C1|", b"T1:y|"]),  # mid-piece: only the missing "o"
        (5, {0: 5, 1: 1}, [b"T1:y|"]),
        (6, {0: 5, 1: 2}, []),
    ],
)
def test_log_recovers_exactly_the_missed_text_per_key(
    cursor: int, delivered: dict[int, int], expected: list[bytes]
) -> None:
    log = make_log()
    before = dict(delivered)
    assert log.recover(cursor, delivered) == expected
    assert delivered == before  # the reader's record is the caller's to advance


def test_log_catch_up_encoder_gets_each_missed_text_with_its_offset() -> None:
    calls: list[tuple[int, str, int]] = []

    def catch_up(key: int, text: str, start: int) -> bytes:
        calls.append((key, text, start))  # e.g. the logprobs of text[start:start + len]
        return f"L{key}@{start}:{text}|".encode()

    log = RecoveryLog(encode_text=enc, encode_catch_up=catch_up)
    log.add_text(0, "ab")
    log.add_text(1, "x")
    log.add_control(2, b"C|")
    log.add_text(0, "cd")
    assert log.recover(0, {0: 1}) == [b"L0@1:b|", b"L1@0:x|", b"C|", b"L0@2:cd|"]
    assert calls == [(0, "b", 1), (1, "x", 0), (0, "cd", 2)]


def test_log_recovery_without_an_encoder_raises_only_if_text_is_missing() -> None:
    log = RecoveryLog()
    log.add_control(0, b"C|")
    assert log.recover(0, {}) == [b"C|"]
    log.add_text(0, "a")
    with pytest.raises(RuntimeError, match="encode_text"):
        log.recover(0, {})
    assert log.recover(0, {0: 1}) == [b"C|"]


# --- the fan-out, alone -------------------------------------------------------------------------


def test_fanout_sends_to_every_member_in_attach_order() -> None:
    fanout = FanOut()
    calls: list[tuple[str, bytes]] = []
    a, b = object(), object()
    fanout.add(a, lambda data: calls.append(("a", data)))
    fanout.add(b, lambda data: calls.append(("b", data)))
    assert (len(fanout), a in fanout, object() in fanout) == (2, True, False)
    with pytest.raises(RuntimeError, match="already"):
        fanout.add(a, lambda data: None)
    fanout.send(b"1")
    fanout.remove(a)
    fanout.send(b"2")
    assert calls == [("a", b"1"), ("b", b"1"), ("b", b"2")]
    assert a not in fanout


def test_fanout_add_and_remove_during_send_take_effect_from_the_next_send() -> None:
    fanout = FanOut()
    calls: list[tuple[str, bytes]] = []
    first, second, third, late = object(), object(), object(), object()

    def record(name: str) -> Callable[[bytes], None]:
        return lambda data: calls.append((name, data))

    def first_sink(data: bytes) -> None:
        calls.append(("first", data))
        if data == b"1":
            fanout.remove(first)  # itself, as pause_writing does from inside write
            fanout.remove(third)  # one not called yet
            fanout.add(late, record("late"))

    fanout.add(first, first_sink)
    fanout.add(second, record("second"))
    fanout.add(third, record("third"))
    fanout.send(b"1")
    assert calls == [("first", b"1"), ("second", b"1"), ("third", b"1")]
    calls.clear()
    fanout.send(b"2")
    assert calls == [("second", b"2"), ("late", b"2")]


# --- receive ------------------------------------------------------------------------------------


def test_receive_returns_everything_since_cursor_as_one_batch() -> None:
    topic = make_topic()
    sub = topic.subscribe()
    topic.publish(b"C0|")
    topic.publish_text("a")
    topic.publish_text("b", frame=b"custom|")
    assert sub.receive_nowait() == [b"C0|", b"T0:a|", b"custom|"]
    assert sub.cursor == topic.seq == 3
    topic.publish_text("c")
    assert sub.receive_nowait() == [b"T0:c|"]


def test_batches_across_the_ring_wrap() -> None:
    topic = make_topic(4)
    sub = topic.subscribe()
    for text in "abc":
        topic.publish_text(text)
    assert sub.receive_nowait() == [b"T0:a|", b"T0:b|", b"T0:c|"]
    for text in "defg":  # exactly a full ring, wrapping around
        topic.publish_text(text)
    assert sub.receive_nowait() == [b"T0:d|", b"T0:e|", b"T0:f|", b"T0:g|"]


def test_would_block_then_end_of_topic() -> None:
    topic = make_topic()
    sub = topic.subscribe()
    with pytest.raises(WouldBlock):
        sub.receive_nowait()
    topic.publish_text("a")
    topic.close(b"DONE|")
    assert sub.receive_nowait() == [b"T0:a|", b"DONE|"]
    with pytest.raises(EndOfTopic):
        sub.receive_nowait()


def test_publish_after_close_raises_and_close_is_idempotent() -> None:
    topic = make_topic()
    topic.close(b"DONE|")
    topic.close(b"ignored|")
    assert topic.closed
    assert topic.seq == 1
    with pytest.raises(ClosedTopic):
        topic.publish(b"C|")
    with pytest.raises(ClosedTopic):
        topic.publish_text("a")


def test_publish_text_needs_a_frame_or_an_encoder() -> None:
    topic = Topic()
    with pytest.raises(ValueError, match="encode_text"):
        topic.publish_text("a")
    topic.publish_text("a", frame=b"a|")
    assert topic.text() == "a"
    with pytest.raises(ValueError, match="key"):
        make_topic().publish_text("a", key=-1)


def test_text_accumulates_per_key() -> None:
    topic = make_topic()
    topic.publish_text("He")
    topic.publish_text("x", key=1)
    topic.publish_text("llo")
    assert topic.text() == "Hello"
    topic.publish_text("!")
    topic.publish_text("y", key=1)
    assert (topic.text(0), topic.text(1), topic.text(7)) == ("Hello!", "xy", "")


# --- live sinks ---------------------------------------------------------------------------------


def test_attach_sends_backlog_in_one_call_then_each_frame_directly() -> None:
    topic = make_topic()
    sub = topic.subscribe()
    topic.publish(b"C0|")
    topic.publish_text("a")
    calls, sink = recorder()
    sub.attach(sink)
    assert calls == [b"C0|T0:a|"]
    assert sub.live
    topic.publish_text("b")
    topic.publish(b"C1|")
    assert calls == [b"C0|T0:a|", b"T0:b|", b"C1|"]  # delivered inside publish, no task switch
    assert sub.cursor == topic.seq == 4


def test_attach_without_backlog_makes_no_call() -> None:
    topic = make_topic()
    sub = topic.subscribe()
    calls, sink = recorder()
    sub.attach(sink)
    assert calls == []
    topic.publish_text("a")
    assert calls == [b"T0:a|"]


def test_frames_are_encoded_once_for_any_number_of_subscribers() -> None:
    encoded: list[str] = []

    def counting(key: int, text: str) -> bytes:
        encoded.append(text)
        return enc(key, text)

    topic = Topic(8, encode_text=counting)
    live = [topic.subscribe() for _ in range(3)]
    ring = [topic.subscribe() for _ in range(2)]
    calls, sink = recorder()
    for sub in live:
        sub.attach(sink)
    topic.publish_text("a")
    assert encoded == ["a"]
    assert calls == [b"T0:a|"] * 3
    assert all(sub.receive_nowait() == [b"T0:a|"] for sub in ring)


def test_detach_then_attach_catches_up() -> None:
    topic = make_topic()
    sub = topic.subscribe()
    calls, sink = recorder()
    sub.attach(sink)
    topic.publish_text("a")
    sub.detach()
    sub.detach()  # idempotent
    assert not sub.live
    topic.publish_text("b")
    topic.publish(b"C|")
    assert calls == [b"T0:a|"]
    sub.attach(sink)
    assert calls == [b"T0:a|", b"T0:b|C|"]
    topic.publish_text("c")
    assert calls[-1] == b"T0:c|"


def test_detach_then_overrun_recovers_on_attach() -> None:
    topic = make_topic(2)
    sub = topic.subscribe()
    calls, sink = recorder()
    sub.attach(sink)
    topic.publish_text("a")
    sub.detach()
    for text in "bcd":
        topic.publish_text(text)
    sub.attach(sink)
    assert calls == [b"T0:a|", b"T0:bcd|"]
    assert topic.statistics().lagged == 1


def test_sink_may_detach_its_subscriber_mid_publish() -> None:
    # asyncio calls pause_writing from inside transport.write, i.e. inside our sink.
    topic = make_topic()
    paused = topic.subscribe()
    other = topic.subscribe()
    calls: list[bytes] = []

    def pausing_sink(data: bytes) -> None:
        calls.append(data)
        paused.detach()

    other_calls, other_sink = recorder()
    paused.attach(pausing_sink)
    other.attach(other_sink)
    topic.publish_text("a")
    topic.publish_text("b")
    assert calls == [b"T0:a|"]
    assert other_calls == [b"T0:a|", b"T0:b|"]  # the detach did not disturb the fan-out
    assert not paused.live
    assert paused.receive_nowait() == [b"T0:b|"]


def test_sink_may_attach_another_subscriber_mid_publish_without_a_duplicate() -> None:
    topic = make_topic()
    first, joiner = topic.subscribe(), topic.subscribe()
    joined, joiner_sink = recorder()

    def joining_sink(data: bytes) -> None:
        if not joiner.live:
            joiner.attach(joiner_sink)

    first.attach(joining_sink)
    topic.publish_text("a")
    topic.publish_text("b")
    assert joined == [b"T0:a|", b"T0:b|"]  # "a" as its backlog, not again from the fan-out


def test_sink_pausing_during_backlog_write_leaves_subscriber_detached_at_head() -> None:
    topic = make_topic()
    sub = topic.subscribe()
    topic.publish_text("a")
    calls: list[bytes] = []

    def pausing_sink(data: bytes) -> None:
        calls.append(data)
        sub.detach()

    sub.attach(pausing_sink)
    assert calls == [b"T0:a|"]
    assert not sub.live
    assert sub.cursor == 1
    topic.publish_text("b")
    resumed, sink = recorder()
    sub.attach(sink)  # resume_writing: no "already attached" error
    assert resumed == [b"T0:b|"]


def test_misuse_while_live_raises() -> None:
    topic = make_topic()
    sub = topic.subscribe()
    sub.attach(lambda data: None)
    with pytest.raises(RuntimeError, match="detach"):
        sub.receive_nowait()
    with pytest.raises(RuntimeError, match="already attached"):
        sub.attach(lambda data: None)


def test_close_frame_reaches_live_and_detached_subscribers() -> None:
    topic = make_topic()
    live, detached = topic.subscribe(), topic.subscribe()
    calls, sink = recorder()
    live.attach(sink)
    topic.close(b"DONE|")
    assert calls == [b"DONE|"]
    assert detached.receive_nowait() == [b"DONE|"]


# --- waiting ------------------------------------------------------------------------------------


async def test_receive_waits_for_the_next_publish() -> None:
    topic = make_topic()
    sub = topic.subscribe()
    task = await started(sub.receive())
    assert not task.done()
    topic.publish_text("a")
    topic.publish_text("b")
    assert await asyncio.wait_for(task, TIMEOUT) == [b"T0:a|", b"T0:b|"]


async def test_receive_raises_end_of_topic_when_closed_while_waiting() -> None:
    topic = make_topic()
    sub = topic.subscribe()
    task = await started(sub.receive())
    topic.close()
    with pytest.raises(EndOfTopic):
        await asyncio.wait_for(task, TIMEOUT)


async def test_cancelled_receive_leaves_no_waiter_behind() -> None:
    topic = make_topic()
    sub = topic.subscribe()
    task = await started(sub.receive())
    assert len(topic._waiters) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, TIMEOUT)
    assert topic._waiters == []
    topic.publish_text("a")
    assert await asyncio.wait_for(sub.receive(), TIMEOUT) == [b"T0:a|"]


@pytest.mark.parametrize("close", [False, True])
async def test_wait_first(close: bool) -> None:
    topic = make_topic()
    task = await started(topic.wait_first())
    assert not task.done()
    if close:
        topic.close()
    else:
        topic.publish(b"C|")
    await asyncio.wait_for(task, TIMEOUT)
    await asyncio.wait_for(topic.wait_first(), TIMEOUT)  # already satisfied: returns at once


async def test_wait_done_live_returns_at_close() -> None:
    topic = make_topic()
    sub = topic.subscribe()
    sub.attach(lambda data: None)
    task = await started(sub.wait_done())
    topic.publish_text("a")
    await wait_all_tasks_blocked()  # had the publish woken it, it would have run by now
    assert not task.done()
    assert topic._waiters == []  # a live stream's handler is not woken per publish
    topic.close(b"DONE|")
    await asyncio.wait_for(task, TIMEOUT)


async def test_wait_done_detached_waits_for_catch_up() -> None:
    topic = make_topic()
    sub = topic.subscribe()
    task = asyncio.create_task(sub.wait_done())
    topic.publish_text("a")
    topic.close(b"DONE|")
    await wait_all_tasks_blocked()
    assert not task.done()  # closed, but this subscriber has not read everything yet
    calls, sink = recorder()
    sub.attach(sink)
    await asyncio.wait_for(task, TIMEOUT)
    assert calls == [b"T0:a|DONE|"]
    other = topic.subscribe()
    waiting = await started(other.wait_done())
    assert not waiting.done()
    assert other.receive_nowait() == [b"T0:a|", b"DONE|"]
    await asyncio.wait_for(waiting, TIMEOUT)


async def test_closing_a_subscriber_ends_its_waits() -> None:
    topic = make_topic()
    sub = topic.subscribe()
    receiving = await started(sub.receive())
    done = await started(sub.wait_done())
    sub.close()
    with pytest.raises(EndOfTopic):
        await asyncio.wait_for(receiving, TIMEOUT)
    await asyncio.wait_for(done, TIMEOUT)


# --- subscribers and statistics -----------------------------------------------------------------


def test_subscriber_close() -> None:
    topic = make_topic()
    sub, other = topic.subscribe(), topic.subscribe()
    calls, sink = recorder()
    sub.attach(sink)
    assert topic.statistics().subscribers == 2
    sub.close()
    sub.close()
    assert topic.statistics().subscribers == 1
    topic.publish_text("a")
    assert calls == []
    sub.attach(sink)  # ignored: flow-control callbacks may race with close
    assert not sub.live
    with pytest.raises(EndOfTopic):
        sub.receive_nowait()
    assert other.receive_nowait() == [b"T0:a|"]


def test_statistics() -> None:
    topic = make_topic(2)
    assert topic.statistics() == TopicStatistics(published=0, subscribers=0, lagged=0, max_lag=0)
    first, second = topic.subscribe(), topic.subscribe()
    for text in "abc":
        topic.publish_text(text)
    assert isinstance(first.receive_nowait(), Lagged)
    for text in "defgh":
        topic.publish_text(text)
    assert isinstance(first.receive_nowait(), Lagged)
    assert isinstance(second.receive_nowait(), Lagged)
    assert topic.statistics() == TopicStatistics(published=8, subscribers=2, lagged=3, max_lag=8)


# --- lag recovery -------------------------------------------------------------------------------


def test_recovery_puts_missing_text_before_each_missed_control_frame() -> None:
    topic = make_topic(2)
    sub = topic.subscribe()
    topic.publish_text("a")
    assert sub.receive_nowait() == [b"T0:a|"]
    topic.publish_text("b")
    topic.publish(b"C0|")
    topic.publish_text("c")
    topic.publish_text("x", key=1)
    topic.publish_text("d")
    topic.publish(b"C1|")
    topic.publish_text("y", key=1)
    topic.publish_text("e")
    result = sub.receive_nowait()
    assert result == Lagged(
        missed=8,
        frames=[b"T0:b|", b"C0|", b"T0:cd|", b"T1:x|", b"C1|", b"T0:e|", b"T1:y|"],
    )
    assert sub.cursor == topic.seq
    topic.publish_text("f")
    assert sub.receive_nowait() == [b"T0:f|"]


def test_recovery_after_detach_starts_from_what_the_sink_got() -> None:
    topic = make_topic(2)
    sub = topic.subscribe()
    calls, sink = recorder()
    topic.publish(b"C0|")
    sub.attach(sink)
    topic.publish_text("Hel")
    sub.detach()
    for text in ["lo", " wor", "ld"]:
        topic.publish_text(text)
    topic.close(b"DONE|")
    assert sub.receive_nowait() == Lagged(missed=4, frames=[b"T0:lo world|", b"DONE|"])
    assert calls == [b"C0|", b"T0:Hel|"]


def test_late_subscriber_gets_a_snapshot_counted_as_a_lag() -> None:
    topic = make_topic(2)
    topic.publish(b"created|")
    for text in "abc":
        topic.publish_text(text)
    topic.publish(b"step|")
    topic.publish_text("d")
    late = topic.subscribe()
    calls, sink = recorder()
    late.attach(sink)
    assert calls == [b"created|T0:abc|step|T0:d|"]
    assert topic.statistics().lagged == 1
    assert topic.statistics().max_lag == 6


def test_second_lag_sends_only_text_missed_since_the_first() -> None:
    topic = make_topic(2)
    sub = topic.subscribe()
    for key, text in [(1, "x"), (0, "a"), (0, "b")]:
        topic.publish_text(text, key)
    assert sub.receive_nowait() == Lagged(missed=3, frames=[b"T1:x|", b"T0:ab|"])
    for text in "cde":  # key 1 is silent now: its delivered text must not be re-sent
        topic.publish_text(text)
    assert sub.receive_nowait() == Lagged(missed=3, frames=[b"T0:cde|"])


def test_recovery_uses_the_catch_up_encoder_for_logprob_frames() -> None:
    calls: list[tuple[int, str, int]] = []

    def catch_up(key: int, text: str, start: int) -> bytes:
        calls.append((key, text, start))
        return f"L{key}@{start}:{text}|".encode()

    topic = Topic(2, encode_text=enc, encode_catch_up=catch_up)
    sub = topic.subscribe()
    topic.publish_text("ab", frame=b"P0:ab|")  # a frame with logprobs: not encode_text's
    assert sub.receive_nowait() == [b"P0:ab|"]
    topic.publish_text("c", frame=b"P0:c|")
    topic.publish(b"C0|")
    topic.publish_text("x", key=1, frame=b"P1:x|")
    topic.publish_text("de", frame=b"P0:de|")
    assert sub.receive_nowait() == Lagged(
        missed=4, frames=[b"L0@2:c|", b"C0|", b"L0@3:de|", b"L1@0:x|"]
    )
    assert calls == [(0, "c", 2), (0, "de", 3), (1, "x", 0)]
    late = topic.subscribe()
    late_calls, sink = recorder()
    late.attach(sink)  # a late joiner's snapshot goes through the same encoder
    assert late_calls == [b"L0@0:abc|C0|L0@3:de|L1@0:x|"]


def test_recovery_without_encoder_raises_and_keeps_the_cursor() -> None:
    topic = Topic(2)
    sub = topic.subscribe()
    for text in "abc":
        topic.publish_text(text, frame=text.encode())
    with pytest.raises(RuntimeError, match="encode_text"):
        sub.receive_nowait()
    assert sub.cursor == 0
    assert topic.statistics().lagged == 0
    controls_only = Topic(2)
    late = controls_only.subscribe()
    for frame in [b"C0|", b"C1|", b"C2|"]:
        controls_only.publish(frame)
    assert late.receive_nowait() == Lagged(missed=3, frames=[b"C0|", b"C1|", b"C2|"])


# --- property test: a random interleaving against an independent model --------------------------

KEYS = 3
MAX_SUBS = 4


@dataclass
class SubModel:
    sub: Subscriber
    live: bool = False
    cursor: int = 0  # meaningful while detached
    chunks: list[bytes] = field(default_factory=list)
    pause_after: int | None = None  # the sink detaches its subscriber on call number n (0-based)
    paused_in_sink: bool = False


@dataclass
class Model:
    topic: Topic
    capacity: int
    published: list[bytes] = field(default_factory=list)
    texts: list[str] = field(default_factory=lambda: [""] * KEYS)
    control_snapshots: list[list[str]] = field(default_factory=list)
    subs: list[SubModel] = field(default_factory=list)
    lag_events: int = 0
    max_lag: int = 0

    def expect_take(self, m: SubModel, result: list[bytes] | Lagged) -> bytes:
        """Check a ring read against the model; return the bytes it delivers."""
        head = len(self.published)
        if head - m.cursor > self.capacity:
            assert isinstance(result, Lagged)
            assert result.missed == head - m.cursor
            self.lag_events += 1
            self.max_lag = max(self.max_lag, result.missed)
            data = b"".join(result.frames)
        else:
            assert result == self.published[m.cursor : head]
            data = b"".join(result)
        m.cursor = head
        return data

    def sink_for(self, m: SubModel) -> Callable[[bytes], None]:
        def sink(data: bytes) -> None:
            m.chunks.append(data)
            if m.pause_after is not None:
                if m.pause_after == 0:
                    m.pause_after = None
                    m.paused_in_sink = True
                    m.sub.detach()
                else:
                    m.pause_after -= 1

        return sink

    def after_sink_calls(self) -> None:
        for m in self.subs:
            if m.paused_in_sink:
                m.paused_in_sink, m.live, m.cursor = False, False, len(self.published)

    def publish(self, frame: bytes, key: int | None, text: str, explicit: bool) -> None:
        live = [m for m in self.subs if m.live]
        before = [len(m.chunks) for m in live]
        self.published.append(frame)
        if key is None:
            self.control_snapshots.append(list(self.texts))
            self.topic.publish(frame)
        else:
            self.texts[key] += text
            self.topic.publish_text(text, key, frame if explicit else None)
        for m, n in zip(live, before, strict=True):
            assert m.chunks[n:] == [frame]
        self.after_sink_calls()

    def receive(self, m: SubModel) -> None:
        if m.live:
            with pytest.raises(RuntimeError):
                m.sub.receive_nowait()
        elif m.cursor == len(self.published):
            with pytest.raises(EndOfTopic if self.topic.closed else WouldBlock):
                m.sub.receive_nowait()
        else:
            m.chunks.append(self.expect_take(m, m.sub.receive_nowait()))

    def attach(self, m: SubModel, pause_after: int | None) -> None:
        if m.live:
            return
        lagged = len(self.published) - m.cursor > self.capacity
        behind = m.cursor < len(self.published)
        n = len(m.chunks)
        m.pause_after = pause_after
        m.sub.attach(self.sink_for(m))
        m.live = True
        if behind:
            data = m.chunks[n]
            if not lagged:
                assert data == b"".join(self.published[m.cursor :])
            else:
                self.lag_events += 1
                self.max_lag = max(self.max_lag, len(self.published) - m.cursor)
            m.cursor = len(self.published)
        else:
            assert len(m.chunks) == n
        self.after_sink_calls()

    def check(self) -> None:
        head = len(self.published)
        stats = self.topic.statistics()
        assert stats == TopicStatistics(head, len(self.subs), self.lag_events, self.max_lag)
        for m in self.subs:
            assert m.sub.live == m.live
            assert m.sub.cursor == (head if m.live else m.cursor)


def parse(data: bytes) -> tuple[list[str], list[int], list[list[str]]]:
    """Reassemble a subscriber's byte stream: text per key, control order, text at each control."""
    texts = [""] * KEYS
    controls: list[int] = []
    snapshots: list[list[str]] = []
    tokens = data.decode().split("|")
    assert tokens[-1] == ""
    for token in tokens[:-1]:
        if token.startswith("T"):
            key, _, text = token[1:].partition(":")
            texts[int(key)] += text
        else:
            controls.append(int(token[1:]))
            snapshots.append(list(texts))
    return texts, controls, snapshots


ops = st.one_of(
    st.tuples(st.just("text"), st.integers(0, KEYS - 1), st.text("ab", max_size=3), st.booleans()),
    st.tuples(st.just("burst"), st.integers(0, KEYS - 1), st.integers(1, 20)),  # overrun rings
    st.tuples(st.just("control")),
    st.tuples(st.just("subscribe")),
    st.tuples(st.just("receive"), st.integers(0, MAX_SUBS - 1)),
    st.tuples(st.just("attach"), st.integers(0, MAX_SUBS - 1), st.none() | st.integers(0, 3)),
    st.tuples(st.just("detach"), st.integers(0, MAX_SUBS - 1)),
)


@settings(max_examples=300, deadline=None)
@given(
    capacity=st.integers(2, 16),
    steps=st.lists(ops, max_size=60),
    final_control=st.booleans(),
)
def test_random_interleavings_deliver_every_frame_once_in_order(
    capacity: int, steps: list[tuple[object, ...]], final_control: bool
) -> None:
    topic = make_topic(capacity)
    model = Model(topic, capacity=1 << (capacity - 1).bit_length())
    model.subs.append(SubModel(topic.subscribe()))
    for step in steps:
        match step:
            case ("text", int(key), str(text), bool(explicit)):
                model.publish(enc(key, text), key, text, explicit)
            case ("burst", int(key), int(count)):
                for n in range(count):
                    model.publish(enc(key, "ab"[n % 2]), key, "ab"[n % 2], False)
            case ("control",):
                model.publish(f"C{len(model.control_snapshots)}|".encode(), None, "", False)
            case ("subscribe",) if len(model.subs) < MAX_SUBS:
                model.subs.append(SubModel(topic.subscribe()))
            case ("receive", int(i)):
                model.receive(model.subs[i % len(model.subs)])
            case ("attach", int(i), pause_after):
                assert pause_after is None or isinstance(pause_after, int)
                model.attach(model.subs[i % len(model.subs)], pause_after)
            case ("detach", int(i)):
                m = model.subs[i % len(model.subs)]
                m.sub.detach()
                if m.live:
                    m.live, m.cursor = False, len(model.published)
        model.check()

    if final_control:
        model.control_snapshots.append(list(model.texts))
        model.published.append(f"C{len(model.control_snapshots) - 1}|".encode())
        live = [m for m in model.subs if m.live]
        topic.close(model.published[-1])
        for m in live:
            assert m.chunks[-1] == model.published[-1]
        model.after_sink_calls()
    else:
        topic.close()
    for m in model.subs:
        while not m.live and m.cursor < len(model.published):
            model.receive(m)
        model.receive(m)  # EndOfTopic (or RuntimeError while live)
    model.check()

    for m in model.subs:
        texts, controls, snapshots = parse(b"".join(m.chunks))
        assert texts == model.texts
        assert controls == list(range(len(model.control_snapshots)))
        assert snapshots == model.control_snapshots
