"""`consortium demo`: three organizations on loopback, each a separate node process with a
real model, form a signed federation; each answers a few questions over A2A gRPC (requests
signed, verified before the model), and one question travels between organizations as a
signed, verified peer call. The answers as tables."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from a2a.types import a2a_pb2
from rich.console import Console
from rich.table import Table

from consortium.errors import NodeUnavailableError
from consortium.federation.admin import (
    FederationPaths,
    add_member,
    create_federation,
    default_paths,
    member_from_card,
    read_card,
)
from consortium.federation.roster import load_roster
from consortium.node.client import Answer, ask, fetch_agent_card, open_client
from consortium.node.config import load_config
from consortium.node.federated import local_signer
from consortium.node.setup import init_node

ORGS = (
    ("acme", "Acme Health", "smollm2-135m"),
    ("globex", "Globex Research", "smollm2-135m"),
    ("initech", "Initech Labs", "gemma3-270m"),
)
QUESTIONS = (
    "What is the capital of Italy?",
    "What do bees make from nectar?",
    "How many days are there in a week?",
)
START_TIMEOUT_S = 180.0


@dataclass
class RunningNode:
    org_id: str
    model: str
    config: Path
    process: subprocess.Popen[str]
    http_url: str = ""
    # Signs requests to this node with its organization's key (set once it has joined).
    signer: Callable[[a2a_pb2.Message], a2a_pb2.Message] | None = None


def start_node(
    config: Path, log_path: Path, timeout: float = START_TIMEOUT_S
) -> tuple[subprocess.Popen[str], str]:
    """Starts `consortium node start` and waits for its READY line; returns (process, http url)."""
    log = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "consortium.cli", "node", "start", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log.close()
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("READY "):
            fields = dict(part.split("=", 1) for part in line.split()[1:])
            return proc, fields["http"]
    proc.kill()
    tail = log_path.read_text()[-2000:]
    raise NodeUnavailableError(f"node {config} did not start; its log ends with:\n{tail}")


def stop_node(proc: subprocess.Popen[str], timeout: float = 30.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


async def _ask(node: RunningNode, question: str, options: dict[str, Any]) -> Answer:
    """A question to one's own node, signed with the organization's key."""
    client = open_client(await fetch_agent_card(node.http_url))
    try:
        return await ask(client, question, options=options, timeout=180, sign=node.signer)
    finally:
        await client.close()


async def _ask_all(nodes: list[RunningNode]) -> list[tuple[RunningNode, str, Answer]]:
    async def one_org(node: RunningNode) -> list[tuple[RunningNode, str, Answer]]:
        return [(node, q, await _ask(node, q, {"max_tokens": 48})) for q in QUESTIONS]

    per_org = await asyncio.gather(*(one_org(n) for n in nodes))
    return [r for rs in per_org for r in rs]


async def _wait_for_roster(nodes: list[RunningNode], version: int, timeout: float = 30.0) -> None:
    """Until every node has hot-reloaded the roster to at least this version."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as http:
        while True:
            seen = [(await http.get(n.http_url + "/healthz")).json()["federation"] for n in nodes]
            if all(f["roster_version"] >= version for f in seen):
                return
            if time.monotonic() > deadline:
                raise NodeUnavailableError("the nodes did not pick up the federation roster")
            await asyncio.sleep(0.2)


def _join(nodes: list[RunningNode], paths: FederationPaths, console: Console) -> None:
    """The admin admits every node from the agent card it serves."""
    for node in nodes:
        if load_roster(paths.roster).member(node.org_id) is None:
            card, card_url = read_card(node.http_url)
            add_member(paths.roster, paths.admin_private, member_from_card(card, card_url))
    roster = load_roster(paths.roster)
    asyncio.run(_wait_for_roster(nodes, roster.version))
    for node in nodes:
        node.signer = local_signer(load_config(node.config))
    console.print(
        f"  federation {roster.federation_id}: {len(roster.members)} members, roster version "
        f"{roster.version} signed by the admin key; every message below is signed and verified"
    )


def _answers_table(results: list[tuple[RunningNode, str, Answer]]) -> Table:
    table = Table(title="Answers from three organizations (real models, A2A over gRPC, signed)")
    for col in ("question", "organization", "model", "answer", "tokens in/out", "latency"):
        table.add_column(col, overflow="fold")
    for node, question, answer in results:
        p = answer.provenance
        table.add_row(
            question,
            node.org_id,
            str(p.get("model", node.model)),
            _shown(answer),
            f"{int(p.get('inputTokens', 0))}/{int(p.get('outputTokens', 0))}",
            f"{answer.latency_s * 1000:.0f} ms",
        )
    return table


def _shown(answer: Answer) -> str:
    if answer.state == "completed":
        return answer.text.strip()
    return f"[{answer.state}] {answer.status_text}"


def _across(origin: RunningNode, peer: RunningNode) -> Table:
    question = "What is the largest planet in the solar system?"
    answer = asyncio.run(_ask(origin, question, {"max_tokens": 32, "peer": peer.org_id}))
    p = answer.provenance
    table = Table(title="A question across organizations (signed request, verified signed answer)")
    for col in ("question", "route", "model", "answer", "verified", "latency"):
        table.add_column(col, overflow="fold")
    table.add_row(
        question,
        str(p.get("route", f"{origin.org_id}->{peer.org_id}")),
        str(p.get("model", "?")),
        _shown(answer),
        f"{p.get('verified', False)} ({int(p.get('verifiedEvents', 0))} signed events)",
        f"{answer.latency_s * 1000:.0f} ms",
    )
    return table


DEMO_GROUP = """
[groups.panel]                  # a vote across the three organizations
protocol = "vote"
members = ["self", "globex", "initech"]
"""
# acme's learned router reads the policy the federation trains during the demo.
DEMO_ROUTING = """
[routing]
policy = "{policy}"
target = "initech"
threshold = 0.5
"""
# Benchmark items each organization's routing records are seeded from (a third each,
# by topic); their model outputs are computed once and cached.
SEED_SPLIT, SEED_ITEMS = "arc_easy_dev", 60
TRAIN_ROUNDS = 3
MC_QUESTION = "Which part of a plant takes in water from the soil?"
MC_CHOICES = ["the flowers", "the roots", "the leaves", "the seeds"]


def _collaboration(origin: RunningNode) -> Table:
    """A multiple-choice question routed three ways from one organization."""
    table = Table(title=f"Routing and collaboration from {origin.org_id}: {MC_QUESTION}")
    for col in (
        "route asked",
        "route taken",
        "members (tokens)",
        "answer",
        "confidence",
        "latency",
    ):
        table.add_column(col, overflow="fold")
    for route in ("self:margin", "always:initech", "panel"):
        answer = asyncio.run(_ask(origin, MC_QUESTION, {"choices": MC_CHOICES, "route": route}))
        p = answer.provenance
        members = ", ".join(
            f"{org} ({int(m.get('tokens', 0))})" for org, m in p.get("members", {}).items()
        )
        table.add_row(
            route,
            str(p.get("route", "?")),
            members,
            _shown(answer),
            f"{float(p.get('confidence', 0)):.2f}",
            f"{answer.latency_s * 1000:.0f} ms",
        )
    return table


def _train_and_route(
    nodes: list[RunningNode], paths: FederationPaths, base: Path, console: Console
) -> None:
    """Each organization's routing records (seeded from benchmark items), a routing
    policy trained across the three with Flower's simulation engine, signed by the
    federation admin, and acme routing with it (its node reloads the file)."""
    from consortium.node.policy_training import TrainRequest, seed_node_records, train_simulated

    data_dir = base / "training"
    data_dir.mkdir(exist_ok=True)
    with console.status(f"seeding routing records from {SEED_ITEMS} {SEED_SPLIT} items"):
        for i, node in enumerate(nodes):
            cfg = load_config(node.config)
            n = seed_node_records(cfg, SEED_SPLIT, i, len(nodes), SEED_ITEMS).stored
            link = data_dir / f"org-{i}.sqlite3"
            link.unlink(missing_ok=True)
            link.symlink_to(cfg.database_path.resolve())
            console.print(f"  {node.org_id:8} {n} routing records (features and outcomes only)")
    policy = base / "policy.json"
    req = TrainRequest(out=policy, rounds=TRAIN_ROUNDS, roster=paths.roster, version="demo-1")
    with console.status(
        f"training the routing policy across {len(nodes)} organizations (Flower simulation)"
    ):
        artifact, _ = train_simulated(req, len(nodes), data_dir)
    console.print(
        f"  policy {artifact.version}: {TRAIN_ROUNDS} rounds of FedAvg, held-out AUC "
        f"{artifact.metrics.get('final_eval_auc', float('nan')):.2f} on "
        f"{int(artifact.metrics['train_examples'])} records, signed for federation "
        f"{artifact.federation_id} -> {policy}"
    )
    answer = asyncio.run(_ask(nodes[0], MC_QUESTION, {"choices": MC_CHOICES, "route": "learned"}))
    p = answer.provenance
    console.print(
        f"  {nodes[0].org_id} routes with it: {p.get('route')} "
        f"({p.get('decision', {}).get('reason', answer.status_text)}) -> {_shown(answer)}"
    )


def run_demo(workdir: Path | None, console: Console) -> None:
    base = workdir or Path(tempfile.mkdtemp(prefix="consortium-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]Consortium demo[/bold]: three organizations on loopback, in {base}")
    fed_dir = base / "federation"
    if not (fed_dir / "federation.toml").exists():
        create_federation("Consortium Demo", fed_dir)
    paths = default_paths(fed_dir / "federation.toml")
    nodes: list[RunningNode] = []
    try:
        for org_id, name, model in ORGS:
            node_dir = base / org_id
            config = node_dir / "node.toml"
            if not config.exists():
                init_node(
                    org_id, node_dir, model=model, display_name=name, grpc_port=0, http_port=0
                )
                with config.open("a") as f:
                    f.write(
                        f'\n[federation]\nroster = "{paths.roster.resolve()}"\n'
                        f'admin_key = "{paths.admin_public.resolve()}"\n'
                    )
                    if org_id == ORGS[0][0]:
                        f.write(DEMO_GROUP)
                        f.write(DEMO_ROUTING.format(policy=(base / "policy.json").resolve()))
            with console.status(f"starting {org_id} ({model})"):
                proc, url = start_node(config, node_dir / "node.log")
            nodes.append(RunningNode(org_id, model, config, proc, url))
            console.print(f"  {org_id:8} {model:13} ready at {url}")
        _join(nodes, paths, console)
        with console.status("asking each organization a few questions over A2A gRPC"):
            results = asyncio.run(_ask_all(nodes))
        console.print(_answers_table(results))
        with console.status(f"{nodes[0].org_id} asks {nodes[-1].org_id} across organizations"):
            console.print(_across(nodes[0], nodes[-1]))
        with console.status("routing a multiple-choice question: local draft, escalation, vote"):
            console.print(_collaboration(nodes[0]))
        _train_and_route(nodes, paths, base, console)
    finally:
        for node in nodes:
            code = stop_node(node.process)
            console.print(f"  stopped {node.org_id} (exit {code})")
