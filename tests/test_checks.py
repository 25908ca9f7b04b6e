"""Each refusal in checks.py, on h11 events built directly (no connection, no socket)."""

from __future__ import annotations

import h11
import pytest

from oxiserve import Config
from oxiserve.http.checks import (
    Rejected,
    check_framing,
    check_request_line,
    check_trailers,
    client_request_id,
    error_code,
    origin_form,
    read_fields,
    wants_keep_alive,
)

CONFIG = Config(max_header_count=5, max_header_bytes=200, max_body_bytes=100)


def _head(*headers: tuple[str, str], method: str = "GET", target: str = "/",
          version: str = "1.1") -> h11.Request:  # fmt: skip
    return h11.Request(method=method, target=target, http_version=version,
                       headers=[("host", "x"), *headers])  # fmt: skip


def _refused(call: object, *args: object) -> Rejected:
    with pytest.raises(Rejected) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value


@pytest.mark.parametrize(
    ("start", "complete"),
    [(b"GET / HTTP/1.1", False), (b"GET / HTTP/1.1\r\n", True),
     (b"\r\n\r\nPOST /x HTTP/1.0\n", True), (b"", False)],
)  # fmt: skip
def test_a_valid_request_line_is_complete_once_it_ends(start: bytes, complete: bool) -> None:
    assert check_request_line(start) is complete


@pytest.mark.parametrize("line", [b"GET /\r\n", b"GET / HTTP/1\r\n", b"G@T / HTTP/1.1\r\n",
                                  b"GET  / HTTP/1.1\r\n", b"\x16\x03\x01 hello\n"])  # fmt: skip
def test_a_line_that_cannot_start_http_1_is_400(line: bytes) -> None:
    assert _refused(check_request_line, line).status == 400


@pytest.mark.parametrize(
    ("target", "path"),
    [(b"/a?b", b"/a?b"), (b"http://h:1/p?q", b"/p?q"), (b"HTTPS://h", b"/"),
     (b"http://h?q", b"/?q"), (b"*", b"*")],
)  # fmt: skip
def test_origin_form(target: bytes, path: bytes) -> None:
    assert origin_form(target) == path


def test_fields_are_text_and_repeats_are_joined() -> None:
    fields = read_fields(_head(("Accept", "a"), ("accept", "b"), ("X-Y", b"\xe9")), CONFIG)
    assert fields == {"host": "x", "accept": "a, b", "x-y": "é"}


def test_an_http_version_other_than_1_x_is_505() -> None:
    assert _refused(read_fields, _head(version="2.0"), CONFIG).status == 505


def test_too_many_fields_is_431() -> None:
    head = _head(*[(f"x-{i}", "v") for i in range(5)])
    assert _refused(read_fields, head, CONFIG).status == 431


def test_a_header_block_too_large_is_431() -> None:
    assert _refused(read_fields, _head(("x-big", "v" * 200)), CONFIG).status == 431


def test_a_control_character_in_a_value_is_400() -> None:
    refused = _refused(read_fields, _head(("x-a", "a\x01b")), CONFIG)
    assert (refused.status, refused.message) == (400, "Control character in a header value.")
    assert read_fields(_head(("x-a", "a\tb")), CONFIG)["x-a"] == "a\tb"  # tab is allowed


def _framing(head: h11.Request) -> None:
    check_framing(head, read_fields(head, CONFIG), CONFIG)


def test_content_length_with_transfer_encoding_is_400() -> None:
    head = _head(("content-length", "3"), ("transfer-encoding", "chunked"), method="POST")
    assert _refused(_framing, head).status == 400


def test_transfer_encoding_in_http_1_0_is_400() -> None:
    head = _head(("transfer-encoding", "chunked"), method="POST", version="1.0")
    assert _refused(_framing, head).status == 400


@pytest.mark.parametrize(("method", "target"), [("GET", "*"), ("GET", "x/y"), ("GET", "http:x")])
def test_a_target_not_starting_with_a_slash_is_400(method: str, target: str) -> None:
    assert _refused(_framing, _head(method=method, target=target)).status == 400


def test_options_star_and_absolute_form_pass() -> None:
    _framing(_head(method="OPTIONS", target="*"))
    _framing(_head(target="http://example.com/v1/models"))


def test_a_declared_body_over_the_limit_is_413() -> None:
    assert _refused(_framing, _head(("content-length", "101"), method="POST")).status == 413
    _framing(_head(("content-length", "100"), method="POST"))


@pytest.mark.parametrize(
    ("version", "connection", "keep"),
    [("1.1", None, True), ("1.1", "Close", False), ("1.1", "keep-alive", True),
     ("1.0", None, False), ("1.0", "keep-alive", False)],
)  # fmt: skip
def test_keep_alive(version: str, connection: str | None, keep: bool) -> None:
    head = _head(*([("connection", connection)] if connection else []), version=version)
    assert wants_keep_alive(head, read_fields(head, CONFIG)) is keep


@pytest.mark.parametrize("name", ["content-length", "Transfer-Encoding", "host", "authorization"])
def test_forbidden_trailers_are_400(name: str) -> None:
    value = "chunked" if name.lower() == "transfer-encoding" else "1"  # h11 validates values
    assert _refused(check_trailers, h11.EndOfMessage(headers=[(name, value)])).status == 400


def test_other_trailers_pass() -> None:
    check_trailers(h11.EndOfMessage(headers=[("x-checksum", "abc")]))


@pytest.mark.parametrize(
    ("given", "echoed"),
    [("abc-123", "abc-123"), ("", None), ("a b", None), ("x" * 201, None), ("é", None)],
)
def test_only_safe_request_ids_are_echoed(given: str, echoed: str | None) -> None:
    assert client_request_id({"x-request-id": given}) == echoed
    assert client_request_id({}) is None


def test_error_codes_name_the_status() -> None:
    assert [error_code(s) for s in (400, 408, 413, 431, 503, 505, 418)] == [
        "bad_request", "request_timeout", "request_too_large", "headers_too_large",
        "too_many_connections", "http_version_not_supported", "http_error",
    ]  # fmt: skip
