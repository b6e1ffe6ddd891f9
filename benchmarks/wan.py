"""Cross-organization escalations over an emulated WAN: three organizations in network
namespaces (consortium/launch/netns.py), real node processes with the echo model, the
links between acme and its peers given a round-trip time and a loss rate by the link
proxies (consortium/launch/linkproxy.py; loss as TCP sees it: a retransmission timeout
per lost chunk). acme escalates every task to the peer it names (globex and initech in
turn), asked from this machine over the bridge (a clean link).

- grid: RTT 0, 50, 200 ms x loss 0, 1, 5 %: escalation latency p50 / p95 (seconds, as
  the asking client sees it), the share that completed, and p50 over the clean link's;
- partition: acme:globex partitioned silently; the time until an escalation to globex
  fails at once ("circuit is open": detected), then healed and the time until one
  completes again (recovered), with the breaker settings below.

Needs root (namespaces). Prints one JSON object.

    .venv/bin/python benchmarks/wan.py [--tasks 20] [--peer-timeout 30]

The federation is started by the test harness (tests/integration/netns_federation.py)
until `consortium up` (the launcher) takes namespaces.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.netns_federation import NetnsFederation

BREAKER = "breaker_open_s = 0.5\nbreaker_max_open_s = 10.0\nbreaker_probe_timeout_s = 2.0\n"
PEERS = ("globex", "initech")


def cell(fed: NetnsFederation, rtt_ms: float, loss: float, tasks: int) -> dict[str, Any]:
    for peer in PEERS:
        fed.set_link(f"acme:{peer}", delay_ms=rtt_ms / 2, loss=loss)
    latencies: list[float] = []
    completed = 0
    for i in range(tasks):
        peer = PEERS[i % 2]
        started = time.perf_counter()
        answer = asyncio.run(fed.ask("acme", f"task {i} over {rtt_ms} ms", peer=peer))
        latencies.append(time.perf_counter() - started)
        completed += answer.state == "completed" and answer.provenance.org == peer
    latencies.sort()
    return {
        "p50_s": round(statistics.median(latencies), 4),
        "p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 4),
        "completed": round(completed / tasks, 3),
    }


def partition(fed: NetnsFederation) -> dict[str, float]:
    for peer in PEERS:
        fed.set_link(f"acme:{peer}", delay_ms=0.0, loss=0.0)
    started = time.perf_counter()
    fed.set_link("acme:globex", partition=True)
    while True:
        answer = asyncio.run(fed.ask("acme", "there?", peer="globex"))
        if answer.state == "failed" and "circuit is open" in answer.status_text:
            break
    detected = time.perf_counter() - started
    started = time.perf_counter()
    fed.set_link("acme:globex", heal=True)
    while asyncio.run(fed.ask("acme", "back?", peer="globex")).state != "completed":
        pass
    return {"detect_s": round(detected, 3), "recover_s": round(time.perf_counter() - started, 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--peer-timeout", type=float, default=30.0, help="peer_timeout_s")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fed = NetnsFederation(
            Path(tmp),
            ["acme", *PEERS],
            name="nlb",
            subnet="10.201.9.0/24",
            federation=f"peer_timeout_s = {args.peer_timeout}\n{BREAKER}",
        )
        try:
            fed.start()
            asyncio.run(fed.ask("acme", "warm up", peer="globex"))
            asyncio.run(fed.ask("acme", "warm up", peer="initech"))
            grid = {
                f"rtt_{rtt}ms_loss_{int(loss * 100)}pct": cell(fed, rtt, loss, args.tasks)
                for rtt in (0, 50, 200)
                for loss in (0.0, 0.01, 0.05)
            }
            base = grid["rtt_0ms_loss_0pct"]["p50_s"]
            for row in grid.values():
                row["ratio_p50_over_clean"] = round(row["p50_s"] / base, 2)
            result = {
                "grid": grid,
                "partition": partition(fed),
                "_setup": {
                    "tasks_per_cell": args.tasks,
                    "model": "echo",
                    "peer_timeout_s": args.peer_timeout,
                    "breaker": "open 0.5 s doubling to 10 s, probe 2 s",
                    "loss_rto": "max(200 ms, 2 x RTT), doubled per repeated loss",
                },
            }
        finally:
            fed.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
