"""Property tests for the small encoders and matchers streams are built from."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from oxiserve.api.chat import ChatChunkEncoder
from oxiserve.api.stops import StopMatcher
from oxiserve.http import sse
from oxiserve.http.writer import ChunkedWriter
from tests.conftest import read_chunked

texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@given(
    pieces=st.lists(st.text(alphabet="abcE ND\n", max_size=6), max_size=30),
    stops=st.lists(st.text(alphabet="abcE ND", min_size=1, max_size=4), min_size=1, max_size=4),
)
# Found by this property: a short stop inside a longer one that began earlier.
@example(pieces=["N", "a", "N"], stops=["a", "NaN"])
@example(pieces=["N", "a"], stops=["a", "NaN"])  # ends while "NaN" could still come
@example(pieces=["N", "a", "x"], stops=["a", "NaN"])
def test_stop_matcher_emits_exactly_the_text_before_the_first_stop(
    pieces: list[str], stops: list[str]
) -> None:
    matcher = StopMatcher(tuple(stops))
    out = "".join(matcher.feed(p) for p in pieces) + matcher.flush()
    whole = "".join(pieces)
    cuts = [whole.find(s) for s in stops if s in whole]
    expected = whole[: min(cuts)] if cuts else whole
    assert out == expected
    assert matcher.stopped == bool(cuts)


@given(text=texts)
def test_sse_data_frames_are_single_line_and_round_trip(text: str) -> None:
    encoder = ChatChunkEncoder("chatcmpl-x", 1, "m")
    frame = encoder.text(0, text)
    assert frame == encoder._frame([encoder._choice(0, {"content": text})])  # template == dict
    assert frame.startswith(b"data: ")
    assert frame.endswith(b"\n\n")
    assert b"\n" not in frame[:-2]
    assert b"\r" not in frame
    payload = orjson.loads(frame[len(b"data: ") : -2])
    assert payload["choices"][0]["delta"]["content"] == text


@given(name=st.from_regex(r"[a-z.]{1,20}", fullmatch=True), text=texts)
def test_named_event_frames(name: str, text: str) -> None:
    frame = sse.event_frame(name, orjson.dumps(text))
    head, data = frame[:-2].split(b"\n")
    assert head == b"event: " + name.encode()
    assert orjson.loads(data[len(b"data: ") :]) == text


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return False


ops = st.lists(
    st.one_of(
        st.binary(min_size=0, max_size=3000).map(lambda b: ("write", b)),
        st.just(("pause", b"")),
        st.just(("resume", b"")),
        st.just(("tick", b"")),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(operations=ops, coalesce=st.sampled_from([0.0, 0.001]))
def test_chunked_writer_delivers_every_byte_once_in_order(
    operations: list[tuple[str, bytes]], coalesce: float
) -> None:
    async def run() -> None:
        transport = _Transport()
        loop = asyncio.get_running_loop()
        writer = ChunkedWriter(cast(Any, transport), loop, coalesce, head=b"HEAD|")
        expected = bytearray()
        for op, data in operations:
            if op == "write":
                writer.write(data)
                expected += data
            elif op == "pause":
                writer.flow(paused=True)
            elif op == "resume":
                writer.flow(paused=False)
            else:
                await asyncio.sleep(0.002)  # let a gathering window end (behaviour under test)
        writer.flow(paused=False)
        writer.finish()
        stream = b"".join(transport.writes)
        assert stream.startswith(b"HEAD|")
        reader = asyncio.StreamReader()
        reader.feed_data(stream[len(b"HEAD|") :])
        reader.feed_eof()
        assert await read_chunked(reader) == bytes(expected)
        assert await reader.read() == b""  # nothing after the last chunk

    asyncio.run(run())
