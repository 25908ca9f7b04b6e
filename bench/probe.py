"""A new stream's time to first token beside a load, measured from a process of its own.

The load client's own TTFT is its view through a saturated core: the faster a server
streams, the more events that one core must parse before it reads the new stream's first
token, so the figure grows with the server's speed.  This probe is idle but for one
request at a time: it connects, sends a short streamed chat request, reads until the
first frame carrying text, closes, rests ``--interval`` seconds and goes again, for
``--duration`` seconds.  It prints the times (ms) as a JSON list.

python -m bench.probe --host 127.0.0.1 --port 8000 --duration 5 [--cpu 0]
"""

from __future__ import annotations

import argparse
import os
import socket
import time

import orjson

from bench.scenarios import ChatStream, Target, Workload

TEXT = ChatStream.text_key


def first_token_ms(host: str, port: int, request: bytes, timeout: float) -> float | None:
    """Milliseconds from sending ``request`` to its first frame with text (None: it failed)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = time.perf_counter()
        sock.sendall(request)
        received, searched = b"", 0
        while True:
            data = sock.recv(65536)
            if not data:
                return None
            received += data
            if not received.startswith(b"HTTP/1.1 200") and len(received) >= 12:
                return None
            # The first '"content":"' not followed by '"' (the role chunk's content is "").
            at = received.find(TEXT, searched)
            while at >= 0 and at + len(TEXT) < len(received):
                if received[at + len(TEXT)] != 0x22:
                    return (time.perf_counter() - start) * 1000
                at = received.find(TEXT, at + 1)
            searched = max(0, len(received) - len(TEXT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--cpu", type=int, default=None, help="pin to this core")
    args = parser.parse_args()
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    target = Target.parse(f"http://{args.host}:{args.port}")
    request = ChatStream(target, Workload(max_tokens=4, include_usage=False)).request_for(0)
    times: list[float] = []
    stop = time.monotonic() + args.duration
    while time.monotonic() < stop:
        try:
            ms = first_token_ms(args.host, args.port, request, timeout=10.0)
        except OSError:
            ms = None
        if ms is not None:
            times.append(ms)
        time.sleep(args.interval)
    print(orjson.dumps(times).decode(), flush=True)


if __name__ == "__main__":
    main()
