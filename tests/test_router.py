"""Router matching kinds (full, partial with Allow, none), params, trailing slash, HEAD."""

from __future__ import annotations

import pytest

from oxiserve.http.messages import Request, Response
from oxiserve.http.router import Match, MethodMismatch, Router


def _ok(request: Request) -> Response:
    return Response(b"ok")


async def _aok(request: Request) -> Response:
    return Response(b"ok")


@pytest.fixture
def router() -> Router:
    router = Router()
    router.add("GET", "/v1/models", _ok)
    router.add("POST", "/v1/chat/completions", _aok)
    router.add("GET", "/v1/models/{model}", _ok)
    router.add("DELETE", "/v1/models/{model}", _ok)
    router.add("GET", "/", _ok)
    return router


def test_a_full_match_gives_the_endpoint(router: Router) -> None:
    found = router.match("POST", "/v1/chat/completions")
    assert isinstance(found, Match)
    assert found.endpoint.handler is _aok
    assert found.endpoint.is_async
    assert found.params == {}
    sync = router.match("GET", "/v1/models")
    assert isinstance(sync, Match)
    assert not sync.endpoint.is_async


def test_a_path_with_other_methods_is_a_partial_match_with_allow(router: Router) -> None:
    assert router.match("GET", "/v1/chat/completions") == MethodMismatch(("POST",))
    assert router.match("POST", "/v1/models/m1") == MethodMismatch(("DELETE", "GET", "HEAD"))


@pytest.mark.parametrize("path", ["/nope", "/v1/models/a/b", "/v1", "/v1/models/a//b"])
def test_an_unknown_path_is_no_match(router: Router, path: str) -> None:
    assert router.match("GET", path) is None


def test_params_are_bound_and_unquoted(router: Router) -> None:
    found = router.match("GET", "/v1/models/org%2Fmodel%20x")
    assert isinstance(found, Match)
    assert found.params == {"model": "org/model x"}


def test_an_empty_param_segment_does_not_match(router: Router) -> None:
    assert router.match("GET", "/v1/models//x") is None


@pytest.mark.parametrize("path", ["/v1/models/", "/v1/models//", "/v1/models/m1/"])
def test_trailing_slashes_are_ignored(router: Router, path: str) -> None:
    assert isinstance(router.match("GET", path), Match)


def test_the_root_stays_the_root(router: Router) -> None:
    assert isinstance(router.match("GET", "/"), Match)


def test_head_is_served_by_get(router: Router) -> None:
    found = router.match("HEAD", "/v1/models/m1")
    assert isinstance(found, Match)
    assert found.endpoint.handler is _ok
    assert router.match("HEAD", "/v1/chat/completions") == MethodMismatch(("POST",))


def test_a_route_registered_twice_is_refused(router: Router) -> None:
    with pytest.raises(ValueError, match="registered twice"):
        router.add("GET", "/v1/models", _ok)
    with pytest.raises(ValueError, match="registered twice"):
        router.add("GET", "/v1/models/{model}", _ok)


def test_routes_lists_every_method_and_path(router: Router) -> None:
    assert sorted(router.routes()) == [
        ("DELETE", "/v1/models/{model}"),
        ("GET", "/"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/{model}"),
        ("POST", "/v1/chat/completions"),
    ]


def test_a_callable_object_with_async_call_is_async() -> None:
    class Handler:
        async def __call__(self, request: Request) -> Response:
            return Response(b"")

    router = Router()
    router.add("GET", "/x", Handler())
    found = router.match("GET", "/x")
    assert isinstance(found, Match)
    assert found.endpoint.is_async
