"""What h11 accepts but a server must refuse: header limits, smuggling shapes, bad targets.

Pure functions over h11 events (no I/O), raising :class:`Rejected` with the status to
answer; the connection answers it and closes.
"""

from __future__ import annotations

import re

import h11

from oxiserve.config import Config

_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_FORBIDDEN_TRAILERS = frozenset(
    {b"content-length", b"transfer-encoding", b"host", b"content-type", b"authorization",
     b"trailer"}
)  # fmt: skip
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,200}")
# method SP target SP HTTP-version (RFC 9112 section 3); h11 waits for a whole header block
# before it looks at the line, so a line that can never start a request is caught here.
_REQUEST_LINE = re.compile(
    rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [\x21-\x7e\x80-\xff]+ HTTP/[0-9]\.[0-9]\r?\n"
)
_ABSOLUTE_FORM = re.compile(rb"[hH][tT][tT][pP][sS]?://[^/?#]*")
_CODES = {
    400: "bad_request",
    408: "request_timeout",
    413: "request_too_large",
    431: "headers_too_large",
    501: "not_implemented",
    503: "too_many_connections",
    505: "http_version_not_supported",
}


class Rejected(Exception):
    """A request refused below the API layer (status, message); the connection closes after."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def check_request_line(start: bytes) -> bool:
    """Whether the request's first line is complete (then it was valid); ``Rejected`` if the
    complete line cannot start an HTTP/1.x request (e.g. an HTTP/0.9 ``GET /``), so it is
    answered at once instead of waiting for a header block that never comes."""
    start = start.lstrip(b"\r\n")  # empty lines before a request are allowed (RFC 9112 2.2)
    end = start.find(b"\n")
    if end < 0:
        return False
    if not _REQUEST_LINE.fullmatch(start, 0, end + 1):
        raise Rejected(400, "Malformed HTTP request line; expected 'METHOD /path HTTP/1.1'.")
    return True


def origin_form(target: bytes) -> bytes:
    """The path and query of a target; an absolute-form target (``http://host/path``) that a
    server must accept (RFC 9112 section 3.2.2) is reduced to its path."""
    if target[:1] == b"/":
        return target
    authority = _ABSOLUTE_FORM.match(target)
    if authority is None:
        return target
    rest = target[authority.end() :]
    return rest if rest[:1] == b"/" else b"/" + rest


def error_code(status: int) -> str:
    return _CODES.get(status, "http_error")


def header_items(event: h11.Request | h11.EndOfMessage) -> list[tuple[bytes, bytes]]:
    """(lower-case name, value) pairs; h11's Headers iterates slowly through the Sequence ABC."""
    full = getattr(event.headers, "_full_items", None)
    if full is None:  # pragma: no cover - a future h11 without the private list
        return list(event.headers)
    return [(name, value) for _, name, value in full]


def read_fields(head: h11.Request, config: Config) -> dict[str, str]:
    """The header fields as text (repeats joined with ", "), after the count/size/byte checks."""
    if head.http_version != b"1.1" and head.http_version != b"1.0":
        raise Rejected(505, "HTTP version not supported; use HTTP/1.1.")
    items = header_items(head)
    if len(items) > config.max_header_count:
        raise Rejected(431, f"Too many header fields (limit {config.max_header_count}).")
    size = len(head.target) + len(head.method) + 12
    fields: dict[str, str] = {}
    for name, value in items:
        size += len(name) + len(value) + 4
        if _BAD_VALUE.search(value):
            raise Rejected(400, "Control character in a header value.")
        key, text = name.decode("latin-1"), value.decode("latin-1")
        fields[key] = f"{fields[key]}, {text}" if key in fields else text
    if size > config.max_header_bytes:
        raise Rejected(431, f"Request header block too large (limit {config.max_header_bytes}).")
    return fields


def check_framing(head: h11.Request, fields: dict[str, str], config: Config) -> None:
    """Smuggling shapes, bad targets and declared bodies over the limit."""
    length = fields.get("content-length")
    if "transfer-encoding" in fields and (length is not None or head.http_version == b"1.0"):
        raise Rejected(400, "Transfer-Encoding is not allowed with Content-Length or HTTP/1.0.")
    target = origin_form(head.target)
    if not target.startswith(b"/") and not (target == b"*" and head.method == b"OPTIONS"):
        raise Rejected(400, "Invalid request target.")
    # h11 has validated Content-Length (digits, no conflicting duplicates).
    if length is not None and int(length.partition(",")[0]) > config.max_body_bytes:
        raise Rejected(413, f"Request body too large (limit {config.max_body_bytes} bytes).")


def wants_keep_alive(head: h11.Request, fields: dict[str, str]) -> bool:
    # HTTP/1.0 gets no keep-alive (we never send 1.0 keep-alive responses).
    connection = fields.get("connection")
    return head.http_version == b"1.1" and (connection is None or "close" not in connection.lower())


def check_trailers(end: h11.EndOfMessage) -> None:
    if not end.headers:  # nearly every request: no trailers, no list built
        return
    for name, _ in header_items(end):
        if name in _FORBIDDEN_TRAILERS:
            raise Rejected(400, f"Forbidden trailer field {name.decode('latin-1')}.")


def client_request_id(fields: dict[str, str]) -> str | None:
    """The client's x-request-id, if it is one we can echo safely."""
    given = fields.get("x-request-id")
    return given if given and _REQUEST_ID.fullmatch(given) else None
