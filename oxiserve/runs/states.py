"""Run, run step and message statuses, and the run's transitions kept as data (as h11 does).

    status = advance(RunStatus.QUEUED, RunStatus.IN_PROGRESS)   # -> RunStatus.IN_PROGRESS
    advance(RunStatus.COMPLETED, RunStatus.IN_PROGRESS)         # raises IllegalTransition

A run goes queued -> in_progress -> completed | incomplete | failed | requires_action (function
tools: back to queued when the outputs arrive); queued, in_progress and requires_action may be
cancelled (-> cancelling -> cancelled) or expire; any unfinished run may fail (the engine failed,
the server restarted).  The worker changes a run's status only through :func:`advance`, so an
illegal transition cannot be stored or published.
"""

from __future__ import annotations

import enum


class RunStatus(enum.StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    REQUIRES_ACTION = "requires_action"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    FAILED = "failed"
    COMPLETED = "completed"
    INCOMPLETE = "incomplete"
    EXPIRED = "expired"


class StepStatus(enum.StrEnum):
    IN_PROGRESS = "in_progress"
    CANCELLED = "cancelled"
    FAILED = "failed"
    COMPLETED = "completed"
    EXPIRED = "expired"


class MessageStatus(enum.StrEnum):
    IN_PROGRESS = "in_progress"
    INCOMPLETE = "incomplete"
    COMPLETED = "completed"


class IllegalTransition(RuntimeError):
    """A run was asked to move where its status table does not allow."""

    def __init__(self, current: RunStatus, target: RunStatus) -> None:
        super().__init__(f"a run cannot go from {current} to {target}")
        self.current, self.target = current, target


R = RunStatus
TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    R.QUEUED: frozenset({R.IN_PROGRESS, R.CANCELLING, R.CANCELLED, R.FAILED, R.EXPIRED}),
    R.IN_PROGRESS: frozenset(
        {R.REQUIRES_ACTION, R.COMPLETED, R.INCOMPLETE, R.FAILED, R.CANCELLING, R.EXPIRED}
    ),
    R.REQUIRES_ACTION: frozenset({R.QUEUED, R.CANCELLING, R.CANCELLED, R.FAILED, R.EXPIRED}),
    R.CANCELLING: frozenset({R.CANCELLED, R.FAILED, R.EXPIRED, R.COMPLETED, R.INCOMPLETE}),
    R.CANCELLED: frozenset(),
    R.FAILED: frozenset(),
    R.COMPLETED: frozenset(),
    R.INCOMPLETE: frozenset(),
    R.EXPIRED: frozenset(),
}
TERMINAL: frozenset[RunStatus] = frozenset(s for s, nexts in TRANSITIONS.items() if not nexts)
ACTIVE: frozenset[RunStatus] = frozenset(RunStatus) - TERMINAL
# What the SDK's poll helpers stop on (requires_action included: the caller must act).
POLL_DONE: frozenset[RunStatus] = TERMINAL | {R.REQUIRES_ACTION}
CANCELLABLE: frozenset[RunStatus] = frozenset({R.QUEUED, R.IN_PROGRESS, R.REQUIRES_ACTION})


def advance(current: RunStatus, target: RunStatus) -> RunStatus:
    """``target`` if the table allows ``current -> target``; else raise IllegalTransition."""
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(current, target)
    return target
