"""The gateway's upstream is HTTPS in production: its own HTTP/1.1 client runs over asyncio TLS with the default,
verifying context (the pass-through over HTTPS is in test_gateway.py). An upstream whose certificate is not
trusted is never talked to."""

from __future__ import annotations

import httpx

from telemetry.gateway import GatewayServer, parse_upstreams

from .conftest import rows
from .gateway_helpers import AppServer, fixed_app, make_certificate


def test_an_untrusted_upstream_certificate_is_refused(make_tel, sqlite_url, tmp_path, monkeypatch):
    """The gateway trusts another certificate only: the client gets a 502 and the attempt its row."""
    (tmp_path / "up").mkdir()
    (tmp_path / "other").mkdir()
    tls = make_certificate(tmp_path / "up")
    monkeypatch.setenv("SSL_CERT_FILE", make_certificate(tmp_path / "other")[0])
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "other"))
    tel = make_tel()
    with AppServer(fixed_app, tls=tls) as up:
        gw = GatewayServer(parse_upstreams([f"https://localhost:{up.port}"]), port=0, telemetry=tel).start()
        try:
            r = httpx.post(gw.base_url + "v1/messages", json={"model": "claude-sonnet-4-5", "messages": []})
        finally:
            gw.stop()
    assert r.status_code == 502, r.text
    tel.flush()
    (row,) = rows(sqlite_url)
    assert (row.status_code, row.error_type, row.request_id) == (None, "connection_error", None)
