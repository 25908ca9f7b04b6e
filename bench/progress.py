"""A one-line progress bar on stderr (drawn only when stderr is a terminal)."""

from __future__ import annotations

import asyncio
import sys
from time import perf_counter
from typing import TextIO


class ProgressBar:
    """Counts finished requests; a background task redraws a bar a few times a second.

    The bar fills by request count or by elapsed time, whichever bound is nearer.
    """

    def __init__(
        self,
        label: str,
        requests: int | None,
        duration: float | None,
        stream: TextIO | None = None,
        width: int = 30,
    ) -> None:
        self.label = label
        self.requests = requests
        self.duration = duration
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.done = 0
        self.start = perf_counter()
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.stream.isatty()

    def __call__(self, finished: int) -> None:
        self.done += finished

    def fraction(self) -> float:
        parts = [0.0]
        if self.requests:
            parts.append(self.done / self.requests)
        if self.duration:
            parts.append((perf_counter() - self.start) / self.duration)
        return min(1.0, max(parts))

    def render(self) -> str:
        filled = round(self.fraction() * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = perf_counter() - self.start
        return f"\r{self.label} [{bar}] {self.done} requests {elapsed:5.1f}s"

    async def _draw(self) -> None:
        while True:
            self.stream.write(self.render())
            self.stream.flush()
            await asyncio.sleep(0.2)

    def __enter__(self) -> ProgressBar:
        self.start = perf_counter()
        if self.enabled:
            self._task = asyncio.get_running_loop().create_task(self._draw())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            self.stream.write(self.render() + "\n")
            self.stream.flush()
