"""Responses being generated: their events (writer), jobs and restart recovery."""

from __future__ import annotations

from oxiserve.responses.job import recover

__all__ = ["recover"]
