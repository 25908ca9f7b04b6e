"""``--workers N``: worker processes sharing a port under a supervisor (real processes)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import TIMEOUT

pytestmark = pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT")


@contextmanager
def supervisor(*args: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "oxiserve", "--workers", "2", "--port", "0", "--db", ":memory:",
         "--worker-header", "--no-access-log", *args],
        stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = b""
        deadline = time.monotonic() + TIMEOUT * 3
        while b"listening on" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, "the supervisor ended before it listened"
        match = re.search(rb"listening on (http://127\.0\.0\.1:\d+) .*2 workers", line)
        assert match, line
        yield proc, match.group(1).decode()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(TIMEOUT)
        if proc.stderr is not None:
            proc.stderr.close()


def worker_of(url: str, path: str = "/health") -> tuple[int, int]:
    """(worker index, pid) of the worker a fresh connection reaches."""
    with httpx.Client(timeout=TIMEOUT) as http:  # a new connection each time
        answer = http.get(url + path)
    index, pid = answer.headers["x-oxiserve-worker"].split("/")
    return int(index), int(pid)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_both_workers_serve_and_stateful_endpoints_say_they_need_a_bus() -> None:
    with supervisor() as (_, url):
        seen = {worker_of(url) for _ in range(40)}  # the kernel spreads new connections
        assert {index for index, _ in seen} == {0, 1}
        assert len({pid for _, pid in seen}) == 2
        with httpx.Client(base_url=url, timeout=TIMEOUT) as http:
            hello = {"model": "oxiserve-sim", "messages": [{"role": "user", "content": "Hi"}]}
            chat = http.post("/v1/chat/completions", json=hello)
            assert chat.status_code == 200
            for method, path, body in [("POST", "/v1/threads", {}),
                                       ("POST", "/v1/responses", {"model": "oxiserve-sim",
                                                                  "input": "Hi"}),
                                       ("GET", "/v1/conversations/conv_1", None)]:  # fmt: skip
                answer = http.request(method, path, json=body)
                assert answer.status_code == 501, (path, answer.text)
                assert answer.json()["error"]["code"] == "bus_required"
                assert "--bus" in answer.json()["error"]["message"]
            unstored = http.post("/v1/responses", json={"model": "oxiserve-sim", "input": "Hi",
                                                        "store": False})  # fmt: skip
            assert unstored.status_code == 200  # nothing to share: any worker answers it


def test_a_dead_worker_is_started_again_and_sigterm_drains_them_all() -> None:
    with supervisor() as (proc, url):
        pids = {}
        deadline = time.monotonic() + TIMEOUT
        while len(pids) < 2 and time.monotonic() < deadline:
            index, pid = worker_of(url)
            pids[index] = pid
        os.kill(pids[0], signal.SIGKILL)
        deadline = time.monotonic() + TIMEOUT
        reborn = None
        while reborn is None and time.monotonic() < deadline:
            try:
                index, pid = worker_of(url)
            except httpx.TransportError:
                continue  # a connection the dying worker had accepted
            if index == 0 and pid != pids[0]:
                reborn = pid
        assert reborn is not None, "worker 0 was not started again"
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
        assert not alive(reborn)
        assert not alive(pids[1])


def test_sighup_reaches_every_worker(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("sk-old\n")
    with supervisor("--api-keys-file", str(keys)) as (proc, url):

        def answers(key: str) -> set[int]:
            statuses = set()
            auth = {"authorization": f"Bearer {key}"}
            for _ in range(20):
                with httpx.Client(timeout=TIMEOUT) as http:
                    statuses.add(http.get(url + "/v1/models", headers=auth).status_code)
            return statuses

        assert answers("sk-new") == {401}
        keys.write_text("sk-new\n")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + TIMEOUT
        while answers("sk-new") != {200} and time.monotonic() < deadline:
            pass  # each worker reads the file again, off its loop
        assert answers("sk-new") == {200}  # on both workers (20 fresh connections)
        assert answers("sk-old") == {401}


def test_a_worker_that_cannot_start_stops_the_supervisor_with_a_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "oxiserve", "--workers", "2", "--port", "0", "--db", ":memory:",
         "--engine", "oxillama", "--model", str(tmp_path / "missing.gguf")],
        capture_output=True, timeout=TIMEOUT * 3,
    )  # fmt: skip
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "model file not found" in err
    assert "did not start" in err
    assert "Traceback" not in err
