"""A real browser (headless Chromium) streams a chat completion with fetch() across origins.

The page is served by the test from its own port; oxiserve allows that origin only.  The
page reads the stream with a ReadableStream reader, as a web app does, and must assemble
exactly the text a plain client gets; the same page from another origin must be refused.
"""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import TIMEOUT, running

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on this machine (make test installs it with apt-get "
    "where it can: apt-get install chromium)",
)  # fmt: skip

BODY = {"model": "oxiserve-sim", "messages": [{"role": "user", "content": "Hello browser"}],
        "stream": True, "max_tokens": 20}  # fmt: skip
PAGE = """<!doctype html><meta charset="utf-8"><title>stream</title><script>
window.done = (async () => {
  const response = await fetch(%(api)s + "/v1/chat/completions", {
    method: "POST", headers: {"Content-Type": "application/json"}, body: %(body)s,
  });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", text = "", events = 0, finished = false;
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\\n\\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") { finished = true; continue; }
        const chunk = JSON.parse(data);
        events += 1;
        if (chunk.choices.length) text += chunk.choices[0].delta.content || "";
      }
    }
  }
  return {status: response.status, text, events, finished};
})().catch((error) => ({error: String(error)}));
</script>"""


class PageServer:
    """A tiny HTTP server answering every request with the page; the page's API URL is set
    after it started (the API must know the page's origin first)."""

    def __init__(self) -> None:
        self.api = ""
        self.origin = ""
        self._server: asyncio.Server | None = None

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = orjson.dumps(orjson.dumps(BODY).decode()).decode()
        html = (PAGE % {"api": orjson.dumps(self.api).decode(), "body": body}).encode()
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
        writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(html) + html)
        await writer.drain()
        writer.close()

    async def __aenter__(self) -> PageServer:
        self._server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        self.origin = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


async def in_browser(url: str) -> Any:
    """What the page's ``window.done`` promise gives, in headless Chromium."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            await page.goto(url)
            return await asyncio.wait_for(page.evaluate("window.done"), TIMEOUT)
        finally:
            await browser.close()


async def plain_text(url: str) -> str:
    """The same request's text as a plain (non-browser) client joins it."""
    text = ""
    async with (
        httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as http,
        http.stream("POST", "/v1/chat/completions", json=BODY) as stream,
    ):
        async for line in stream.aiter_lines():
            if line.startswith("data: {"):
                chunk = orjson.loads(line[6:])
                if chunk["choices"]:
                    text += chunk["choices"][0]["delta"].get("content") or ""
    return text


async def test_a_page_streams_from_an_allowed_origin_and_not_from_another() -> None:
    async with PageServer() as allowed, PageServer() as refused:
        # The page's origin first, then the API that allows it, then the page's API URL.
        server_config = {"cors_allow_origins": allowed.origin}
        async with running(**server_config) as server:
            allowed.api = refused.api = server.url
            expected = await plain_text(server.url)
            good = await in_browser(allowed.origin + "/")
            bad = await in_browser(refused.origin + "/")
    assert expected
    assert good == {"status": 200, "text": expected, "events": good["events"], "finished": True}
    assert good["events"] >= 2
    assert "Failed to fetch" in bad.get("error", "")  # the browser refused the answer
