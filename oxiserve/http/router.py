"""Method + path routing with ``{param}`` segments.

Matching returns a kind, as starlette does, so 404 and 405-with-Allow fall out::

    router = Router()
    router.add("GET", "/v1/models/{model}", get_model)
    router.match("GET", "/v1/models/m1")   # Match(endpoint=..., params={"model": "m1"})
    router.match("POST", "/v1/models/m1")          # MethodMismatch(allow=("GET", "HEAD"))
    router.match("GET", "/nope")                   # None
"""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass, field
from urllib.parse import unquote

from oxiserve.http.messages import AsyncHandler, SyncHandler

AnyHandler = SyncHandler | AsyncHandler


@dataclass(frozen=True, slots=True)
class Endpoint:
    handler: AnyHandler
    is_async: bool


@dataclass(frozen=True, slots=True)
class Match:
    endpoint: Endpoint
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class MethodMismatch:
    allow: tuple[str, ...]


@dataclass(slots=True)
class _Pattern:
    parts: tuple[str, ...]  # literal segment, or "{name}"
    methods: dict[str, Endpoint] = field(default_factory=dict)

    def bind(self, segments: list[str]) -> dict[str, str] | None:
        if len(segments) != len(self.parts):
            return None
        params: dict[str, str] = {}
        for part, segment in zip(self.parts, segments, strict=True):
            if part.startswith("{"):
                if not segment:
                    return None
                params[part[1:-1]] = unquote(segment)
            elif part != segment:
                return None
        return params


class Router:
    """Routes requests to handlers; static paths are a dict lookup."""

    def __init__(self) -> None:
        self._static: dict[str, dict[str, Endpoint]] = {}
        self._patterns: list[_Pattern] = []

    def add(self, method: str, path: str, handler: AnyHandler) -> None:
        endpoint = Endpoint(handler, inspect.iscoroutinefunction(handler) or _is_async(handler))
        if "{" not in path:
            table = self._static.setdefault(path, {})
        else:
            parts = tuple(path.strip("/").split("/"))
            pattern = next((p for p in self._patterns if p.parts == parts), None)
            if pattern is None:
                pattern = _Pattern(parts)
                self._patterns.append(pattern)
            table = pattern.methods
        if method in table:
            raise ValueError(f"route {method} {path} registered twice")
        table[method] = endpoint

    def match(self, method: str, path: str) -> Match | MethodMismatch | None:
        if len(path) > 1 and path[-1] == "/":
            path = path.rstrip("/") or "/"  # /health/ is /health, as /v1/models/m/ is
        table = self._static.get(path)
        params: dict[str, str] = {}
        if table is None:
            segments = path.strip("/").split("/")
            for pattern in self._patterns:
                bound = pattern.bind(segments)
                if bound is not None:
                    table, params = pattern.methods, bound
                    break
            else:
                return None
        endpoint = table.get(method)
        if endpoint is None and method == "HEAD":
            endpoint = table.get("GET")
        if endpoint is None:
            return MethodMismatch(allow_methods(table))
        return Match(endpoint, params)

    def routes(self) -> list[tuple[str, str]]:
        """(method, path) of every route, for documentation."""
        found = [(m, p) for p, table in self._static.items() for m in table]
        found += [(m, "/" + "/".join(p.parts)) for p in self._patterns for m in p.methods]
        return found


def allow_methods(table: dict[str, Endpoint]) -> tuple[str, ...]:
    methods = set(table)
    if "GET" in methods:
        methods.add("HEAD")
    return tuple(sorted(methods))


def _is_async(handler: object) -> bool:
    call = getattr(handler, "__call__", None)  # noqa: B004 - callable objects with async __call__
    return call is not None and asyncio.iscoroutinefunction(call)
