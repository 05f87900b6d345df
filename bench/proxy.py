"""The gateway's cost: proxied vs direct calls to the same emulator, in the same run, interleaved.

Three processes: the emulator, the gateway (`foundry-telemetry proxy`, SQLite ledger) and this load
generator, a minimal keep-alive HTTP/1.1 client on raw asyncio streams so the client's own cost is small and
the same for both paths. Measures:
  - latency, one call at a time, direct and proxied alternating: median / p99 / max of the whole call
    (JSON) and of the time to the first `content_block_delta` (SSE). Added median latency target ≤ 1 ms.
  - throughput at C concurrent streams (default 64) in rounds of T seconds, direct and proxied alternating:
    the ratio per round, and its median. Target ≥ 0.9.
  - CPU per call (utime + stime from /proc, over the throughput rounds only) of each process: the emulator,
    this load generator, and the gateway split into its event-loop thread and its telemetry threads
    (pipeline, ledger); and that the gateway's ledger got every call.
Two upstream pacings: a paced stream (`--chunk-delay-ms 20`: a delay between chunks, as a model's tokens
arrive; what a gateway in front of Foundry sees) and `--chunk-delay-ms 0` (the emulator as fast as it goes).

Fairness on a 2-core machine: flat-out, the three processes saturate both cores, so throughput measures CPU
per call, not the gateway's capacity: the proxied path does the emulator's and the client's work plus the
gateway's on the same two cores, so its ratio tends to (CPU per call of the direct path) / (CPU per call of
the proxied path), printed per run. Both paths' emulator and client costs are measured, not assumed equal:
the gateway's reads coalesce the emulator's small writes, so the client wakes less often per call behind it.
Paced, the cores are not saturated and the ratio shows what a client sees. Other work on the machine moves
every ratio (note the load average printed at the start and the end); the CPU figures move less.
Usage: python bench/proxy.py [--rounds R] [--seconds T] [--concurrency C] [--chunk-delay-ms D ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
MSG = [{"role": "user", "content": "Summarize the quarterly numbers in one line."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def start_emulator(port: int, chunk_delay_ms: float) -> subprocess.Popen:
    code = ("import sys; from telemetry.emulator import EmulatorServer; "
            f"EmulatorServer(port={port}, chunk_delay_ms={chunk_delay_ms}).serve_forever()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc


def start_gateway(port: int, upstream: int, db: str) -> subprocess.Popen:
    proc = subprocess.Popen([str(BIN / "foundry-telemetry"), "proxy", "--upstream", f"http://127.0.0.1:{upstream}",
                             "--listen", f"127.0.0.1:{port}", "--db", db],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> tuple[float, float]:
    """(the main thread, every other thread) of a process: the gateway's event loop, and its telemetry."""
    main = rest = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # a thread that just ended
            continue
        t = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        if task.name == str(pid):
            main += t
        else:
            rest += t
    return main, rest


class Conn:
    """One keep-alive HTTP/1.1 connection; reads a response to its end (content-length or chunked)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def call(self, request: bytes) -> tuple[float, float | None]:
        """(total seconds, seconds to the first content_block_delta or None)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert self.reader is not None
        t0 = time.perf_counter()
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
        ttft = None
        lower = head.lower()
        if b"content-length:" in lower:
            n = int(lower.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            await self.reader.readexactly(n)
        else:  # chunked
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                data = await self.reader.readexactly(size + 2)
                if ttft is None and b"content_block_delta" in data:
                    ttft = time.perf_counter() - t0
                if size == 0:
                    break
        return time.perf_counter() - t0, ttft


def request(port: int, stream: bool) -> bytes:
    body = json.dumps({"model": "claude-haiku-4-5", "max_tokens": 48, "messages": MSG, "stream": stream}).encode()
    return (f"POST /anthropic/v1/messages HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\napi-key: bench\r\n"
            f"x-foundry-team: bench\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
            ).encode() + body


def arun(coro):  # type: ignore[no-untyped-def]
    """Run the load generator on uvloop (as the emulator and the gateway are): its own CPU per call is then
    small, which leaves more of the two cores to the processes being compared."""
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(len(s) * q) - 1))]


async def latency(ports: dict[str, int], n: int) -> dict[str, dict[str, list[float]]]:
    conns = {name: Conn(p) for name, p in ports.items()}
    reqs = {(name, s): request(p, s) for name, p in ports.items() for s in (False, True)}
    out: dict[str, dict[str, list[float]]] = {name: {"json": [], "ttft": [], "stream": []} for name in ports}
    for i in range(n + 20):
        order = list(ports) if i % 2 else list(reversed(ports))
        for name in order:
            total, _ = await conns[name].call(reqs[name, False])
            s_total, ttft = await conns[name].call(reqs[name, True])
            if i >= 20:  # warm-up
                out[name]["json"].append(total)
                out[name]["stream"].append(s_total)
                out[name]["ttft"].append(ttft or s_total)
    return out


async def throughput(port: int, concurrency: int, seconds: float, stream: bool = True) -> tuple[int, float]:
    req = request(port, stream)
    done = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        conn = Conn(port)
        while time.perf_counter() < stop:
            await conn.call(req)
            done += 1
        if conn.writer is not None:
            conn.writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, done / (time.perf_counter() - t0)


def run(chunk_delay_ms: float, rounds: int, seconds: float, concurrency: int, n_latency: int) -> None:
    emu_port, gw_port = free_port(), free_port()
    tmp = tempfile.mkdtemp()
    db = f"sqlite:///{tmp}/bench.db"
    emu = start_emulator(emu_port, chunk_delay_ms)
    gw = start_gateway(gw_port, emu_port, db)
    ports = {"direct": emu_port, "proxy": gw_port}
    try:
        lat = arun(latency(ports, n_latency))
        print(f"\n== emulator chunk delay {chunk_delay_ms:g} ms; latency: {n_latency} calls each, one at a time, "
              f"alternating")
        print(f"{'':14} {'direct med':>10} {'proxy med':>10} {'added':>8} {'direct p99':>10} {'proxy p99':>10} "
              f"{'direct max':>10} {'proxy max':>10}   (ms)")
        for kind in ("json", "ttft", "stream"):
            d, p = lat["direct"][kind], lat["proxy"][kind]
            dm, pm = statistics.median(d) * 1e3, statistics.median(p) * 1e3
            print(f"{kind:14} {dm:10.3f} {pm:10.3f} {pm - dm:+8.3f} {pct(d, .99) * 1e3:10.3f} "
                  f"{pct(p, .99) * 1e3:10.3f} {max(d) * 1e3:10.3f} {max(p) * 1e3:10.3f}")
        proxied = 2 * (n_latency + 20)
        ratios = []
        cpu = {"emulator": {"direct": 0.0, "proxy": 0.0}, "client": {"direct": 0.0, "proxy": 0.0},
               "loop": {"proxy": 0.0}, "telemetry": {"proxy": 0.0}}
        calls = {"direct": 0, "proxy": 0}
        print(f"throughput: {concurrency} concurrent streams, {rounds} rounds of {seconds:g} s each way, alternating")
        for r in range(rounds):
            order = ("direct", "proxy") if r % 2 == 0 else ("proxy", "direct")
            got = {}
            for name in order:
                e0, c0, (g0, t0) = cpu_seconds(emu.pid), time.process_time(), thread_cpu(gw.pid)
                n, rate = arun(throughput(ports[name], concurrency, seconds))
                e1, c1, (g1, t1) = cpu_seconds(emu.pid), time.process_time(), thread_cpu(gw.pid)
                cpu["emulator"][name] += e1 - e0
                cpu["client"][name] += c1 - c0
                if name == "proxy":
                    cpu["loop"]["proxy"] += g1 - g0
                    cpu["telemetry"]["proxy"] += t1 - t0
                    proxied += n
                calls[name] += n
                got[name] = rate
            ratios.append(got["proxy"] / got["direct"])
            print(f"  round {r + 1}: direct {got['direct']:8.1f}/s  proxy {got['proxy']:8.1f}/s  "
                  f"ratio {ratios[-1]:.3f}")
        per = {k: {p: v / max(1, calls[p]) * 1e6 for p, v in d.items()} for k, d in cpu.items()}
        gateway = per["loop"]["proxy"] + per["telemetry"]["proxy"]
        direct = per["emulator"]["direct"] + per["client"]["direct"]
        via = per["emulator"]["proxy"] + per["client"]["proxy"] + gateway
        print(f"throughput ratio proxy/direct: median {statistics.median(ratios):.3f} "
              f"(min {min(ratios):.3f}, max {max(ratios):.3f})")
        print(f"CPU per call (µs): emulator {per['emulator']['direct']:.0f} direct / {per['emulator']['proxy']:.0f} "
              f"proxied; load generator {per['client']['direct']:.0f} / {per['client']['proxy']:.0f}; gateway "
              f"{gateway:.0f} = event loop {per['loop']['proxy']:.0f} + telemetry threads "
              f"{per['telemetry']['proxy']:.0f}")
        print(f"CPU per call of the whole path: direct {direct:.0f} µs, proxied {via:.0f} µs: on saturated cores "
              f"throughput proxied/direct tends to {direct / via:.3f}")
    finally:
        gw.terminate()
        gw.wait(60)
        emu.terminate()
        emu.wait(10)
    rows = sqlite3.connect(f"{tmp}/bench.db").execute("select count(*) from usage_records").fetchone()[0]
    print(f"ledger rows {rows} for {proxied} proxied calls")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency-calls", type=int, default=200)
    ap.add_argument("--chunk-delay-ms", type=float, nargs="+", default=[20.0, 0.0])
    args = ap.parse_args()
    print(f"bench/proxy.py on {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f})")
    for delay in args.chunk_delay_ms:
        run(delay, args.rounds, args.seconds, args.concurrency, args.latency_calls)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
