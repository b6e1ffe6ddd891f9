"""`consortium init`, `consortium node start`, `consortium node status` and `consortium
ask`: create this organization's node, run it, see its health and load, and ask it.
Wiring only.

A user error (bad config, missing file, unreachable node) prints one clear line and
exits with the error's code; no traceback.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from consortium.cli.common import err, fail, out, run, write_through
from consortium.errors import ConfigError, TaskError
from consortium.node.config import ORG_ID_PATTERN, NodeConfig, load_config
from consortium.sqlite import check_writable

SWITCH_INTERVAL_S = 0.0005


def _setup_logging(level: str) -> None:
    from consortium import logsafe

    logsafe.install(level)


def init(
    org_id: Annotated[
        str, typer.Argument(help="Organization id: lowercase letters, digits, dashes.")
    ],
    dir: Annotated[Path, typer.Option("--dir", help="Directory to write node.toml and keys into.")],
    model: Annotated[
        str, typer.Option(help="Model name from the registry, or a GGUF path.")
    ] = "smollm2-135m",
    display_name: Annotated[str, typer.Option(help="Human-readable organization name.")] = "",
    grpc_port: Annotated[
        int, typer.Option(help="gRPC port (0: pick a free one at start).")
    ] = 50051,
    http_port: Annotated[int, typer.Option(help="HTTP port (0: pick a free one at start).")] = 8080,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    public_host: Annotated[
        str,
        typer.Option(
            help="Address other organizations reach the node at, when not --host "
            "(agent card, TLS certificate)."
        ),
    ] = "",
    tls: Annotated[
        bool, typer.Option(help="Generate a local CA and a TLS certificate for gRPC.")
    ] = False,
    mtls: Annotated[
        bool, typer.Option(help="Like --tls, and require client certificates (mutual TLS).")
    ] = False,
    tls_ca: Annotated[
        Path | None,
        typer.Option(help="Directory of an existing local CA to share (default: DIR/tls/ca)."),
    ] = None,
) -> None:
    """Create node.toml, an Ed25519 key pair (private key mode 0600) and the agent card."""
    from consortium.node.setup import init_node

    def go() -> None:
        import re

        if not re.match(ORG_ID_PATTERN, org_id):
            raise ConfigError(
                f"invalid organization id {org_id!r}: use lowercase letters, digits and dashes",
                key="ORG_ID",
            )
        result = init_node(
            org_id,
            dir,
            model=model,
            display_name=display_name,
            grpc_port=grpc_port,
            http_port=http_port,
            host=host,
            public_host=public_host,
            tls=tls,
            mtls=mtls,
            tls_ca_dir=tls_ca,
        )
        out.print(f"wrote {result.config_path}")
        out.print(f"wrote {result.private_key_path} (mode 0600)")
        out.print(f"wrote {result.public_key_path} (key id {result.key_id})", soft_wrap=True)
        out.print(f"wrote {result.card_path}")

    run(go)


def node_start(
    config: Annotated[Path, typer.Option("--config", "-c", help="Path to node.toml.")],
    grpc_port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="Listen on this A2A gRPC port (0: a free one)."),
    ] = None,
    http_port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="Listen on this HTTP port (0: a free one)."),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="This process's own directory (endpoints.json, traces): another replica "
            "of the node on the same machine. Its state stays in the shared database.",
        ),
    ] = None,
) -> None:
    """Run the node in the foreground until SIGTERM or SIGINT. With PostgreSQL storage,
    start it again with other ports and --data-dir for another replica on this machine
    (on another machine, the same node.toml and keys as they are)."""
    cfg = run(lambda: replica_config(load_config(config), grpc_port, http_port, data_dir))
    # A full or read-only data directory: one line, before anything heavy is imported.
    run(lambda: check_writable(cfg.data_dir))
    from consortium.llm.backends import backend_factory
    from consortium.node.app import Node, serve_until_signalled

    _setup_logging(cfg.logging.level)
    # Everything the node writes (database, traces, runtime files) is the organization's.
    os.umask(0o077)

    # The model thread needs the GIL for a moment between two decode steps; with the
    # default 5 ms switch interval it can wait that long behind the event loop's work on
    # the previous token. 0.5 ms bounds that wait (measured: benchmarks/node_overhead.py).
    sys.setswitchinterval(SWITCH_INTERVAL_S)

    run(
        lambda: asyncio.run(
            serve_until_signalled(Node(cfg, backend_factory(cfg.model, cfg.base_dir)))
        )
    )


def replica_config(
    cfg: NodeConfig, grpc_port: int | None, http_port: int | None, data_dir: Path | None
) -> NodeConfig:
    """node.toml with the command line's ports and data directory."""
    server = {
        k: v for k, v in (("grpc_port", grpc_port), ("http_port", http_port)) if v is not None
    }
    if server:
        cfg = cfg.model_copy(update={"server": cfg.server.model_copy(update=server)})
    if data_dir is not None:
        if cfg.storage_location().kind != "postgresql":
            raise ConfigError(
                "another data directory with SQLite storage would be a second node with the "
                "same keys and state of its own; replicas share their state on PostgreSQL "
                "([storage] url)",
                key="--data-dir",
            )
        node = cfg.node.model_copy(update={"data_dir": str(data_dir.expanduser().resolve())})
        cfg = cfg.model_copy(update={"node": node})
    return cfg


def node_status(
    config: Annotated[Path, typer.Option("--config", "-c", help="Path to node.toml.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print /healthz as it is.")] = False,
    api_key_file: Annotated[
        Path | None,
        typer.Option(help="File holding the API key (default: keys/api.key beside node.toml)."),
    ] = None,
) -> None:
    """Show a running node's health and its model's load: slots, queue, batch size,
    prefix-cache hits, refusals (its /healthz; the details need loopback or an admin
    API key)."""
    from consortium.node.app import running_http_url
    from consortium.node.client import fetch_health

    cfg = run(lambda: load_config(config))
    api_key = run(lambda: _api_key(cfg, api_key_file))
    url = running_http_url(cfg)
    body = run(lambda: fetch_health(url, api_key, verify=cfg.client_ssl_context()))
    if as_json:
        out.print_json(data=body)
        return
    for line in status_lines(body):
        out.print(line, highlight=False, markup=False, soft_wrap=True)


def status_lines(body: dict[str, Any]) -> list[str]:
    """/healthz as a few lines: the node, its model's load, the node's admission."""
    org = body.get("org_id")
    lines = [f"node {org}: {body['status']}" if org else f"node: {body['status']}"]
    if org is None:
        lines.append("(details need loopback or an admin API key)")
        return lines
    m = body.get("model_load")
    if isinstance(m, dict):
        slots = m["slots"]
        lines.append(
            f"model {body.get('model', '?')}: {m['slots_busy']}/{slots} "
            f"slot{'s' if slots != 1 else ''} busy, {m['queued']} queued "
            f"(max {m['max_queue']}), {m['refused']} refused"
        )
        lines.append(
            f"  decode steps {m['steps']}, mean batch {m['mean_batch']:.2f}; prefix cache "
            f"{m['prefix_hits']}/{m['prefix_lookups']} prompts "
            f"({m['prefix_hit_rate'] * 100:.1f} %), {m['prefix_tokens_reused']} of "
            f"{m['prompt_tokens']} prompt tokens reused"
        )
    load = body.get("load")
    if isinstance(load, dict):
        refused = ", ".join(f"{k} {v}" for k, v in sorted(load["refused"].items())) or "none"
        job = "?" if load["job_s"] is None else f"{load['job_s']:g} s"
        lines.append(
            f"requests: {load['in_flight']} in flight (peak {load['peak_in_flight']}), "
            f"{load['admitted']} admitted, refused: {refused}; time per job {job}"
        )
    return lines


def ask(
    question: Annotated[str, typer.Argument(help="The question to send.")],
    config: Annotated[
        Path, typer.Option("--config", "-c", help="Path to node.toml of the node to ask.")
    ],
    max_tokens: Annotated[int | None, typer.Option(help="Override the node's max_tokens.")] = None,
    temperature: Annotated[
        float | None, typer.Option(help="Override the node's temperature.")
    ] = None,
    transport: Annotated[str, typer.Option(help="grpc or jsonrpc.")] = "grpc",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 300.0,
    peer: Annotated[
        str | None, typer.Option(help="Ask this member of the federation, through the node.")
    ] = None,
    api_key_file: Annotated[
        Path | None,
        typer.Option(help="File holding the API key (default: keys/api.key beside node.toml)."),
    ] = None,
) -> None:
    """Send a task to a running node over A2A and stream the answer.

    Authenticates with the API key `init` left beside node.toml (or --api-key-file, or
    $CONSORTIUM_API_KEY); without one, in a federation, the request is signed with the
    organization's key. With --peer the node forwards it, signed, to that member and
    verifies the signed answer."""
    from a2a.utils.constants import TransportProtocol

    from consortium.node.a2a.request_handler import local_signer
    from consortium.node.app import running_http_url
    from consortium.node.client import ask as ask_node
    from consortium.node.client import fetch_agent_card, open_client

    cfg = run(lambda: load_config(config))
    if transport not in ("grpc", "jsonrpc"):
        fail(
            ConfigError(f"unknown transport {transport!r}; use grpc or jsonrpc", key="--transport")
        )
    options: dict[str, Any] = {}
    if max_tokens is not None:
        options["max_tokens"] = max_tokens
    if temperature is not None:
        options["temperature"] = temperature
    if peer is not None:
        options["peer"] = peer
    api_key = run(lambda: _api_key(cfg, api_key_file))
    sign = None if api_key else run(lambda: local_signer(cfg))

    async def go() -> None:
        verify = cfg.client_ssl_context()
        card = await fetch_agent_card(running_http_url(cfg), verify=verify)
        binding = TransportProtocol.GRPC if transport == "grpc" else TransportProtocol.JSONRPC
        client = open_client(
            card,
            transport=binding,
            credentials=cfg.client_credentials(),
            api_key=api_key,
            verify=verify,
        )
        try:
            answer = await ask_node(
                client,
                question,
                options=options or None,
                timeout=timeout,
                on_text=write_through,
                sign=sign,
            )
        finally:
            await client.close()
        write_through("\n")
        p = answer.provenance
        if answer.state != "completed":
            raise TaskError(f"task {answer.task_id} {answer.state}: {answer.status_text}")
        if p.verified is not None:
            err.print(
                f"[dim]route {p.route or '?'} · answer signature verified: {p.verified}[/dim]",
                highlight=False,
            )
        err.print(
            f"[dim]task {answer.task_id} · {p.org or '?'} · {p.model or '?'} · "
            f"{p.input_tokens or 0} in / {p.output_tokens or 0} out tokens · "
            f"{answer.latency_s * 1000:.0f} ms[/dim]",
            highlight=False,
        )

    run(lambda: asyncio.run(go()))


def _api_key(cfg: NodeConfig, path: Path | None) -> str | None:
    from consortium.node.setup import local_api_key

    if path is not None:
        try:
            return path.read_text().strip() or None
        except OSError as e:
            raise ConfigError(
                f"cannot read the API key: {e.strerror}", key="--api-key-file"
            ) from None
    return os.environ.get("CONSORTIUM_API_KEY") or local_api_key(cfg)
