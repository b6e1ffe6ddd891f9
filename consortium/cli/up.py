"""`consortium up | down | status FILE`: a federation from one file
(consortium/launch/launcher.py), its nodes shown as tables."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from consortium.cli.common import out, run, write_through

FileArg = Annotated[Path, typer.Argument(help="The federation file (TOML).")]


class Isolate(StrEnum):
    none = "none"
    netns = "netns"


def up(
    file: FileArg,
    detach: Annotated[
        bool,
        typer.Option(
            "--detach", "-d", help="Run the supervisor in the background; `down FILE` stops it."
        ),
    ] = False,
    isolate: Annotated[
        Isolate | None,
        typer.Option(
            help="Where each organization runs (default: the file's `isolate`): netns puts "
            "each in its own network namespace behind a link proxy (root).",
        ),
    ] = None,
) -> None:
    """Create what the file declares and does not exist yet (federation, keys, node.toml,
    roster entries), start every node under one supervisor, and print where each is once
    all are ready and admitted. Without --detach it supervises until Ctrl-C or SIGTERM."""
    from consortium.launch.launcher import AlreadyRunning, serve
    from consortium.launch.launcher import detach as start_detached

    mode = isolate.value if isolate is not None else None

    def go() -> None:
        try:
            if detach:
                _nodes_table(start_detached(file, isolate=mode), "up")
            else:
                serve(file, _ready, mode)
                out.print("stopped every node")
        except AlreadyRunning as e:
            out.print(f"{file}: {e}; nothing changed")
            _nodes_table(e.state, "running")

    run(go)


def _ready(state: dict[str, Any]) -> None:
    _nodes_table(state, "up")
    out.print("supervising; Ctrl-C or `consortium down FILE` stops every node")


def down(file: FileArg) -> None:
    """Stop the federation's supervisor and wait until every node has exited."""
    from consortium.launch.launcher import down as stop

    orgs = run(lambda: stop(file))
    out.print(f"stopped {len(orgs)} node(s): {', '.join(orgs)}")


def status(
    file: FileArg,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Each node: pid, ports, ready, restarts, the peers it sees and their trust states
    (its /healthz, read with the organization's own API key)."""
    from consortium.launch.launcher import status as read_status

    state = run(lambda: read_status(file))
    if as_json:
        write_through(json.dumps(state, separators=(",", ":")) + "\n")
        return
    table = Table(
        title=f"{state['federation']}: launcher pid {state['supervisor']['pid']} "
        f"{'running' if state['running'] else 'NOT running'}"
    )
    netns = "network" in state
    columns = ["org", "pid", "gRPC", "HTTP", "ready", "restarts", "peers (trust, circuit)"]
    if netns:
        columns.insert(1, "address")
    for col in columns:
        table.add_column(col, overflow="fold")
    for org, node in state["nodes"].items():
        health = node.get("health", {})
        peers = health.get("federation", {}).get("peers", {})
        seen = ", ".join(f"{p} ({v['trust']}, {v['circuit']})" for p, v in peers.items())
        ready = health.get("status", node.get("error", node["state"]))
        row = [org, str(node.get("pid", "-")), node.get("grpc", "-"), node.get("http", "-")]
        row += [ready, str(node["restarts"]), seen]
        if netns:
            row.insert(1, node.get("address", "-"))
        table.add_row(*row)
    out.print(table)
    _network_line(state)


def _network_line(state: dict[str, Any]) -> None:
    for node in state.get("nodes", {}).values():
        if node.get("drift"):
            out.print(f"note: {node['drift']}", highlight=False, soft_wrap=True, markup=False)
    net = state.get("network")
    if net:
        out.print(
            f"network namespaces consortium-{net['name']}-ORG on bridge {net['bridge']} "
            f"({net['subnet']}); links file {net['links']} (`consortium net set|show`)",
            highlight=False,
            soft_wrap=True,
        )


def _nodes_table(state: dict[str, Any], title: str) -> None:
    table = Table(title=f"{state.get('federation', '')}: {title}")
    netns = "network" in state
    columns = ["org", "pid", "A2A gRPC", "HTTP (JSON-RPC, /v1)", "log"]
    if netns:
        columns.insert(1, "namespace")
    for col in columns:
        table.add_column(col, overflow="fold")
    for org, node in state.get("nodes", {}).items():
        row = [org, str(node.get("pid", "-")), node.get("grpc", "-"), node.get("http", "-")]
        row.append(node["log"])
        if netns:
            row.insert(1, node.get("namespace", "-"))
        table.add_row(*row)
    out.print(table)
    _network_line(state)
