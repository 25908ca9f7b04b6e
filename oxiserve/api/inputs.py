"""Text inputs in OpenAI's four forms, shared by completions' ``prompt`` and embeddings' ``input``.

A value is a string, an array of strings, an array of token ids, or an array of token-id
arrays.  Each item becomes text (token ids joined with spaces: the simulator's view of
them).  Sizes are checked before any per-element work, so a 10 MB array of token ids is
refused as fast as it was parsed, not after millions of Python-level checks.
"""

from __future__ import annotations

from typing import Any

from oxiserve.api import params
from oxiserve.errors import InvalidRequest


def is_token_id(value: Any) -> bool:
    return type(value) is int and value >= 0


def input_items(body: dict[str, Any], param: str, max_items: int) -> tuple[list[Any], bool]:
    """The items of ``body[param]`` and whether the value itself was a list of items (then
    an item's place is ``param[i]``; else the one item is the value itself)."""
    raw = body.get(param)
    if raw is None:
        raise params.missing(param)
    if isinstance(raw, str):
        return [raw], False
    if not isinstance(raw, list):
        raise InvalidRequest(
            f"Invalid '{param}': expected a string, an array of strings or token-id arrays.",
            param=param,
        )
    if not raw:
        raise InvalidRequest(f"'{param}' must not be empty.", param=param)
    if is_token_id(raw[0]):
        return [raw], False  # one token-id array
    if len(raw) > max_items:
        raise InvalidRequest(f"'{param}' may hold at most {max_items} items.", param=param)
    return raw, True


def token_ids_text(item: list[Any], where: str, param: str, max_ids: int) -> str:
    """A token-id array as text, after its size check (before any per-id work)."""
    if len(item) > max_ids:
        raise InvalidRequest(
            f"Invalid '{where}': an input may hold at most {max_ids} tokens.",
            param=param, code="context_length_exceeded",
        )  # fmt: skip
    if not all(map(is_token_id, item)):
        raise InvalidRequest(
            f"Invalid '{where}': token ids must be non-negative integers.", param=param
        )
    return " ".join(map(str, item))


def item_text(item: Any, where: str, param: str, max_ids: int) -> str:
    """One item as text: a non-empty string as it is, a token-id array joined."""
    if isinstance(item, str) and item:
        return item
    if isinstance(item, list) and item:
        return token_ids_text(item, where, param, max_ids)
    raise InvalidRequest(
        f"Invalid '{where}': expected a non-empty string or token-id array.", param=param
    )
