"""The broadcast channel's exceptions: each one means one thing."""

from __future__ import annotations

__all__ = ["ClosedTopic", "EndOfTopic", "WouldBlock"]


class WouldBlock(Exception):
    """``receive_nowait`` found nothing new and the topic is still open."""


class EndOfTopic(Exception):
    """The topic is closed and this subscriber has every frame (or the subscriber is closed)."""


class ClosedTopic(Exception):
    """A frame was published after ``Topic.close``."""
