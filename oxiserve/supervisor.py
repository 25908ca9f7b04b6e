"""``--workers N``: N worker processes sharing one port, kept alive by a supervisor.

Each worker is a whole oxiserve (its own event loop and engine) listening on the same port
with SO_REUSEPORT, so the kernel spreads new connections over them.  The supervisor holds
the port (bound, never listening, so it gets no connections), starts the workers, prints
the startup line once they all listen, and then:

- restarts a worker that dies, after a back-off that doubles from 0.5 s to 10 s while
  workers keep dying young (one that lived 30 s starts the count again);
- on SIGTERM or SIGINT passes SIGTERM on and waits for the workers to drain (each within
  ``--shutdown-timeout``), then kills what is left;
- on SIGHUP passes it on (the workers read their API keys file again).

    python -m oxiserve --workers 4 --port 8000
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field, replace
from multiprocessing.process import BaseProcess
from typing import Any

from oxiserve.config import Config

log = logging.getLogger("oxiserve.supervisor")

BACKOFF_FIRST, BACKOFF_MAX, LIVED_LONG = 0.5, 10.0, 30.0
_CONTEXT = multiprocessing.get_context("spawn")  # a clean interpreter: no inherited loop


def _worker_main(config: Config, index: int, loop_name: str, ready: Any) -> None:
    """A worker process: one server on the shared port until SIGTERM."""
    import asyncio

    from oxiserve import loops
    from oxiserve.server import serve

    logging.basicConfig(
        level=config.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s[worker {index}]: %(message)s",
        stream=sys.stderr,
    )
    from oxiserve.errors import StartupError

    _, factory = loops.resolve(config.loop)
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(serve(config, loop_name=loop_name, worker=index, on_ready=ready.set))
    except (OSError, StartupError) as exc:
        print(f"oxiserve: worker {index}: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


@dataclass(slots=True)
class _Slot:
    """One worker's place: its process now, and how its restarts go."""

    index: int
    process: BaseProcess | None = None
    started: float = 0.0
    backoff: float = BACKOFF_FIRST
    due: float = 0.0  # when to start it again (after it died)
    ready: Any = field(default=None)


class Supervisor:
    def __init__(self, config: Config, loop_name: str) -> None:
        self.config = config
        self.loop_name = loop_name
        self.slots = [_Slot(i) for i in range(config.workers)]
        self._holder: socket.socket | None = None
        self._stopping = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._signals: list[int] = []

    def run(self) -> int:
        port = self._hold_port()
        config = replace(self.config, port=port)
        self._install_signals()
        try:
            for slot in self.slots:
                self._start(slot, config)
            if not self._wait_ready():
                return 0 if self._signals else 1  # stopped while starting, or a worker failed
            host = f"[{config.host}]" if ":" in config.host else config.host
            scheme = "https" if config.ssl_certfile else "http"
            from oxiserve.server import banner

            url = f"{scheme}://{host}:{port}"
            print(banner(url, config, self.loop_name), file=sys.stderr, flush=True)
            self._watch(config)
            return 0
        finally:
            self._stop_all()
            if self._holder is not None:
                self._holder.close()

    # --- the port and the signals --------------------------------------------------------------

    def _hold_port(self) -> int:
        """Bind the port with SO_REUSEPORT (the workers bind it too), without listening."""
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        holder = socket.socket(family, socket.SOCK_STREAM)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind((self.config.host, self.config.port))
        self._holder = holder
        return int(holder.getsockname()[1])

    def _install_signals(self) -> None:
        self._wake_w.setblocking(False)
        self._wake_r.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda number, _frame: self._signals.append(number))

    # --- workers -------------------------------------------------------------------------------

    def _start(self, slot: _Slot, config: Config) -> None:
        slot.ready = _CONTEXT.Event()
        process = _CONTEXT.Process(
            target=_worker_main, args=(config, slot.index, self.loop_name, slot.ready),
            name=f"oxiserve-worker-{slot.index}",
        )  # fmt: skip
        process.start()
        slot.process, slot.started = process, time.monotonic()

    def _wait_ready(self) -> bool:
        """Every worker listening (True), or one died first (its error is on stderr)."""
        deadline = time.monotonic() + 600.0  # a large model may take minutes to load
        for slot in self.slots:
            assert slot.process is not None
            while not slot.ready.wait(0.1):
                if self._signals:
                    return False  # stopped while starting: nothing to report
                if not slot.process.is_alive() or time.monotonic() > deadline:
                    code = slot.process.exitcode
                    print(f"oxiserve: worker {slot.index} did not start (exit {code})",
                          file=sys.stderr, flush=True)  # fmt: skip
                    return False
        return True

    def _watch(self, config: Config) -> None:
        """Until SIGTERM/SIGINT: restart dead workers, pass SIGHUP on."""
        while True:
            waits: list[Any] = [self._wake_r]
            waits += [s.process.sentinel for s in self.slots if s.process is not None]
            now = time.monotonic()
            pending = [s.due for s in self.slots if s.process is None]
            timeout = max(0.0, min(pending) - now) if pending else None
            multiprocessing.connection.wait(waits, timeout)
            with contextlib.suppress(BlockingIOError):
                self._wake_r.recv(4096)
            while self._signals:
                number = self._signals.pop(0)
                if number == signal.SIGHUP:
                    self._send_all(signal.SIGHUP)
                else:
                    return
            self._reap_and_restart(config)

    def _reap_and_restart(self, config: Config) -> None:
        now = time.monotonic()
        for slot in self.slots:
            process = slot.process
            if process is not None and not process.is_alive():
                process.join()
                lived = now - slot.started
                slot.backoff = BACKOFF_FIRST if lived >= LIVED_LONG else slot.backoff
                slot.due = now + slot.backoff
                log.warning("worker %d died (exit %s); restarting in %.1fs",
                            slot.index, process.exitcode, slot.backoff)  # fmt: skip
                slot.backoff = min(BACKOFF_MAX, slot.backoff * 2)
                slot.process = None
            elif process is None and now >= slot.due:
                self._start(slot, config)

    def _send_all(self, sig: int) -> None:
        for slot in self.slots:
            if slot.process is not None and slot.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.process.pid, sig)

    def _stop_all(self) -> None:
        """SIGTERM to every worker, a drain of --shutdown-timeout, then SIGKILL."""
        self._send_all(signal.SIGTERM)
        deadline = time.monotonic() + self.config.shutdown_timeout + 5.0
        for slot in self.slots:
            if slot.process is None:
                continue
            slot.process.join(max(0.0, deadline - time.monotonic()))
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join()


def supervise(config: Config, loop_name: str) -> int:
    """Run ``config.workers`` workers until SIGTERM/SIGINT; the exit status."""
    return Supervisor(config, loop_name).run()
