"""Which HTTP stack for the gateway: bare relays (no telemetry) on the candidate stacks, against the real
gateway (with its capture and ledger), in the same run: CPU per call of the relay process (all threads, and
the event-loop thread alone: for the gateway the rest is its telemetry) and throughput at C concurrent
streams vs direct calls measured just before (indicative only: bench/proxy.py interleaves rounds).

  aiohttp-web   aiohttp.web server, aiohttp client; a coroutine per request, `await resp.write()` per chunk
  asgi          uvicorn (httptools, uvloop) + a raw ASGI app, aiohttp client: the gateway's first stack
  gateway       `foundry-telemetry proxy` as shipped (asyncio protocols + httptools both sides, uvloop)
Usage: python bench/proxy_stacks.py [--seconds T] [--concurrency C] [--chunk-delay-ms D]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import proxy as bench  # noqa: E402

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "upgrade", "te"}


def serve_aiohttp_web(port: int, upstream: int) -> None:
    import aiohttp
    from aiohttp import web

    async def handler(request: web.Request) -> web.StreamResponse:
        session: aiohttp.ClientSession = request.app["session"]
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        async with session.request(request.method, f"http://127.0.0.1:{upstream}{request.raw_path}",
                                   headers=headers, data=body) as up:
            resp = web.StreamResponse(status=up.status, headers={k: v for k, v in up.headers.items()
                                                                   if k.lower() not in HOP})
            if up.headers.get("content-length"):
                resp.content_length = int(up.headers["content-length"])
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    async def on_startup(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession(auto_decompress=False,
                                               connector=aiohttp.TCPConnector(limit=256, limit_per_host=0))

    app = web.Application()
    app.on_startup.append(on_startup)
    app.router.add_route("*", "/{tail:.*}", handler)
    import uvloop

    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def serve_asgi(port: int, upstream: int) -> None:
    import aiohttp
    import uvicorn

    state: dict = {}

    async def app(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        if "session" not in state:
            state["session"] = aiohttp.ClientSession(auto_decompress=False, connector=aiohttp.TCPConnector(
                limit=256, limit_per_host=0))
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k.decode() not in HOP]
        async with state["session"].request(scope["method"], f"http://127.0.0.1:{upstream}{scope['path']}",
                                            headers=headers, data=body) as up:
            out = [(k, v) for k, v in up.raw_headers if k.decode().lower() not in HOP]
            await send({"type": "http.response.start", "status": up.status, "headers": out})
            async for chunk in up.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", access_log=False,
                loop="uvloop", http="httptools")


def start(kind: str, port: int, upstream: int, db: str) -> subprocess.Popen:
    if kind == "gateway":
        return bench.start_gateway(port, upstream, db)
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import proxy_stacks as s; " \
           f"s.serve_{kind.replace('-', '_')}({port}, {upstream})"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bench.wait_port(port, proc)
    return proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--chunk-delay-ms", type=float, default=20.0)
    args = ap.parse_args()
    print(f"bench/proxy_stacks.py: {args.concurrency} streams, emulator chunk delay {args.chunk_delay_ms:g} ms "
          f"(load average {os.getloadavg()[0]:.1f})")
    emu_port = bench.free_port()
    emu = bench.start_emulator(emu_port, args.chunk_delay_ms)
    tmp = tempfile.mkdtemp()
    try:
        for kind in ("aiohttp-web", "asgi", "gateway"):
            port = bench.free_port()
            proc = start(kind, port, emu_port, f"sqlite:///{tmp}/{kind}.db")
            try:
                bench.arun(bench.throughput(port, args.concurrency, 1.0))  # warm-up
                _, direct = bench.arun(bench.throughput(emu_port, args.concurrency, args.seconds))
                (m0, r0) = bench.thread_cpu(proc.pid)
                n, rate = bench.arun(bench.throughput(port, args.concurrency, args.seconds))
                (m1, r1) = bench.thread_cpu(proc.pid)
                print(f"  {kind:12} {rate:7.1f}/s vs direct {direct:7.1f}/s = {rate / direct:.3f}x; CPU per call "
                      f"{(m1 - m0 + r1 - r0) / n * 1e6:5.0f} µs, of it the event-loop thread "
                      f"{(m1 - m0) / n * 1e6:5.0f} µs")
            finally:
                proc.terminate()
                proc.wait(30)
    finally:
        emu.terminate()
        emu.wait(10)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
