"""Reading request bodies: typed getters that fail with a 400 naming the parameter."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from oxiserve.errors import InvalidRequest

T = TypeVar("T")
_MISSING: Any = object()
MAX_STOP_LENGTH = 1024


def require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


def _type_name(value: Any) -> str:
    return {
        bool: "boolean", int: "integer", float: "number", str: "string",
        list: "array", dict: "object", type(None): "null",
    }.get(type(value), type(value).__name__)  # fmt: skip


def _wrong(param: str, expected: str, value: Any) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid type for '{param}': expected {expected}, but got {_type_name(value)}.",
        param=param,
        code="invalid_type",
    )


def missing(param: str) -> InvalidRequest:
    return InvalidRequest(
        f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )


def get_str(body: Mapping[str, Any], name: str, default: Any = _MISSING, *, param: str = "") -> Any:
    """A string field; ``default`` _MISSING makes it required. JSON null counts as absent."""
    param = param or name
    value = body.get(name)
    if value is None:
        if default is _MISSING:
            raise missing(param)
        return default
    if not isinstance(value, str):
        raise _wrong(param, "a string", value)
    return value


def get_bool(body: Mapping[str, Any], name: str, default: bool = False, *, param: str = "") -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _wrong(param or name, "a boolean", value)
    return value


def get_int(
    body: Mapping[str, Any],
    name: str,
    default: Any = None,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    param: str = "",
) -> Any:
    param = param or name
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong(param, "an integer", value)
    _check_range(param, value, minimum, maximum)
    return value


def get_number(
    body: Mapping[str, Any],
    name: str,
    default: Any = None,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong(name, "a number", value)
    _check_range(name, value, minimum, maximum)
    return float(value)


def get_object(body: Mapping[str, Any], name: str, param: str = "") -> dict[str, Any] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _wrong(param or name, "an object", value)
    return value


def get_list(body: Mapping[str, Any], name: str) -> list[Any] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list):
        raise _wrong(name, "an array", value)
    return value


def get_stop(body: Mapping[str, Any]) -> tuple[str, ...]:
    """``stop``: a string or a list of up to 4 non-empty strings."""
    value = body.get("stop")
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise _wrong("stop", "a string or an array of strings", value)
    if len(value) > 4:
        raise InvalidRequest("'stop' may hold at most 4 sequences.", param="stop")
    if any(len(s) > MAX_STOP_LENGTH for s in value):
        raise InvalidRequest(
            f"Each 'stop' sequence may be at most {MAX_STOP_LENGTH} characters.", param="stop"
        )
    return tuple(s for s in value if s)


def get_metadata(body: Mapping[str, Any]) -> dict[str, str] | None:
    """OpenAI ``metadata``: up to 16 string pairs (keys <= 64, values <= 512 chars)."""
    value = get_object(body, "metadata")
    if value is None:
        return None
    if len(value) > 16:
        raise InvalidRequest("'metadata' may hold at most 16 pairs.", param="metadata")
    for key, item in value.items():
        if len(key) > 64 or not isinstance(item, str) or len(item) > 512:
            raise InvalidRequest(
                "'metadata' keys must be at most 64 characters and values strings of at most 512.",
                param="metadata",
            )
    return value


def _check_range(param: str, value: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and value < minimum:
        raise InvalidRequest(
            f"Invalid '{param}': {value} is less than the minimum of {minimum}.",
            param=param, code="invalid_value",
        )  # fmt: skip
    if maximum is not None and value > maximum:
        raise InvalidRequest(
            f"Invalid '{param}': {value} is greater than the maximum of {maximum}.",
            param=param, code="invalid_value",
        )  # fmt: skip
