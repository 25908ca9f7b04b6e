"""Ids and timestamps of stored API objects (assistants, runs, responses, ...)."""

from __future__ import annotations

import os
import time


def new_id(prefix: str, size: int = 12) -> str:
    """An OpenAI-style id: ``run_`` and ``2 * size`` random hex digits."""
    return f"{prefix}_{os.urandom(size).hex()}"


def now() -> int:
    """Unix seconds, as the API's ``created_at`` fields."""
    return int(time.time())
