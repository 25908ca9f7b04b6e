"""The run status table (oxiserve.runs.states)."""

from __future__ import annotations

import itertools

import pytest

from oxiserve.runs.states import (
    ACTIVE,
    CANCELLABLE,
    POLL_DONE,
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    RunStatus,
    advance,
)

R = RunStatus


def test_every_status_has_a_row() -> None:
    assert set(TRANSITIONS) == set(RunStatus)
    assert all(target in RunStatus for targets in TRANSITIONS.values() for target in targets)


def test_the_lifecycles_of_the_facts_file_are_allowed() -> None:
    paths = [
        [R.QUEUED, R.IN_PROGRESS, R.COMPLETED],
        [R.QUEUED, R.IN_PROGRESS, R.REQUIRES_ACTION, R.QUEUED, R.IN_PROGRESS, R.COMPLETED],
        [R.QUEUED, R.IN_PROGRESS, R.INCOMPLETE],
        [R.QUEUED, R.IN_PROGRESS, R.CANCELLING, R.CANCELLED],
        [R.QUEUED, R.IN_PROGRESS, R.REQUIRES_ACTION, R.CANCELLING, R.CANCELLED],
        [R.QUEUED, R.IN_PROGRESS, R.REQUIRES_ACTION, R.EXPIRED],
        [R.QUEUED, R.IN_PROGRESS, R.FAILED],
    ]
    for path in paths:
        status = path[0]
        for target in path[1:]:
            status = advance(status, target)
        assert status == path[-1]


@pytest.mark.parametrize(("current", "target"), list(itertools.product(RunStatus, RunStatus)))
def test_advance_follows_the_table_exactly(current: RunStatus, target: RunStatus) -> None:
    if target in TRANSITIONS[current]:
        assert advance(current, target) is target
    else:
        with pytest.raises(IllegalTransition) as caught:
            advance(current, target)
        assert (caught.value.current, caught.value.target) == (current, target)
        assert str(current) in str(caught.value)
        assert str(target) in str(caught.value)


def test_terminal_and_derived_sets() -> None:
    assert {R.CANCELLED, R.FAILED, R.COMPLETED, R.INCOMPLETE, R.EXPIRED} == TERMINAL
    assert {R.QUEUED, R.IN_PROGRESS, R.REQUIRES_ACTION, R.CANCELLING} == ACTIVE
    # The SDK's poll() stops on exactly these (openai-python, runs.poll).
    assert TERMINAL | {R.REQUIRES_ACTION} == POLL_DONE
    assert CANCELLABLE <= ACTIVE
    assert R.CANCELLING not in CANCELLABLE  # a second cancel changes nothing
