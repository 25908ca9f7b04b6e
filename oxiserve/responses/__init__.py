"""Responses being generated: their events (writer), jobs and restart recovery."""

from __future__ import annotations

from oxiserve.responses.job import lost, recover, unfinished

__all__ = ["lost", "recover", "unfinished"]
