"""ChunkedWriter: chunk framing, gathering a busy stream's frames, pause/resume ordering."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from oxiserve.http.writer import ChunkedWriter
from tests.conftest import read_chunked, wait_until


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing


def make(coalesce: float, paused: bool = False) -> tuple[ChunkedWriter, FakeTransport]:
    transport = FakeTransport()
    loop = asyncio.get_running_loop()
    return ChunkedWriter(cast(Any, transport), loop, coalesce, paused=paused), transport


async def decode(writes: list[bytes]) -> bytes:
    reader = asyncio.StreamReader()
    reader.feed_data(b"".join(writes) + b"0\r\n\r\n")
    return await read_chunked(reader)


async def test_without_gathering_every_frame_is_one_chunk() -> None:
    writer, transport = make(0.0)
    for i in range(5):
        writer.write(b"frame%d" % i)
    writer.write(b"")  # nothing to send: no empty chunk (that would end the body)
    assert transport.writes == [b"6\r\nframe%d\r\n" % i for i in range(5)]
    assert writer.sent == 30


async def test_busy_stream_frames_are_gathered_first_frames_are_not() -> None:
    writer, transport = make(0.01)
    frames = [b"f%03d" % i for i in range(50)]
    for frame in frames:
        writer.write(frame)
    assert len(transport.writes) == 3  # two immediate frames, then the window's first
    await wait_until(lambda: len(transport.writes) == 4)
    writer.finish()
    assert await decode(transport.writes) == b"".join(frames)


async def test_frames_slower_than_the_window_go_out_at_once_and_arm_no_timer() -> None:
    writer, transport = make(0.002)
    writer._last = -1.0  # as if written long ago: every frame comes after a quiet spell
    loop = asyncio.get_running_loop()
    for i in range(6):
        writer._last = loop.time() - 0.01  # the previous frame, 10 ms ago (a 20 ms pace)
        writer.write(b"f%d" % i)
        assert writer._timer is None  # no gathering window was opened for it
        assert len(transport.writes) == i + 1  # it went out at once
    writer.write(b"fast")  # right after the last one: now the window opens
    assert writer._timer is not None
    writer.finish()
    assert await decode(transport.writes) == b"f0f1f2f3f4f5fast"


async def test_finish_writes_what_is_gathered_in_order() -> None:
    writer, transport = make(10.0)
    for i in range(10):
        writer.write(b"%d," % i)
    writer.finish()
    assert await decode(transport.writes) == b"0,1,2,3,4,5,6,7,8,9,"
    assert len(transport.writes) == 4


async def test_large_gathered_batches_are_written_early() -> None:
    writer, transport = make(10.0)
    for _ in range(3):
        writer.write(b"x" * 100)
    for _ in range(200):
        writer.write(b"y" * 1000)
    assert max(len(w) for w in transport.writes) < 20 * 1024
    writer.finish()
    assert await decode(transport.writes) == b"x" * 300 + b"y" * 200_000


async def test_paused_writer_holds_gathered_frames_until_resume() -> None:
    writer, transport = make(0.005)
    resumed: list[int] = []
    writer.set_flow_listener(None, lambda: resumed.append(len(transport.writes)))
    for i in range(4):
        writer.write(b"%d" % i)
    writer.flow(paused=True)
    writer.write(b"4")
    # The gathering window ends while paused: its timer fires but writes nothing.
    await wait_until(lambda: writer._timer is None)
    assert len(transport.writes) == 3
    writer.flow(paused=False)
    assert resumed == [4]  # the gathered frames went out before the listener ran
    writer.finish()
    assert await decode(transport.writes) == b"01234"


async def test_head_goes_out_with_the_first_frame_and_last_chunk_with_the_last() -> None:
    transport = FakeTransport()
    loop = asyncio.get_running_loop()
    writer = ChunkedWriter(cast(Any, transport), loop, 10.0, head=b"HEAD\r\n\r\n")
    assert transport.writes == []
    for frame in (b"a", b"b", b"c", b"d"):
        writer.write(frame)
    assert transport.writes[0] == b"HEAD\r\n\r\n1\r\na\r\n"
    writer.finish()
    assert transport.writes[-1] == b"1\r\nd\r\n0\r\n\r\n"  # gathered frame + last chunk, one send


async def test_empty_stream_and_head_only_responses() -> None:
    transport = FakeTransport()
    loop = asyncio.get_running_loop()
    ChunkedWriter(cast(Any, transport), loop, 0.0, head=b"H|").finish()
    ChunkedWriter(cast(Any, transport), loop, 0.0, head=b"HEAD-ONLY|").finish(body=False)
    assert transport.writes == [b"H|0\r\n\r\n", b"HEAD-ONLY|"]


async def test_close_delimited_body_has_no_chunk_framing() -> None:
    transport = FakeTransport()
    loop = asyncio.get_running_loop()
    writer = ChunkedWriter(cast(Any, transport), loop, 0.0, head=b"H|", chunked=False)
    writer.write(b"data: 1\n\n")
    writer.write(b"data: 2\n\n")
    writer.finish()
    assert b"".join(transport.writes) == b"H|data: 1\n\ndata: 2\n\n"


async def test_a_large_write_goes_out_in_pieces_under_flow_control() -> None:
    from oxiserve.http.writer import PIECE

    writer, transport = make(0.0)
    events: list[str] = []
    writer.set_flow_listener(lambda: events.append("pause"), lambda: events.append("resume"))

    class Pausing(FakeTransport):
        def write(self, data: bytes) -> None:
            super().write(bytes(data))
            if len(self.writes) == 2:
                writer.flow(paused=True)  # the transport's buffer filled on the second piece

    transport = Pausing()
    writer._transport = cast(Any, transport)
    big = bytes(range(256)) * (PIECE // 64)  # four pieces' worth
    writer.write(big)
    writer.write(b"after")  # queued behind the big one, never ahead of it
    assert len(transport.writes) == 2
    assert all(len(w) <= PIECE for w in transport.writes)
    assert writer.paused
    assert events == ["pause"]
    writer.flow(paused=False)
    assert not writer.paused
    assert events == ["pause", "resume"]
    writer.finish()
    await writer.wait_flushed()
    assert await decode(transport.writes[:-1]) == big + b"after"
    assert transport.writes[-1] == b"0\r\n\r\n"


async def test_pieces_wait_for_the_server_wide_budget() -> None:
    from oxiserve.http.budget import WriteBudget
    from oxiserve.http.writer import PIECE

    total = [10 * PIECE]  # what every other connection holds right now
    loop = asyncio.get_running_loop()
    budget = WriteBudget(10 * PIECE, lambda: total[0], loop)
    transport = FakeTransport()
    writer = ChunkedWriter(cast(Any, transport), loop, 0.0, budget=budget, chunked=False)
    writer.write(b"x" * (3 * PIECE))
    assert transport.writes == []
    assert writer.paused
    assert budget.waiting == 1
    flushed = asyncio.ensure_future(writer.wait_flushed())
    total[0] = 0  # the others drained
    await asyncio.wait_for(flushed, 2)
    assert b"".join(bytes(w) for w in transport.writes) == b"x" * (3 * PIECE)
    assert not writer.paused


async def test_a_lost_client_releases_what_waits() -> None:
    writer, transport = make(0.0, paused=True)
    writer.write(b"y" * (200 * 1024))
    draining = asyncio.ensure_future(writer.drain())
    flushed = asyncio.ensure_future(writer.wait_flushed())
    writer.lost()
    await asyncio.wait_for(asyncio.gather(draining, flushed), 2)
    assert transport.writes == []
    assert writer.queued == 0


async def test_a_stream_gathers_again_after_a_budget_wait() -> None:
    from oxiserve.http.budget import WriteBudget
    from oxiserve.http.writer import PIECE

    loop = asyncio.get_running_loop()
    others = [10 * PIECE]
    budget = WriteBudget(10 * PIECE, lambda: others[0], loop)
    transport = FakeTransport()
    writer = ChunkedWriter(cast(Any, transport), loop, 0.001, budget=budget)
    writer.write(b"a")
    writer.write(b"b")  # the two immediate frames
    writer.write(b"c")  # opens a gathering window
    writer.write(b"x" * (2 * PIECE))  # a catch-up batch: gathered, then queued behind the budget
    writer._write_pending()  # the window's 16 KiB bound: it goes to the queue now
    assert writer.paused
    gathered_timer = writer._timer
    assert gathered_timer is not None
    await wait_until(lambda: writer._timer is None)  # the window's timer fires while blocked
    others[0] = 0
    await asyncio.wait_for(writer.wait_flushed(), 2)
    assert not writer.paused
    before = len(transport.writes)
    writer.write(b"tok1 ")
    writer.write(b"tok2 ")
    # Live frames flow again: at once, or within one gathering window (not at the very end).
    await wait_until(lambda: len(transport.writes) > before, timeout=1)
    await wait_until(lambda: b"tok2 " in b"".join(bytes(w) for w in transport.writes), timeout=1)
