"""`consortium demo`: three organizations on loopback, each a separate node process with a
real model, answering a few questions over A2A gRPC; the answers as a table."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from consortium.errors import NodeUnavailableError
from consortium.node.client import Answer, ask, fetch_agent_card, open_client
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


def start_node(
    config: Path, log_path: Path, timeout: float = START_TIMEOUT_S
) -> tuple[subprocess.Popen[str], str]:
    """Starts `consortium node start` and waits for its READY line; returns (process, http url)."""
    log = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "consortium.node.cli", "node", "start", "--config", str(config)],
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


async def _ask_all(nodes: list[RunningNode]) -> list[tuple[RunningNode, str, Answer]]:
    async def one_org(node: RunningNode) -> list[tuple[RunningNode, str, Answer]]:
        card = await fetch_agent_card(node.http_url)
        client = open_client(card)
        try:
            results = []
            for q in QUESTIONS:
                results.append(
                    (node, q, await ask(client, q, options={"max_tokens": 48}, timeout=120))
                )
            return results
        finally:
            await client.close()

    per_org = await asyncio.gather(*(one_org(n) for n in nodes))
    return [r for rs in per_org for r in rs]


def run_demo(workdir: Path | None, console: Console) -> None:
    base = workdir or Path(tempfile.mkdtemp(prefix="consortium-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]Consortium demo[/bold]: three organizations on loopback, in {base}")
    nodes: list[RunningNode] = []
    try:
        for org_id, name, model in ORGS:
            node_dir = base / org_id
            config = node_dir / "node.toml"
            if not config.exists():
                init_node(
                    org_id, node_dir, model=model, display_name=name, grpc_port=0, http_port=0
                )
            with console.status(f"starting {org_id} ({model})"):
                proc, url = start_node(config, node_dir / "node.log")
            nodes.append(RunningNode(org_id, model, config, proc, url))
            console.print(f"  {org_id:8} {model:13} ready at {url}")
        with console.status("asking each organization a few questions over A2A gRPC"):
            results = asyncio.run(_ask_all(nodes))
        table = Table(title="Answers from three organizations (real models, A2A over gRPC)")
        for col in ("question", "organization", "model", "answer", "tokens in/out", "latency"):
            table.add_column(col, overflow="fold")
        for node, question, answer in results:
            p = answer.provenance
            text = (
                answer.text.strip()
                if answer.state == "completed"
                else f"[{answer.state}] {answer.status_text}"
            )
            table.add_row(
                question,
                node.org_id,
                str(p.get("model", node.model)),
                text,
                f"{int(p.get('inputTokens', 0))}/{int(p.get('outputTokens', 0))}",
                f"{answer.latency_s * 1000:.0f} ms",
            )
        console.print(table)
    finally:
        for node in nodes:
            code = stop_node(node.process)
            console.print(f"  stopped {node.org_id} (exit {code})")
