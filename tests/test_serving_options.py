"""Serving options: a root path prefix, JSON access log lines."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from oxiserve.config import Config
from tests.conftest import TIMEOUT, running


async def test_requests_may_carry_the_root_path() -> None:
    async with (
        running(root_path="/llm") as server,
        httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http,
    ):
        assert (await http.get("/llm/health")).json() == {"status": "ok"}
        assert (await http.get("/llm/v1/models")).status_code == 200
        assert (await http.get("/v1/models")).status_code == 200  # a proxy that strips it
        assert (await http.get("/llmx/v1/models")).status_code == 404  # not the prefix


@pytest.mark.parametrize("root", ["llm", "/llm/", "/"])
def test_a_root_path_is_a_clean_prefix(root: str) -> None:
    with pytest.raises(ValueError, match="root_path"):
        Config(root_path=root)


async def test_json_access_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="oxiserve.access")  # before the server reads it
    async with (
        running(access_log=True, access_log_format="json") as server,
        httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http,
    ):
        await http.get("/health", headers={"x-request-id": "abc-1"})
    (line,) = [json.loads(r.getMessage()) for r in caplog.records if r.name == "oxiserve.access"]
    assert {k: line[k] for k in ("method", "path", "status", "request_id")} == {
        "method": "GET", "path": "/health", "status": 200, "request_id": "abc-1",
    }  # fmt: skip
    assert line["bytes"] > 0
    assert line["ms"] >= 0
