"""A writing process for the fault tests: the real SDK against the emulator, through `Telemetry.from_env`.

With DRIVER_FORK=N (and DRIVER_CALLS="CALLS THREADS"): N writers forked after the imports, no commands.
Otherwise commands on stdin, one a line; each answers one line on stdout:
  calls N [THREADS]   N calls (spread over THREADS threads, random teams, 10 % faults) → "done N"
  loop                calls until killed, one "ok <epoch> <request-id>" line per returned call
  fsize BYTES         RLIMIT_FSIZE soft limit (SIGXFSZ ignored: writes past it fail with EFBIG) → "ok"
  release             lift the limit → "ok"
  flush               → "flush True|False"
  health              → the failure counts as JSON
  exit                shutdown, then exit 0
Environment: FOUNDRY_TELEMETRY_DB_URL, FOUNDRY_TELEMETRY_SPOOL_DIR (optional), EMULATOR_BASE_URL,
DRIVER_BATCH_S, DRIVER_BATCH_N.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import sys
import threading
import time

from anthropic import AnthropicFoundry

from telemetry import Telemetry, usage_context

TEAMS = ["search", "support", "finance", "ads", "infra", "legal", "sales", "ops"]
FAULTS = ["429;times=1", "500;times=1", "cut"]
MSG = [{"role": "user", "content": "Summarize the quarterly numbers, please."}]


def one_call(client: AnthropicFoundry, rng: random.Random) -> str | None:
    headers = {}
    stream = rng.random() < 0.3
    if rng.random() < 0.1:
        headers["x-emulator-fault"] = rng.choice(FAULTS)
    with usage_context(team=rng.choice(TEAMS), project=f"p{rng.randrange(3)}"):
        try:
            if stream:
                with client.messages.stream(model="claude-haiku-4-5", max_tokens=8, messages=MSG,
                                            extra_headers=headers) as s:
                    for _ in s:
                        pass
                return None
            m = client.messages.create(model=rng.choice(["claude-haiku-4-5", "claude-sonnet-4-5"]), max_tokens=8,
                                       messages=MSG, extra_headers=headers)
            return m._request_id
        except Exception:
            return None


def _writer(i: int, calls: int, threads: int) -> None:
    tel = Telemetry.from_env(batch_interval_s=float(os.environ.get("DRIVER_BATCH_S", "0.02")),
                             batch_size=int(os.environ.get("DRIVER_BATCH_N", "50")))
    client = tel.instrument(AnthropicFoundry(api_key="k", base_url=os.environ["EMULATOR_BASE_URL"]))

    def work(k: int, seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(k):
            one_call(client, rng)

    ts = [threading.Thread(target=work, args=(calls // threads + (j < calls % threads), i * 100 + j))
          for j in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    ok = tel.flush(60)
    tel.shutdown()
    sys.stdout.write(json.dumps({"flushed": ok, "failures": tel.health.snapshot()}) + "\n")
    sys.stdout.flush()


def forked(n: int, calls: int, threads: int) -> None:
    """DRIVER_FORK=N: N writer processes forked from this one after the imports (one start-up, not N),
    each making `calls` calls over `threads` threads; one JSON line of its failure counts each."""
    pids = []
    for i in range(n):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _writer(i, calls, threads)
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    codes = [os.waitpid(pid, 0)[1] for pid in pids]
    sys.exit(0 if not any(codes) else 1)


def main() -> None:
    if os.environ.get("DRIVER_FORK"):
        calls, threads = (int(x) for x in os.environ.get("DRIVER_CALLS", "80 4").split())
        forked(int(os.environ["DRIVER_FORK"]), calls, threads)
        return
    batch_s = float(os.environ.get("DRIVER_BATCH_S", "0.02"))
    tel = Telemetry.from_env(batch_interval_s=batch_s, batch_size=int(os.environ.get("DRIVER_BATCH_N", "50")))
    client = tel.instrument(AnthropicFoundry(api_key="k", base_url=os.environ["EMULATOR_BASE_URL"], max_retries=2))
    print("ready", flush=True)
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "calls":
            n, threads = int(args[0]), int(args[1]) if len(args) > 1 else 1

            def work(k: int, seed: int) -> None:
                rng = random.Random(seed)
                for _ in range(k):
                    one_call(client, rng)

            ts = [threading.Thread(target=work, args=(n // threads + (i < n % threads), os.getpid() * 100 + i))
                  for i in range(threads)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            print(f"done {n}", flush=True)
        elif cmd == "loop":
            while True:
                m = client.messages.create(model="claude-haiku-4-5", max_tokens=4, messages=MSG)
                sys.stdout.write(f"ok {time.time():.6f} {m._request_id}\n")
                sys.stdout.flush()
        elif cmd == "fsize":
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (int(args[0]), resource.RLIM_INFINITY))
            print("ok", flush=True)
        elif cmd == "release":
            resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            print("ok", flush=True)
        elif cmd == "flush":
            print(f"flush {tel.flush(30)}", flush=True)
        elif cmd == "health":
            print(json.dumps(tel.health.snapshot()), flush=True)
        elif cmd == "exit":
            tel.shutdown()
            print("bye", flush=True)
            return


if __name__ == "__main__":
    main()
