"""What does load shedding buy at four times a node's capacity? Same node, same load:

  (a) shedding off: [server] max_pending_requests = 0, max_queue_wait_s = 0 (the node
      queues everything);
  (b) shedding on: max_queue_wait_s = --max-wait (and max_pending_requests = 128, the
      default).

The node (`consortium node start`, its own process) serves an echo model that takes
--token-delay seconds a word, one request at a time. Its capacity is measured first
(sequential requests: 1 / mean latency); then /v1 chat completions arrive open-loop at
4 x that rate for --seconds, each on the client's keep-alive pool. Prints one JSON
object: for each run the admitted requests' latency (p50, p99), the refusal rate (429),
connection errors, and the ratio of p99 latencies b / a.

    .venv/bin/python benchmarks/overload.py [--seconds 15] [--max-wait 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from consortium.launch.local import start_node

WORDS = 20
LOAD = 4.0  # times capacity


def node_toml(org: str, token_delay_s: float, server: dict[str, float]) -> str:
    extra = "".join(f"{k} = {v}\n" for k, v in server.items())
    return f"""[node]
org_id = "{org}"

[server]
grpc_port = 0
http_port = 0
{extra}
[model]
backend = "echo"
name = "echo"
echo_token_delay_s = {token_delay_s}

[auth]
anonymous_loopback = true

[limits]
requests_per_minute = 0
tokens_per_minute = 0
concurrent_requests = 0

[telemetry]
exporter = "none"
"""


BODY = {
    "model": "echo",
    "messages": [{"role": "user", "content": " ".join(f"w{i}" for i in range(WORDS))}],
}


async def one(http: httpx.AsyncClient, url: str) -> tuple[str, float]:
    started = time.perf_counter()
    try:
        r = await http.post(url + "/v1/chat/completions", json=BODY)
    except httpx.HTTPError as e:
        return type(e).__name__, time.perf_counter() - started
    return str(r.status_code), time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(url: str, seconds: float) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=2000)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        for _ in range(3):  # warm up
            await one(http, url)
        sequential = [(await one(http, url))[1] for _ in range(10)]
        job_s = statistics.fmean(sequential)
        interval = job_s / LOAD
        calls: list[asyncio.Task[tuple[str, float]]] = []
        started = time.perf_counter()
        n = int(seconds / interval)
        for i in range(n):
            delay = started + i * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            calls.append(asyncio.ensure_future(one(http, url)))
        results = await asyncio.gather(*calls)
    outcomes = Counter(status for status, _ in results)
    admitted = [s for status, s in results if status == "200"]
    errors = sum(n for status, n in outcomes.items() if status not in ("200", "429"))
    return {
        "capacity_per_s": round(1 / job_s, 2),
        "offered_per_s": round(LOAD / job_s, 2),
        "requests": len(results),
        "outcomes": dict(outcomes),
        "refusal_rate": round(outcomes["429"] / len(results), 3),
        "connection_errors": errors,
        "admitted_p50_s": round(percentile(admitted, 0.5), 3) if admitted else None,
        "admitted_p99_s": round(percentile(admitted, 0.99), 3) if admitted else None,
    }


def start(workdir: Path, name: str, delay: float, server: dict[str, float]) -> tuple[Any, str]:
    directory = workdir / name
    directory.mkdir()
    config = directory / "node.toml"
    config.write_text(node_toml(name, delay, server))
    return start_node(config, directory / "node.log")


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="how long the load lasts")
    parser.add_argument("--token-delay", type=float, default=0.01, help="echo: seconds a word")
    parser.add_argument("--max-wait", type=float, default=2.0, help="(b)'s max_queue_wait_s")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="consortium-overload-"))
    off = {"max_pending_requests": 0, "max_queue_wait_s": 0}
    on = {"max_queue_wait_s": args.max_wait}
    # Both nodes start (and stop) together; the loads run one after the other.
    (node_a, url_a), (node_b, url_b) = await asyncio.gather(
        asyncio.to_thread(start, workdir, "off", args.token_delay, off),
        asyncio.to_thread(start, workdir, "on", args.token_delay, on),
    )
    try:
        a = await run(url_a, args.seconds)
        b = await run(url_b, args.seconds)
    finally:
        await asyncio.gather(asyncio.to_thread(node_a.stop), asyncio.to_thread(node_b.stop))
    result = {
        "benchmark": "overload",
        "load": f"{LOAD:g} x capacity, open loop, /v1 chat completions of {WORDS} words",
        "seconds": args.seconds,
        "echo_token_delay_s": args.token_delay,
        "a_shedding_off": a,
        "b_shedding_on": {"max_queue_wait_s": args.max_wait, **b},
        "ratio_admitted_p99_b_over_a": (
            round(b["admitted_p99_s"] / a["admitted_p99_s"], 3)
            if a["admitted_p99_s"] and b["admitted_p99_s"]
            else None
        ),
        "target": "connection_errors == 0 in both; b's admitted p99 bounded by max_wait + a job",
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
