"""The gateway's upstream is HTTPS in production (`https://{resource}.services.ai.azure.com`): its own HTTP/1.1
client runs over asyncio TLS with the default, verifying context. A loopback HTTPS upstream with a self-signed
certificate, trusted through SSL_CERT_FILE (as an operator would add a corporate CA), and then not trusted."""

from __future__ import annotations

import shutil
import subprocess

import httpx
import pytest

from telemetry.gateway import GatewayServer, parse_upstreams

from .conftest import rows
from .gateway_helpers import SSE_PARTS, AppServer, fixed_app


def make_certificate(folder) -> tuple[str, str]:
    """A self-signed certificate for localhost: (certfile, keyfile)."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    return str(cert), str(key)


@pytest.fixture
def certificate(tmp_path):
    return make_certificate(tmp_path)


def test_https_upstream_passes_bytes_through_and_records(make_tel, sqlite_url, certificate, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", certificate[0])  # the default context trusts it, and only it
    tel = make_tel()
    with AppServer(fixed_app, tls=certificate) as up:
        gw = GatewayServer(parse_upstreams([f"https://localhost:{up.port}"]), port=0, telemetry=tel).start()
        try:
            for stream in (False, True):
                got = []
                for base, verify in ((f"https://localhost:{up.port}/anthropic/", certificate[0]),
                                     (gw.base_url, True)):
                    with httpx.stream("POST", base + "v1/messages", verify=verify, headers={"accept-encoding": "gzip"},
                                      json={"model": "claude-sonnet-4-5", "messages": [], "stream": stream}) as r:
                        got.append((r.status_code, r.headers.raw, b"".join(r.iter_raw())))
                assert got[0] == got[1]
            assert got[1][2] == b"".join(SSE_PARTS)
        finally:
            gw.stop()
    tel.flush()
    json_row, sse_row = rows(sqlite_url)
    assert (json_row.status_code, json_row.input_tokens, json_row.request_id) == (200, 11, "req_fixed")
    assert (sse_row.status_code, sse_row.output_tokens, sse_row.error_type) == (200, 3, None)


def test_an_untrusted_upstream_certificate_is_refused(make_tel, sqlite_url, certificate, tmp_path, monkeypatch):
    """No trust for the certificate: the gateway never talks to that upstream; the client gets a 502 and the
    attempt its row."""
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv("SSL_CERT_FILE", make_certificate(other)[0])  # trusts another certificate only
    monkeypatch.setenv("SSL_CERT_DIR", str(other))
    tel = make_tel()
    with AppServer(fixed_app, tls=certificate) as up:
        gw = GatewayServer(parse_upstreams([f"https://localhost:{up.port}"]), port=0, telemetry=tel).start()
        try:
            r = httpx.post(gw.base_url + "v1/messages", json={"model": "claude-sonnet-4-5", "messages": []})
        finally:
            gw.stop()
    assert r.status_code == 502, r.text
    tel.flush()
    (row,) = rows(sqlite_url)
    assert row.status_code is None and row.error_type is not None and row.request_id is None
