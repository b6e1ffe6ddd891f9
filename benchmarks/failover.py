"""How fast does a node route around a dead peer, and take a restarted one back?

Three in-process echo nodes on loopback: acme, the origin, and its peers globex and
initech, each peer's gRPC port behind a FaultProxy (consortium/launch/faultproxy.py)
that the roster lists. acme routes every free-text task to a peer (`random:1.0`: globex,
first among equals, whenever its circuit lets it be chosen). A peer's death is its
link's: the proxy resets every connection and refuses new ones, which is what a
SIGKILLed process looks like from the network; its restart: the proxy listens again (the
node behind it keeps running, so "ready" is exact). Measured in one run, with the
default breaker settings:

- baseline: an escalated task's latency with both peers healthy (p50);
- failover: globex dies while a task's request is on the wire to it; from the death to
  that task completing on initech (p50, max over --cycles deaths);
- reuse: from globex's return to the first automatically routed task it answers, tasks
  sent one after another (p50, max over the same cycles);
- storm: --storm deaths and returns in a row (down 0.5 s, up 2 s each, tasks flowing:
  who answered them, and how many failed — those a death cut after part of their answer
  was shown, which are not asked again), then the reuse time after the last return;
- blackhole: globex's link silently drops everything (peer_timeout_s 5 s): the first
  task's latency (one timeout, then initech) and the next tasks' p50.

Prints one JSON object with the figures and their ratios to the baseline p50.

    .venv/bin/python benchmarks/failover.py [--cycles 10] [--storm 12]
"""

from __future__ import annotations

import os

# As in a node process (consortium/__init__.py): before a2a is imported.
os.environ.setdefault("OTEL_INSTRUMENTATION_A2A_SDK_ENABLED", "false")

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from consortium.federation.admin import (
    add_member,
    create_federation,
    member_from_card,
    update_roster,
)
from consortium.federation.roster import Roster
from consortium.launch.faultproxy import FaultProxy
from consortium.llm.backends import backend_factory
from consortium.node.app import Node
from consortium.node.client import ask, open_client
from consortium.node.config import parse_config
from consortium.node.setup import init_node
from consortium.trust.keys import load_private_key
from consortium.trust.signing import SigningIdentity, sign_request

ORIGIN, PEERS = "acme", ("globex", "initech")
PEER_TIMEOUT_S = 5.0


async def until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.01)


class Bench:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        paths = create_federation("Bench Failover", tmp / "fed")
        self.roster, self.admin_key, self.admin_pub = (
            paths.roster,
            paths.admin_private,
            paths.admin_public,
        )
        self.nodes: dict[str, Node] = {}
        self.proxies: dict[str, FaultProxy] = {}
        self._client: Any = None
        self._sign: Any = None

    def config(self, org: str) -> Any:
        d = self.tmp / org
        init_node(org, d, grpc_port=0, http_port=0)
        data: dict[str, Any] = {
            "node": {"org_id": org},
            "server": {"grpc_port": 0, "http_port": 0, "shutdown_grace_s": 1.0},
            "model": {"backend": "echo", "name": f"echo-{org}"},
            "federation": {
                "roster": str(self.roster),
                "admin_key": str(self.admin_pub),
                "peer_timeout_s": PEER_TIMEOUT_S,
            },
        }
        if org == ORIGIN:
            data["routing"] = {"router": "random:1.0"}
        return parse_config(data, path=d / "node.toml")

    async def start(self) -> None:
        for org in (ORIGIN, *PEERS):
            cfg = self.config(org)
            node = Node(cfg, backend_factory(cfg.model, cfg.base_dir))
            await node.start()
            self.nodes[org] = node
        async with httpx.AsyncClient() as http:
            for node in self.nodes.values():
                assert node.endpoints is not None
                url = node.endpoints.http_url + "/.well-known/agent-card.json"
                card = (await http.get(url)).json()
                add_member(self.roster, self.admin_key, member_from_card(card, url))
        for org in PEERS:
            endpoints = self.nodes[org].endpoints
            assert endpoints is not None
            self.proxies[org] = await FaultProxy(endpoints.grpc_target).start()

        def proxied(r: Roster) -> Roster:
            return r.model_copy(
                update={
                    "members": [
                        m.model_copy(
                            update={
                                "endpoints": m.endpoints.model_copy(
                                    update={"grpc": self.proxies[m.org_id].address}
                                )
                            }
                        )
                        if m.org_id in self.proxies
                        else m
                        for m in r.members
                    ]
                }
            )

        update_roster(self.roster, self.admin_key, proxied)

        def seen() -> bool:
            for node in self.nodes.values():
                roster = node.federation.roster.current()  # type: ignore[union-attr]
                for org in PEERS:
                    member = roster.member(org)
                    if member is None or member.endpoints.grpc != self.proxies[org].address:
                        return False
            return True

        await until(seen)
        origin = self.nodes[ORIGIN]
        key = load_private_key(origin.config.resolve(origin.config.identity.private_key))
        identity = SigningIdentity(key, ORIGIN, "bench-failover")
        self._sign = lambda m: sign_request(m, identity, recipient=ORIGIN)[0]
        self._client = open_client(origin.card)  # type: ignore[arg-type]

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.close()
        for proxy in self.proxies.values():
            await proxy.stop()
        for node in self.nodes.values():
            await node.stop()

    def breaker(self, org: str) -> Any:
        return self.nodes[ORIGIN].federation.peers.breaker(org)  # type: ignore[union-attr]

    async def task(self, text: str, **options: Any) -> tuple[str, float, float]:
        """One task to acme: who answered, when it started and when it ended."""
        started = time.perf_counter()
        answer = await ask(self._client, text, options=options or None, sign=self._sign)
        ended = time.perf_counter()
        if answer.state != "completed":
            raise RuntimeError(f"task failed: {answer.status_text}")
        return answer.provenance.org or "", started, ended

    async def healed(self) -> None:
        proxy = self.proxies["globex"]
        proxy.blackhole = False
        await proxy.revive()
        await until(lambda: self.breaker("globex").available())
        org, _, _ = await self.task("back?", peer="globex")
        assert org == "globex"

    async def reuse_after_return(self) -> float:
        """Revives globex and sends tasks one after another until globex answers one:
        seconds from the return to that answer."""
        proxy = self.proxies["globex"]
        await proxy.revive()
        returned = time.perf_counter()
        for i in range(100_000):
            org, _, ended = await self.task(f"who now {i}")
            if org == "globex":
                return ended - returned
        raise RuntimeError("globex never answered again")

    async def failover_cycle(self, i: int) -> tuple[float, float]:
        """globex dies with a task's request on the wire: (death -> that task done on
        initech, return -> globex answering again)."""
        proxy = self.proxies["globex"]
        proxy.blackhole = True  # the request goes out and is in flight when it dies
        held = proxy.held
        task = asyncio.create_task(self.task(f"in flight {i}"))
        await until(lambda: proxy.held > held)
        died = time.perf_counter()
        await proxy.kill()
        proxy.blackhole = False
        org, _, ended = await task
        if org != "initech":
            raise RuntimeError(f"the task in flight was answered by {org}")
        for j in range(3):  # a few tasks while globex is down: initech answers them
            await self.task(f"while down {i}.{j}")
        return ended - died, await self.reuse_after_return()


def stats(values: list[float]) -> dict[str, float]:
    return {
        "p50_s": round(statistics.median(values), 4),
        "max_s": round(max(values), 4),
        "n": len(values),
    }


async def run(cycles: int, storm: int, baseline_n: int, tmp: Path) -> dict[str, Any]:
    bench = Bench(tmp)
    await bench.start()
    try:
        for i in range(5):  # warm connections and caches
            await bench.task(f"warm {i}")
        baseline = []
        for i in range(baseline_n):
            org, started, ended = await bench.task(f"baseline {i}")
            if org != "globex":
                raise RuntimeError(f"healthy routing chose {org}")
            baseline.append(ended - started)
        failovers, reuses = [], []
        for i in range(cycles):
            failover, reuse = await bench.failover_cycle(i)
            failovers.append(failover)
            reuses.append(reuse)
            await bench.healed()

        # A restart storm: deaths and returns in a row, tasks flowing all along.
        proxy = bench.proxies["globex"]
        flowing = True
        answered: dict[str, int] = {}

        async def traffic() -> None:
            i = 0
            while flowing:
                try:
                    org, _, _ = await bench.task(f"storm {i}")
                except RuntimeError:  # killed after part of the answer was shown
                    org = "failed"
                answered[org] = answered.get(org, 0) + 1
                i += 1

        background = asyncio.create_task(traffic())
        for _ in range(storm):
            await proxy.kill()
            await asyncio.sleep(0.5)  # down
            await proxy.revive()
            await asyncio.sleep(2.0)  # up and ready
        await proxy.kill()
        await asyncio.sleep(0.5)
        flowing = False
        await background
        storm_reuse = await bench.reuse_after_return()
        await bench.healed()

        # A black hole: one timeout, then the circuit is open.
        proxy.blackhole = True
        _, started, ended = await bench.task("into the void")
        first = ended - started
        after = []
        for i in range(baseline_n):
            org, started, ended = await bench.task(f"after the void {i}")
            after.append(ended - started)
        await bench.healed()
    finally:
        await bench.stop()

    base = statistics.median(baseline)
    failover_s, reuse_s = stats(failovers), stats(reuses)
    after_p50 = statistics.median(after)
    return {
        "baseline_escalation": stats(baseline),
        "failover": failover_s,
        "reuse_after_restart": reuse_s,
        "storm": {
            "restarts": storm,
            "reuse_after_last_restart_s": round(storm_reuse, 4),
            "answered_during_storm": answered,
        },
        "blackhole": {
            "peer_timeout_s": PEER_TIMEOUT_S,
            "first_task_s": round(first, 4),
            "next_tasks": stats(after),
        },
        "ratio_failover_p50_over_baseline_p50": round(failover_s["p50_s"] / base, 2),
        "ratio_blackhole_next_p50_over_baseline_p50": round(after_p50 / base, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=10, help="deaths and returns measured")
    parser.add_argument("--storm", type=int, default=12, help="restarts in the storm")
    parser.add_argument("--baseline", type=int, default=50, help="healthy tasks timed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="consortium-failover-") as work:
        figures = asyncio.run(run(args.cycles, args.storm, args.baseline, Path(work)))
    result = {
        "benchmark": "failover",
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "settings": {
            "cycles": args.cycles,
            "storm": args.storm,
            "baseline": args.baseline,
            "breaker": "defaults ([federation] breaker_*)",
        },
        **figures,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
