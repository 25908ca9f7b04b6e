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
    return ChunkedWriter(cast(Any, transport), loop, coalesce, paused), transport


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
    await asyncio.sleep(0.02)  # behaviour under test: nothing is written while paused
    assert len(transport.writes) == 3
    writer.flow(paused=False)
    assert resumed == [4]  # the gathered frames went out before the listener ran
    writer.finish()
    assert await decode(transport.writes) == b"01234"
