"""A private Redis for tests: its own directory and a free loopback port, no persistence,
stopped at the end (``redis-server`` from PATH, as Debian's package installs it)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def unavailable() -> str | None:
    """Why a private Redis cannot run here (None: it can)."""
    if shutil.which("redis-server") is None:
        return "Redis is not installed (apt-get install redis-server)"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "the redis package is not installed (the [redis] extra)"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """``start()``/``stop()`` a redis-server; ``url(n)`` is database ``n``'s URL.  ``stop``
    and ``start`` again keep the port (a test can take the bus down and bring it back)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="oxiserve-redis-"))
        self.port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._databases = 0

    def start(self) -> None:
        server = shutil.which("redis-server")
        assert server is not None
        self._process = subprocess.Popen(
            [server, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.root),
             "--save", "", "--appendonly", "no", "--databases", "64", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start within 30 s")

    def url(self, database: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A database no other test used (64 per server), flushed."""
        self._databases += 1
        number = self._databases % 64
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, db=number)
        try:
            client.flushdb()
        finally:
            client.close()
        return self.url(number)

    def stop(self) -> None:
        """Stop the server (kill: no shutdown save), keeping its directory for ``start``."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=30)
        self._process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
