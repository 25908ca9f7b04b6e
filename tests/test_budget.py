"""WriteBudget: the server-wide bound on buffered bytes, measured cheaply, fair to waiters."""

from __future__ import annotations

import asyncio

import pytest

from oxiserve import Config
from oxiserve.http.budget import WriteBudget

PIECE = 64 * 1024


class Counting:
    """A server's buffered total, counting how often it is summed."""

    def __init__(self, value: int) -> None:
        self.value = value
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        return self.value


async def test_pieces_are_reserved_against_one_measurement() -> None:
    total = Counting(0)
    budget = WriteBudget(4 * PIECE, total, asyncio.get_running_loop())
    admitted = [budget.allows(PIECE) for _ in range(6)]
    assert admitted == [True] * 4 + [False] * 2  # the reservations count, not only the sum
    assert total.calls == 1  # one sum of every connection's buffer for all six


async def test_a_crowd_of_waiters_costs_one_sum_per_poll_and_goes_in_order() -> None:
    total = Counting(4 * PIECE)
    budget = WriteBudget(4 * PIECE, total, asyncio.get_running_loop())
    woken: list[int] = []

    def waiter(i: int) -> None:
        def feed() -> None:
            if budget.allows(PIECE):
                woken.append(i)
            else:
                budget.wait(feed)

        budget.wait(feed)

    for i in range(300):
        waiter(i)
    calls = total.calls
    budget._poll()  # still full: nobody may go
    assert woken == []
    assert total.calls == calls + 1
    total.value = 2 * PIECE  # two pieces of room
    budget._poll()
    assert woken == [0, 1]  # first come, first served, only as many as fit
    assert total.calls == calls + 2  # one sum per poll, not one per waiter
    assert budget.waiting == 298
    total.value = 0
    budget._poll()
    assert woken == [0, 1, 2, 3, 4, 5]
    if budget._timer is not None:
        budget._timer.cancel()


async def test_one_writer_may_always_go_when_nothing_is_buffered() -> None:
    budget = WriteBudget(PIECE, Counting(0), asyncio.get_running_loop())
    assert budget.allows(3 * PIECE)  # more than the bound, but someone must make progress
    assert not budget.allows(1)


def test_a_budget_smaller_than_a_piece_is_refused_at_startup() -> None:
    with pytest.raises(ValueError, match="max_buffered_bytes"):
        Config(max_buffered_bytes=32 * 1024)
    assert Config(max_buffered_bytes=0).max_buffered_bytes == 0
