"""OpenAI wire shapes more than one endpoint uses: usage, engine errors, text-frame templates."""

from __future__ import annotations

from collections.abc import Callable

import orjson

from oxiserve.engine.base import EngineError, Usage
from oxiserve.errors import APIError, error_for_status

_PLACEHOLDER = "\x00oxiserve\x00"  # never in real text: marks where a text frame's text goes


def usage_object(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def api_error(exc: EngineError) -> APIError:
    """An engine's failure as the API error the client sees (status, code, Retry-After)."""
    return error_for_status(
        exc.status, exc.message, code=exc.code or "engine_error", retry_after=exc.retry_after
    )


class TextTemplates:
    """Per choice, the frame split around its text: a token's frame is then
    ``prefix + orjson.dumps(text) + suffix``, with no dict built or encoded per token.

    ``frame_with(index, text)`` builds a whole text frame; it is called once per choice.
    """

    __slots__ = ("_frame_with", "_templates")

    def __init__(self, frame_with: Callable[[int, str], bytes]) -> None:
        self._frame_with = frame_with
        self._templates: dict[int, tuple[bytes, bytes]] = {}

    def get(self, index: int) -> tuple[bytes, bytes]:
        template = self._templates.get(index)
        if template is None:
            frame = self._frame_with(index, _PLACEHOLDER)
            prefix, _, suffix = frame.partition(orjson.dumps(_PLACEHOLDER))
            template = self._templates[index] = (prefix, suffix)
        return template

    def text(self, index: int, text: str) -> bytes:
        prefix, suffix = self.get(index)
        return prefix + orjson.dumps(text) + suffix
