"""Serving over TLS (a certificate made at test time) and on a Unix domain socket."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import httpx
import openai
import pytest
import trustme

from oxiserve import Config, Server
from oxiserve.errors import StartupError
from tests.conftest import TIMEOUT, running


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def cert_files(ca: trustme.CA, tmp_path: Path) -> tuple[str, str]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    chain, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return str(chain), str(key)


async def test_the_sdk_talks_tls_with_a_custom_ca(
    ca: trustme.CA, cert_files: tuple[str, str]
) -> None:
    certfile, keyfile = cert_files
    async with running(ssl_certfile=certfile, ssl_keyfile=keyfile) as server:
        assert server.url.startswith("https://127.0.0.1:")
        context = ssl.create_default_context()
        ca.configure_trust(context)
        http = httpx.AsyncClient(verify=context, timeout=TIMEOUT)
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0,
                                      http_client=http) as sdk:  # fmt: skip
            reply = await sdk.chat.completions.create(
                model="oxiserve-sim", messages=[{"role": "user", "content": "Hi"}]
            )
            assert reply.choices[0].message.content
            chunks = await sdk.chat.completions.create(
                model="oxiserve-sim", messages=[{"role": "user", "content": "Hi"}], stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
            assert text
        async with httpx.AsyncClient(timeout=TIMEOUT) as untrusting:  # no custom CA: refused
            with pytest.raises(httpx.ConnectError):
                await untrusting.get(server.url + "/health")


async def test_a_bad_certificate_stops_the_start(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate")
    server = Server(Config(port=0, db=":memory:", ssl_certfile=str(bogus), ssl_keyfile=str(bogus)))
    with pytest.raises(StartupError, match="TLS certificate"):
        await server.start()


def test_cert_and_key_go_together() -> None:
    with pytest.raises(ValueError, match="together"):
        Config(ssl_certfile="cert.pem")


async def test_a_unix_socket_serves_httpx(tmp_path: Path) -> None:
    path = str(tmp_path / "oxiserve.sock")
    async with running(uds=path) as server:
        assert server.url == f"http+unix://{path}"
        transport = httpx.AsyncHTTPTransport(uds=path)
        async with httpx.AsyncClient(transport=transport, base_url="http://oxiserve",
                                     timeout=TIMEOUT) as http:  # fmt: skip
            assert (await http.get("/health")).json() == {"status": "ok"}
            reply = await http.post("/v1/chat/completions", json={
                "model": "oxiserve-sim", "messages": [{"role": "user", "content": "Hi"}],
            })  # fmt: skip
            assert reply.json()["choices"][0]["message"]["content"]
    assert not os.path.exists(path)  # noqa: ASYNC240  the socket file goes with the server
