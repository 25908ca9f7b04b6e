"""One broadcast topic per stream: a ring of pre-encoded frames, fanned out to sinks and cursors.

A producer publishes each frame once, as ``bytes`` (an SSE frame); any number of subscribers read
it.  Caught-up subscribers are *live*: ``publish`` calls their sink (a ``transport.write``)
directly, with no task switch.  A subscriber paused by flow control, or joining late, reads from
the ring by cursor, one batch per wake-up.  If the ring overran its cursor it gets ``Lagged``:
recovery frames carrying exactly the text it missed, around every control frame it missed, in
order.  Nothing is lost, nothing is sent twice.

    topic = Topic(capacity=256, encode_text=lambda key, text: encode_delta(key, text))
    sub = topic.subscribe()                # created before generation: cursor 0, no race
    sub.attach(transport.write)            # pause_writing: detach(); resume_writing: attach()
    topic.publish(role_chunk)              # control frame: kept for recovery, never lost
    topic.publish_text("Hel")              # text frame for choice 0, encoded once
    topic.close(b"data: [DONE]\\n\\n")
    await sub.wait_done()

Sinks are called from inside ``publish``.  They must not raise (asyncio's ``transport.write``
does not); they may call ``detach``/``attach``/``close`` on any subscriber, as ``pause_writing``
does.  Every control frame is kept for the topic's lifetime (with a snapshot of the per-key
text lengths), so publish a handful per stream, not one per token: tokens go to ``publish_text``.

The parts, each usable and tested alone: ``ring.FrameRing`` (the frames, by sequence number),
``recovery.RecoveryLog`` (text per key and control frames, for lossless recovery), ``fanout.FanOut``
(the live sinks); ``topic.Topic`` composes them, ``subscriber.Subscriber`` is its endpoint.
"""

from oxiserve.broadcast.errors import ClosedTopic, EndOfTopic, WouldBlock
from oxiserve.broadcast.fanout import Sink
from oxiserve.broadcast.recovery import CatchUpEncoder, Lagged, TextEncoder
from oxiserve.broadcast.subscriber import Subscriber
from oxiserve.broadcast.topic import Topic, TopicStatistics

__all__ = [
    "CatchUpEncoder",
    "ClosedTopic",
    "EndOfTopic",
    "Lagged",
    "Sink",
    "Subscriber",
    "TextEncoder",
    "Topic",
    "TopicStatistics",
    "WouldBlock",
]
