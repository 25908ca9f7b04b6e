"""Which event loop ``python -m oxiserve`` runs on: the standard one, or uvloop when asked or found.

An embedding host keeps whatever loop it runs (``Server`` uses the running loop, uvloop's
included); this only decides for the CLI.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable

from oxiserve.config import LoopName

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


class LoopUnavailable(RuntimeError):
    """The loop asked for is not installed (the message says how to get it)."""


def uvloop_installed() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def resolve(name: LoopName) -> tuple[str, LoopFactory]:
    """The loop's name and factory; ``auto`` is uvloop when installed, else asyncio."""
    if name == "asyncio" or (name == "auto" and not uvloop_installed()):
        return "asyncio", asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        raise LoopUnavailable(
            "--loop uvloop needs uvloop: pip install 'oxiserve[fast]' (or pip install uvloop)"
        ) from None
    return "uvloop", uvloop.new_event_loop
