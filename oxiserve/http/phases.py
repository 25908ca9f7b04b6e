"""The phases of a client connection as data: each phase's deadline and where it may go next.

As h11 keeps its transitions in tables (``h11/_state.py``), the connection's life is
:data:`TABLE`; the connection's ``_enter`` consults it (as :func:`resolve` reads it with
a server's timeouts) and refuses any other move with a :class:`PhaseError` naming both
ends.  :func:`diagram` renders the table, and the
connection module's docstring carries that rendering (a test compares them).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from oxiserve.config import Config

LINGER_SECONDS = 1.0  # input drained after an error so the client reads it before the close


class Phase(enum.Enum):
    IDLE = "idle"  # waiting for the first byte of a request
    HEADERS = "headers"  # reading the request line and header block
    BODY = "body"  # reading the body
    HANDLING = "handling"  # handler running or response being written
    STALLED = "stalled"  # answered, but the client is not reading: parse nothing more
    LINGER = "linger"  # error sent; discarding input briefly so the client reads it
    CLOSED = "closed"

    # Members are looked up in dicts several times per request: identity hashing in C
    # instead of Enum's hash(self._name_) in Python (members are singletons, so it agrees
    # with Enum's identity equality).
    __hash__ = object.__hash__


@dataclass(frozen=True, slots=True)
class Rule:
    """One phase: what times it out (a Config field's name, fixed seconds, or None: nothing)
    and the moves it allows, each with what causes it."""

    timeout: str | float | None
    next: dict[Phase, str]


_CLOSE = "close"  # an error, a timeout, shutdown or the client leaving

# Any phase may close; closing again is harmless (CLOSED -> CLOSED).
TABLE: dict[Phase, Rule] = {
    Phase.IDLE: Rule("keepalive_timeout", {
        Phase.HEADERS: "first byte", Phase.LINGER: "refused at once (503)", Phase.CLOSED: _CLOSE,
    }),
    Phase.HEADERS: Rule("header_timeout", {
        Phase.BODY: "request head",
        Phase.HANDLING: "a whole request, its head memoized",
        Phase.LINGER: "refused",
        Phase.CLOSED: _CLOSE,
    }),
    Phase.BODY: Rule("body_timeout", {
        Phase.HANDLING: "end of message", Phase.LINGER: "refused", Phase.CLOSED: _CLOSE,
    }),
    # write_timeout (a client reading nothing) is watched in every phase.
    Phase.HANDLING: Rule(None, {
        Phase.IDLE: "answered, keep-alive",
        Phase.HEADERS: "answered, pipelined bytes waiting",
        Phase.STALLED: "answered, but the client is not reading",
        Phase.CLOSED: _CLOSE,
    }),
    Phase.STALLED: Rule(None, {
        Phase.IDLE: "client reads again", Phase.HEADERS: "client reads again, bytes waiting",
        Phase.CLOSED: _CLOSE,
    }),
    Phase.LINGER: Rule(LINGER_SECONDS, {Phase.CLOSED: "linger over"}),
    Phase.CLOSED: Rule(None, {Phase.CLOSED: "closed again"}),
}  # fmt: skip


class PhaseError(RuntimeError):
    """A move the table does not allow: a bug in the connection, never the client's doing."""

    def __init__(self, current: Phase, target: Phase) -> None:
        super().__init__(f"connection cannot go from {current.name} to {target.name}")
        self.current = current
        self.target = target


Moves = dict[Phase, dict[Phase, float | None]]
"""``moves[current][target]``: the seconds ``target`` may last (None: no deadline); a
move the table lacks is missing."""


def resolve(config: Config) -> Moves:
    """The table with its timeouts read from ``config``, once per server: a move then costs
    the hot path one nested dict lookup."""
    seconds: dict[Phase, float | None] = {}
    for phase, rule in TABLE.items():
        if rule.timeout is None or isinstance(rule.timeout, float):
            seconds[phase] = rule.timeout
        else:
            seconds[phase] = float(getattr(config, rule.timeout))
    return {
        phase: {target: seconds[target] for target in rule.next} for phase, rule in TABLE.items()
    }


def diagram() -> str:
    """The table as text: each phase with its deadline, then one line per move."""
    lines = []
    for phase, rule in TABLE.items():
        timeout = rule.timeout
        deadline = (
            "none" if timeout is None else f"{timeout} s" if isinstance(timeout, float) else timeout
        )
        lines.append(f"{phase.name} (deadline: {deadline})")
        lines += [f"    --{why}--> {target.name}" for target, why in rule.next.items()]
    return "\n".join(lines)
