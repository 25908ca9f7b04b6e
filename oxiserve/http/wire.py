"""Hand-built response heads and chunk framing: the bytes h11 would send, at a fraction of the cost.

h11 parses every request; responses are written here because sending through
h11 costs more than the rest of a small request put together (see PERF-FACTS).
"""

from __future__ import annotations

import time
from http import HTTPStatus

from oxiserve.http.messages import Headers

STATUS_LINES: dict[int, bytes] = {
    s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode("latin-1") for s in HTTPStatus
}

_date_second = 0
_date_value = b""
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date() -> bytes:
    """The current time as an HTTP date, recomputed at most once a second."""
    global _date_second, _date_value
    now = int(time.time())
    if now != _date_second:
        _date_second = now
        t = time.gmtime(now)  # RFC 9110 IMF-fixdate, locale-independent
        _date_value = b"%s, %02d %s %04d %02d:%02d:%02d GMT" % (
            _DAYS[t.tm_wday].encode(), t.tm_mday, _MONTHS[t.tm_mon - 1].encode(), t.tm_year,
            t.tm_hour, t.tm_min, t.tm_sec,
        )  # fmt: skip
    return _date_value


def status_line(status: int) -> bytes:
    line = STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d Status %d\r\n" % (status, status)
    return line


def encode_headers(headers: Headers) -> bytes:
    return b"".join(
        b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")) for name, value in headers
    )


def response_head(
    status: int,
    content_type: str,
    request_id: str,
    *,
    content_length: int | None,
    headers: Headers = (),
    close: bool = False,
) -> bytes:
    """Status line and headers of a response.

    ``content_length`` None means chunked; -1 means neither (the body ends at close).
    """
    if content_length is None:
        framing = b"transfer-encoding: chunked\r\n"
    elif content_length < 0:
        framing = b""
    else:
        framing = b"content-length: %d\r\n" % content_length
    return b"%scontent-type: %s\r\n%sx-request-id: %s\r\ndate: %s\r\n%s%s\r\n" % (
        status_line(status),
        content_type.encode("latin-1"),
        framing,
        request_id.encode("latin-1"),
        http_date(),
        encode_headers(headers) if headers else b"",
        b"connection: close\r\n" if close else b"",
    )


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
