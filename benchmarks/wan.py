"""Cross-organization escalations over an emulated WAN: three organizations in network
namespaces (consortium/launch/netns.py), real node processes with the echo model, the
links between acme and its peers given a round-trip time and a loss rate by the link
proxies (consortium/launch/linkproxy.py; loss as TCP sees it: a retransmission timeout
per lost chunk). acme escalates every task to the peer it names (globex and initech in
turn), asked from this machine over the bridge (a clean link).

- grid: RTT 0, 50, 200 ms x loss 0, 1, 5 %: escalation latency p50 / p95 (seconds, as
  the asking client sees it), the share that completed, and p50 over the clean link's;
- trust: the trust pipeline's share of each escalation (the `invoke_agent` span of acme's
  call to the peer): acme's redaction, signing and verification of every event that
  came back (`consortium.redact`, `consortium.sign`, the `consortium.verify.ms` of its
  `consortium.verify` span: without the network wait it is interleaved with) and the
  peer's verification and signing (`consortium.verify`, the `consortium.sign.ms` of its
  `a2a.receive` span), audit-log appends included, read from the nodes' span files;
- partition: acme:globex partitioned silently; the time until an escalation to globex
  fails at once ("circuit is open": detected), then healed and the time until one
  completes again (recovered), with the breaker settings below.

The federation is what `consortium up --isolate netns` starts (the `Launcher` API on a
federation file written here: [peers] sets every node's peer_timeout_s and breaker);
`up_s` is its start to every node ready and admitted, namespaces and link proxies
included. Needs root (namespaces). Prints one JSON object.

    .venv/bin/python benchmarks/wan.py [--tasks 20] [--peer-timeout 30]
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

from consortium.launch.federation_file import load_federation_file
from consortium.launch.launcher import Launcher
from consortium.launch.links import set_faults
from consortium.node.audit_records import Span, parse_spans
from consortium.node.client import Answer, ask, fetch_agent_card, open_client
from consortium.node.config import load_config
from consortium.node.setup import local_api_key

BREAKER = "breaker_open_s = 0.5\nbreaker_max_open_s = 10.0\nbreaker_probe_timeout_s = 2.0\n"
PEERS = ("globex", "initech")
SUBNET = "10.201.9.0/24"


def federation_file(directory: Path, peer_timeout_s: float) -> Path:
    text = (
        f'[federation]\nname = "WAN benchmark"\ndirectory = "fed"\nisolate = "netns"\n'
        f'subnet = "{SUBNET}"\n\n[peers]\npeer_timeout_s = {peer_timeout_s}\n{BREAKER}'
    )
    for org in ("acme", *PEERS):
        text += f'\n[[org]]\nid = "{org}"\nbackend = "echo"\nthreads = 1\n'
    path = directory / "wan.toml"
    path.write_text(text)
    return path


def set_link(launcher: Launcher, link: str, *, heal: bool = False, **changes: Any) -> None:
    """Changes a link's faults (what `consortium net set` does) and waits until every
    link proxy applied them."""
    links = set_faults(launcher.links_path, link, changes, heal=heal)
    line = f"links version {links.version} applied"
    deadline = time.monotonic() + 30
    while not all(line in p.log() for p in launcher.proxies.values()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the link proxies did not apply version {links.version}")
        time.sleep(0.02)


def ask_acme(launcher: Launcher, text: str, peer: str) -> Answer:
    """acme's task escalated to `peer`, asked from this machine over acme's bridge
    address with acme's own API key."""

    async def go() -> Answer:
        cfg = load_config(launcher.directory / "acme" / "node.toml")
        card = await fetch_agent_card(cfg.http_url)
        client = open_client(card, api_key=local_api_key(cfg))
        try:
            return await ask(client, text, options={"peer": peer}, timeout=120)
        finally:
            await client.close()

    return asyncio.run(go())


def cell(launcher: Launcher, rtt_ms: float, loss: float, tasks: int) -> dict[str, Any]:
    for peer in PEERS:
        set_link(launcher, f"acme:{peer}", delay_ms=rtt_ms / 2, loss=loss)
    window = [time.time()]
    latencies: list[float] = []
    completed = 0
    for i in range(tasks):
        peer = PEERS[i % 2]
        started = time.perf_counter()
        answer = ask_acme(launcher, f"task {i} over {rtt_ms} ms", peer)
        latencies.append(time.perf_counter() - started)
        completed += answer.state == "completed" and answer.provenance.org == peer
    window.append(time.time())
    latencies.sort()
    return {
        "p50_s": round(statistics.median(latencies), 4),
        "p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 4),
        "completed": round(completed / tasks, 3),
        "_window": window,
    }


def read_spans(launcher: Launcher) -> list[Span]:
    """Every node's exported spans (after the launcher stopped them: flushed)."""
    spans: list[Span] = []
    for org in ("acme", *PEERS):
        cfg = load_config(launcher.directory / org / "node.toml")
        path = cfg.data_dir / cfg.telemetry.path
        found, problems = parse_spans(path.read_text().splitlines(), str(path))
        if problems:
            raise ValueError("; ".join(problems))
        spans += found
    return spans


def trust_share(spans: list[Span], window: list[float]) -> dict[str, float]:
    """The trust pipeline's time in each escalation acme made within `window`, and its
    share of that escalation's `invoke_agent` span (p50 of each)."""
    by_parent: dict[str, list[Span]] = {}
    for span in spans:
        by_parent.setdefault(span.parent_id, []).append(span)
    origin_ms: list[float] = []
    peer_ms: list[float] = []
    shares: list[float] = []
    for call in spans:
        if not (
            call.org == "acme"
            and call.name.startswith("invoke_agent ")
            and call.attrs.get("consortium.mode") == "ask"
            and call.attrs.get("consortium.verdict") == "verified"
            and window[0] <= call.start <= window[1]
        ):
            continue
        origin = 0.0
        peer = 0.0
        for child in by_parent.get(call.span_id, []):
            if child.org == "acme" and child.name in ("consortium.redact", "consortium.sign"):
                origin += child.end - child.start
            elif child.org == "acme" and child.name == "consortium.verify":
                origin += float(child.attrs["consortium.verify.ms"]) / 1e3
            elif child.org != "acme" and child.name.startswith("a2a.receive "):
                # The peer's server span hangs under the call (the traceparent it signed).
                peer += float(child.attrs["consortium.sign.ms"]) / 1e3
                peer += sum(
                    s.end - s.start
                    for s in by_parent.get(child.span_id, [])
                    if s.name == "consortium.verify"
                )
        origin_ms.append(origin * 1e3)
        peer_ms.append(peer * 1e3)
        shares.append((origin + peer) / (call.end - call.start))
    if not shares:
        raise ValueError(f"no escalation spans in the window {window}")
    return {
        "escalations": len(shares),
        "origin_ms_p50": round(statistics.median(origin_ms), 3),
        "peer_ms_p50": round(statistics.median(peer_ms), 3),
        "share_p50": round(statistics.median(shares), 4),
    }


def partition(launcher: Launcher) -> dict[str, float]:
    for peer in PEERS:
        set_link(launcher, f"acme:{peer}", delay_ms=0.0, loss=0.0)
    started = time.perf_counter()
    set_link(launcher, "acme:globex", partition=True)
    while True:
        answer = ask_acme(launcher, "there?", "globex")
        if answer.state == "failed" and "circuit is open" in answer.status_text:
            break
    detected = time.perf_counter() - started
    started = time.perf_counter()
    set_link(launcher, "acme:globex", heal=True)
    while ask_acme(launcher, "back?", "globex").state != "completed":
        pass
    return {"detect_s": round(detected, 3), "recover_s": round(time.perf_counter() - started, 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--peer-timeout", type=float, default=30.0, help="peer_timeout_s")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        launcher = Launcher(load_federation_file(federation_file(Path(tmp), args.peer_timeout)))
        try:
            started = time.perf_counter()
            launcher.start()
            up_s = time.perf_counter() - started
            ask_acme(launcher, "warm up", "globex")
            ask_acme(launcher, "warm up", "initech")
            grid = {
                f"rtt_{rtt}ms_loss_{int(loss * 100)}pct": cell(launcher, rtt, loss, args.tasks)
                for rtt in (0, 50, 200)
                for loss in (0.0, 0.01, 0.05)
            }
            base = grid["rtt_0ms_loss_0pct"]["p50_s"]
            for row in grid.values():
                row["ratio_p50_over_clean"] = round(row["p50_s"] / base, 2)
            parted = partition(launcher)
        finally:
            launcher.stop()
        spans = read_spans(launcher)
        for row in grid.values():
            row["trust"] = trust_share(spans, row.pop("_window"))
        result = {
            "grid": grid,
            "partition": parted,
            "up_s": round(up_s, 2),
            "_setup": {
                "tasks_per_cell": args.tasks,
                "model": "echo",
                "launcher": "consortium up --isolate netns (Launcher), 3 organizations",
                "peer_timeout_s": args.peer_timeout,
                "breaker": "open 0.5 s doubling to 10 s, probe 2 s",
                "loss_rto": "max(200 ms, 2 x RTT), doubled per repeated loss",
            },
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
