"""Server-Sent Events: frame encoding per the wire rules, and the topic-to-client pump.

Wire rules (what real clients accept): ``data:`` carries single-line JSON, no
BOM, no ``id:``/``retry:`` lines, and keep-alives are comment lines only.
"""

from __future__ import annotations

import asyncio

from oxiserve.broadcast import Topic
from oxiserve.http.messages import BodyWriter, Headers

SSE_HEADERS: Headers = (("cache-control", "no-cache"), ("x-accel-buffering", "no"))
DONE = b"data: [DONE]\n\n"
PING = b": ping\n\n"
EVENT_DONE = b"event: done\ndata: [DONE]\n\n"


def data_frame(payload: bytes) -> bytes:
    """``data: <payload>``; payload must be single-line (orjson output is)."""
    return b"data: %b\n\n" % payload


def event_frame(event: str, payload: bytes) -> bytes:
    return b"event: %b\ndata: %b\n\n" % (event.encode("ascii"), payload)


async def pump(
    topic: Topic,
    writer: BodyWriter,
    keepalive: float,
    cursor: int = 0,
    delivered: dict[int, int] | None = None,
) -> None:
    """Deliver a topic to one client until the topic ends (or the client leaves).

    Caught up, the subscriber is live: ``Topic.publish`` writes each frame
    straight to the transport.  When the client reads slowly the connection
    pauses us; frames then wait in the ring (or, if overrun, are recovered
    from the topic's text) and go out as one batch on resume.  A ``: ping``
    comment is written when the topic was silent for ``keepalive`` seconds.  A resumed
    stream starts at ``cursor``, its reader holding ``delivered`` text (``Topic.subscribe``).
    """
    subscriber = topic.subscribe(cursor, delivered)
    loop = asyncio.get_running_loop()
    ping: asyncio.TimerHandle | None = None
    last_seq = -1

    def resume() -> None:
        if not writer.closed and not topic_done():
            subscriber.attach(writer.write)

    def topic_done() -> bool:
        return topic.closed and subscriber.cursor >= topic.seq

    def tick() -> None:
        nonlocal ping, last_seq
        if topic.closed:
            return  # nothing may follow the end of the stream
        if topic.seq == last_seq and not writer.paused and not writer.closed:
            writer.write(PING)
        last_seq = topic.seq
        ping = loop.call_later(keepalive, tick)

    writer.set_flow_listener(subscriber.detach, resume)
    try:
        if keepalive > 0 and topic.seq == 0 and not topic.closed:
            writer.write(PING)  # no first token yet: open the stream now, pings follow
        if not writer.paused:
            subscriber.attach(writer.write)
        if keepalive > 0:
            last_seq = topic.seq
            ping = loop.call_later(keepalive, tick)
        await subscriber.wait_done()
    finally:
        writer.set_flow_listener(None, None)
        subscriber.close()
        if ping is not None:
            ping.cancel()
