"""A private PostgreSQL for tests: its own data directory and a free loopback port, stopped
at the end (``initdb`` and ``pg_ctl`` from PATH or Debian's /usr/lib/postgresql/*/bin)."""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def _tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def unavailable() -> str | None:
    """Why a private PostgreSQL cannot run here (None: it can)."""
    if _tool("initdb") is None or _tool("pg_ctl") is None:
        return "PostgreSQL is not installed (apt-get install postgresql)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (the [postgres] extra)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: initdb refuses root"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivatePostgres:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="oxiserve-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._names = itertools.count()
        self._kept: dict[str, str] = {}
        self._prefix: list[str] = []
        if os.geteuid() == 0:  # initdb will not run as root: as the postgres user, if any
            self._prefix = ["runuser", "-u", "postgres", "--"]
            os.chmod(self.root, 0o777)

    def _run(self, *argv: str) -> None:
        subprocess.run([*self._prefix, *argv], check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        initdb, pg_ctl = _tool("initdb"), _tool("pg_ctl")
        assert initdb is not None
        assert pg_ctl is not None
        self._run(initdb, "-D", str(self.data), "-U", "oxiserve", "--auth=trust", "-E", "UTF8",
                  "--no-sync", "--no-instructions")  # fmt: skip
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")  # fmt: skip
        self._run(pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.root / "log"),
                  "-w", "-t", "60", "start")  # fmt: skip

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://oxiserve@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database's URL (each test gets its own)."""
        import psycopg

        name = f"t{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def kept_database(self, key: str) -> str:
        """The same database for every call with ``key`` (made at the first)."""
        if key not in self._kept:
            self._kept[key] = self.new_database()
        return self._kept[key]

    def stop(self) -> None:
        pg_ctl = _tool("pg_ctl")
        if pg_ctl is not None and self.data.exists():
            subprocess.run([*self._prefix, pg_ctl, "-D", str(self.data), "-m", "immediate",
                            "stop"], capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)
