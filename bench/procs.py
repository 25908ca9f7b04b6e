"""Local server processes: start one (optionally pinned to a core), wait until it listens,
read its CPU time and memory from /proc, and stop it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(rb"listening on http://(\[[^\]]+\]|[^:/\s]+):(\d+)")
READY_LOOP = re.compile(rb"\bloop=(\w+)")  # oxiserve and the peers name their loop
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class ServerStartError(RuntimeError):
    """A server process exited or stayed silent instead of announcing its address."""


@dataclass(frozen=True, slots=True)
class Pinning:
    """Which cores client and server run on (None: not pinned), and why not if not."""

    client_cpu: int | None
    server_cpu: int | None
    note: str

    @classmethod
    def plan(cls, enabled: bool = True) -> Pinning:
        """Client on the first allowed core, server on the second, if there are two."""
        if not enabled:
            return cls(None, None, "not pinned (disabled)")
        if not hasattr(os, "sched_getaffinity"):
            return cls(None, None, "not pinned (no sched_setaffinity on this platform)")
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return cls(None, None, "not pinned (only one CPU available)")
        how = "taskset" if shutil.which("taskset") else "sched_setaffinity"
        return cls(cpus[0], cpus[1], f"client on cpu{cpus[0]}, server on cpu{cpus[1]} ({how})")

    def pin_client(self) -> None:
        if self.client_cpu is not None:
            os.sched_setaffinity(0, {self.client_cpu})

    def describe(self, local_server: bool) -> str:
        if self.client_cpu is None or local_server:
            return self.note
        return f"client on cpu{self.client_cpu}; server is not local (not pinned)"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for pid {pid}")


def check_loop(server: ServerProcess, loop: str | None) -> None:
    """Raise unless ``server`` announced it runs on ``loop`` (None: any loop will do)."""
    if loop is not None and server.loop != loop:
        actual = f"the {server.loop} loop" if server.loop else "a loop it does not name"
        raise ServerStartError(f"{' '.join(server.argv)} runs on {actual}, not on {loop}")


class ServerProcess:
    """A server subprocess started from ``argv`` that announces ``listening on http://H:P``.

    async with ServerProcess(argv, cpu=1) as server:
        print(server.url, server.cpu_seconds())
    """

    def __init__(
        self, argv: list[str], *, cpu: int | None = None, ready_timeout: float = 30.0
    ) -> None:
        self.argv = argv
        self.cpu = cpu
        self.ready_timeout = ready_timeout
        self.proc: asyncio.subprocess.Process | None = None
        self.host = ""
        self.port = 0
        self.loop: str | None = None  # the event loop its ready line names, if it names one
        self.pinned = False
        self.tail: deque[str] = deque(maxlen=40)
        self._drain: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        return rss_bytes(self.pid)

    async def start(self) -> ServerProcess:
        argv = self.argv
        taskset = shutil.which("taskset") if self.cpu is not None else None
        if taskset:
            argv = [taskset, "-c", str(self.cpu), *argv]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self.proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            cwd=REPO_ROOT,
            env=env,
            start_new_session=True,  # a Ctrl-C in the terminal reaches us, not the server
        )
        if self.cpu is not None and not taskset:
            os.sched_setaffinity(self.proc.pid, {self.cpu})
        self.pinned = self.cpu is not None
        try:
            async with asyncio.timeout(self.ready_timeout):
                await self._await_ready()
        except BaseException as exc:
            await self.stop()
            if isinstance(exc, TimeoutError):
                raise ServerStartError(self._failure("did not announce its address")) from None
            raise
        self._drain = asyncio.create_task(self._drain_stderr())
        return self

    async def _await_ready(self) -> None:
        assert self.proc is not None
        assert self.proc.stderr is not None
        while True:
            line = await self.proc.stderr.readline()
            if not line:
                await self.proc.wait()
                raise ServerStartError(self._failure(f"exited with {self.proc.returncode}"))
            self.tail.append(line.decode(errors="replace").rstrip())
            match = READY.search(line)
            if match:
                self.host = match.group(1).decode().strip("[]")
                self.port = int(match.group(2))
                loop = READY_LOOP.search(line, match.end())
                self.loop = loop.group(1).decode() if loop else None
                return

    def _failure(self, what: str) -> str:
        output = "\n  ".join(self.tail) or "(no output)"
        return f"{' '.join(self.argv)} {what}; its stderr:\n  {output}"

    async def _drain_stderr(self) -> None:
        assert self.proc is not None
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.tail.append(line.decode(errors="replace").rstrip())

    async def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; returns the exit status."""
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(timeout):
                    await proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._drain is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._drain, timeout)
        return proc.returncode

    async def __aenter__(self) -> ServerProcess:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
