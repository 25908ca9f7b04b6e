"""CORS policy: preflights, allowed and refused origins, Vary."""

from __future__ import annotations

from oxiserve.http.cors import CorsPolicy
from oxiserve.http.messages import Request


def _request(method: str = "GET", **headers: str) -> Request:
    fields = {name.replace("_", "-"): value for name, value in headers.items()}
    return Request(method, "/v1/models", "", fields, b"", "req_1")


PREFLIGHT = {"origin": "https://app.example", "access_control_request_method": "POST"}


def test_a_listed_origin_is_allowed_and_caches_vary_on_origin() -> None:
    policy = CorsPolicy("https://app.example, https://other.example/")
    headers = dict(policy.headers(_request(origin="https://other.example")))
    assert headers == {
        "access-control-allow-origin": "https://other.example",
        "access-control-expose-headers": "x-request-id, retry-after",
        "vary": "origin",
    }


def test_an_unlisted_origin_gets_only_vary() -> None:
    policy = CorsPolicy("https://app.example")
    assert policy.headers(_request(origin="https://evil.example")) == (("vary", "origin"),)
    assert policy.headers(_request()) == (("vary", "origin"),)


def test_any_origin_needs_no_vary() -> None:
    policy = CorsPolicy("*")
    headers = dict(policy.headers(_request(origin="https://anything.example")))
    assert headers["access-control-allow-origin"] == "*"
    assert "vary" not in headers
    assert policy.headers(_request()) == ()


def test_a_preflight_from_an_allowed_origin_lists_methods_and_headers() -> None:
    policy = CorsPolicy("https://app.example")
    request = _request("OPTIONS", **PREFLIGHT, access_control_request_headers="authorization, x-a")
    response = policy.preflight(request, ("GET", "POST"))
    assert response is not None
    assert response.status == 204
    assert response.body == b""
    assert dict(response.headers) == {
        "access-control-allow-methods": "GET, POST",
        "access-control-allow-headers": "authorization, x-a",
        "access-control-max-age": "600",
    }


def test_a_preflight_asking_for_malformed_headers_is_not_granted_them() -> None:
    policy = CorsPolicy("*")
    request = _request("OPTIONS", **PREFLIGHT, access_control_request_headers="a b\r\nc")
    response = policy.preflight(request, ("POST",))
    assert response is not None
    assert "access-control-allow-headers" not in dict(response.headers)


def test_a_preflight_from_a_refused_origin_grants_nothing() -> None:
    policy = CorsPolicy("https://app.example")
    request = _request("OPTIONS", origin="https://evil.example",
                       access_control_request_method="POST")  # fmt: skip
    response = policy.preflight(request, ("POST",))
    assert response is not None
    assert response.status == 204
    assert response.headers == ()


def test_only_options_with_a_requested_method_is_a_preflight() -> None:
    policy = CorsPolicy("*")
    assert policy.preflight(_request("OPTIONS", origin="https://a.example"), ("GET",)) is None
    assert policy.preflight(_request("POST", **PREFLIGHT), ("GET",)) is None
