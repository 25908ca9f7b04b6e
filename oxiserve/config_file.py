"""Settings from a TOML file (``--config oxiserve.toml``), checked against Config's fields.

Keys are the long option names without the dashes (``model-name = "x"``, ``sim-itl-ms = 20``;
``model_name`` works too).  An unknown key or a value of the wrong type is an error that names
the key, so a typo never passes for a default.  The precedence (command line, then environment,
then this file, then the defaults) is applied by ``Config.from_env(defaults=...)``.

    values = read_config_file("oxiserve.toml")   # {"model_name": "x", "sim_itl_ms": 20.0}
    config = Config.from_env(defaults=values)
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from pathlib import Path
from typing import Any

from oxiserve.config import Config, field_type

_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


class ConfigFileError(ValueError):
    """The file cannot be read, is not TOML, or has a setting that is not one."""


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The settings in ``path`` as Config field values."""
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigFileError(f"cannot read the config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path} is not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = _name(path, key)
        if name in values:  # model-name and model_name both: which one was meant?
            raise ConfigFileError(f"{path}: {key!r} is set twice (with dashes and underscores)")
        values[name] = _value(path, key, value)
    return values


def _name(path: str | Path, key: str) -> str:
    name = key.replace("-", "_")
    if name not in _FIELDS:
        options = [n.replace("_", "-") for n in _FIELDS]
        near = difflib.get_close_matches(key.replace("_", "-"), options, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigFileError(f"{path}: {key!r} is not a setting{hint}")
    return name


def _value(path: str | Path, key: str, value: Any) -> Any:
    f = _FIELDS[key.replace("-", "_")]
    kind = field_type(f)
    ok: bool
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind is tuple:
        value = [value] if isinstance(value, str) else value
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        wanted = {bool: "true or false", int: "an integer", float: "a number",
                  tuple: "a list of strings"}.get(kind, "a string")  # fmt: skip
        raise ConfigFileError(f"{path}: {key!r} must be {wanted}, not {value!r}")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigFileError(f"{path}: {key!r} must be one of {', '.join(choices)}")
    return value
