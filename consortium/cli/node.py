"""The `consortium` command line: init, node start, ask, demo. Wiring only.

A user error (bad config, missing file, unreachable node) prints one clear line and
exits with the error's code; no traceback.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from consortium.errors import ConfigError, TaskError
from consortium.node import cli_training  # noqa: F401  (registers its commands)
from consortium.node.cli_common import (
    admin_key_path,
    app,
    bench_app,
    err,
    fail,
    federation_app,
    key_app,
    keys_app,
    node_app,
    out,
    policy_app,
    print_bench,
    run,
    write_through,
)
from consortium.node.config import ORG_ID_PATTERN, NodeConfig, load_config

SWITCH_INTERVAL_S = 0.0005


def _setup_logging(level: str) -> None:
    from consortium import logsafe

    logsafe.install(level)


@app.command()
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
            tls=tls,
            mtls=mtls,
            tls_ca_dir=tls_ca,
        )
        out.print(f"wrote {result.config_path}")
        out.print(f"wrote {result.private_key_path} (mode 0600)")
        out.print(f"wrote {result.public_key_path} (key id {result.key_id})", soft_wrap=True)
        out.print(f"wrote {result.card_path}")

    run(go)


@node_app.command("start")
def node_start(
    config: Annotated[Path, typer.Option("--config", "-c", help="Path to node.toml.")],
) -> None:
    """Run the node in the foreground until SIGTERM or SIGINT."""
    from consortium.node.backends import backend_factory
    from consortium.node.server import Node

    cfg = run(lambda: load_config(config))
    _setup_logging(cfg.logging.level)
    # Everything the node writes (database, traces, runtime files) is the organization's.
    os.umask(0o077)

    # The model thread needs the GIL for a moment between two decode steps; with the
    # default 5 ms switch interval it can wait that long behind the event loop's work on
    # the previous token. 0.5 ms bounds that wait (measured: benchmarks/node_overhead.py).
    sys.setswitchinterval(SWITCH_INTERVAL_S)

    async def serve() -> None:
        node = Node(cfg, backend_factory(cfg))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await node.start()
            # A line a supervisor can wait for; the ports are the bound ones.
            ep = node.endpoints
            assert ep is not None
            print(f"READY grpc={ep.grpc_target} http={ep.http_url}", flush=True)
            await stop.wait()
        finally:
            await node.stop()

    run(lambda: asyncio.run(serve()))


@app.command()
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

    from consortium.node.client import ask as ask_node
    from consortium.node.client import fetch_agent_card, open_client
    from consortium.node.federated import local_signer
    from consortium.node.server import running_http_url

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
        if "verified" in p:
            route = p.get("route", "?")
            err.print(
                f"[dim]route {route} · answer signature verified: {p['verified']}[/dim]",
                highlight=False,
            )
        err.print(
            f"[dim]task {answer.task_id} · {p.get('org', '?')} · {p.get('model', '?')} · "
            f"{int(p.get('inputTokens', 0))} in / {int(p.get('outputTokens', 0))} out tokens · "
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


def _parse_expiry(value: str) -> float:
    """An ISO 8601 time (UTC if no zone), or a duration: 30d, 12h, 45m."""
    import re
    import time
    from datetime import UTC, datetime

    m = re.fullmatch(r"(\d{1,6})([dhm])", value.strip())
    if m:
        return time.time() + int(m.group(1)) * {"d": 86400, "h": 3600, "m": 60}[m.group(2)]
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ConfigError(
            f"not a time or duration: {value!r} (e.g. 2027-01-31T00:00:00Z or 30d)",
            key="--expires",
        ) from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _open_keys(config: Path) -> Any:
    from consortium.trust.api_keys import ApiKeys
    from consortium.trust.files import secure_directory

    cfg = load_config(config)
    secure_directory(cfg.data_dir)
    return ApiKeys(cfg.api_keys_path)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="A name for the key: who or what uses it.")],
    config: Annotated[Path, typer.Option("--config", "-c", help="Path to node.toml.")],
    expires: Annotated[
        str | None, typer.Option(help="Expiry: an ISO 8601 time or a duration (30d, 12h).")
    ] = None,
    admin: Annotated[bool, typer.Option(help="May read /healthz details.")] = False,
) -> None:
    """Create an API key and print it once (only its hash is kept)."""

    def go() -> None:
        expires_at = _parse_expiry(expires) if expires is not None else None
        keys = _open_keys(config)
        try:
            key, token = keys.create(name, expires_at=expires_at, admin=admin)
        finally:
            keys.close()
        write_through(token + "\n")
        err.print(
            f"[dim]key {key.id} ({key.name}) created; it is shown only now[/dim]", highlight=False
        )

    run(go)


@keys_app.command("list")
def keys_list(
    config: Annotated[Path, typer.Option("--config", "-c", help="Path to node.toml.")],
) -> None:
    """List the node's API keys (ids, names, state; never the keys)."""
    import time
    from datetime import UTC, datetime

    def when(t: float | None) -> str:
        return "-" if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def go() -> None:
        keys = _open_keys(config)
        try:
            rows = keys.all()
        finally:
            keys.close()
        now = time.time()
        for k in rows:
            write_through(
                f"{k.id}  {k.name}  {k.state(now)}  {'admin' if k.admin else 'user'}  "
                f"created {when(k.created_at)}  expires {when(k.expires_at)}\n"
            )

    run(go)


@keys_app.command("revoke")
def keys_revoke(
    key: Annotated[
        str, typer.Argument(help="The key's id, or its name (revokes all of that name).")
    ],
    config: Annotated[Path, typer.Option("--config", "-c", help="Path to node.toml.")],
) -> None:
    """Revoke an API key; a running node refuses it from the next call on."""

    def go() -> None:
        keys = _open_keys(config)
        try:
            revoked = keys.revoke(key)
        finally:
            keys.close()
        for k in revoked:
            write_through(f"revoked {k.id} ({k.name})\n")

    run(go)


@app.command()
def demo(
    workdir: Annotated[
        Path | None, typer.Option(help="Where to put the three nodes (default: a temp dir).")
    ] = None,
) -> None:
    """Three organizations on loopback form a federation, answer signed questions (one across
    organizations), print tables, stop."""
    from consortium.node.demo import run_demo

    # A log or CI transcript is not a terminal: give the table room instead of 80 columns.
    console = out if out.is_terminal else Console(width=160)
    run(lambda: run_demo(workdir, console))


@federation_app.command("create")
def federation_create(
    name: Annotated[str, typer.Argument(help="Federation name; its id is derived from it.")],
    dir: Annotated[
        Path, typer.Option("--dir", help="Directory for federation.toml and the admin key.")
    ],
) -> None:
    """Create an admin key pair (private key mode 0600) and an empty, signed roster."""
    from consortium.federation.admin import create_federation

    paths = run(lambda: create_federation(name, dir))
    out.print(f"wrote {paths.roster}")
    out.print(f"wrote {paths.admin_private} (mode 0600) and {paths.admin_public}")


@federation_app.command("add-member")
def federation_add_member(
    roster: Annotated[Path, typer.Argument(help="federation.toml")],
    card: Annotated[
        str, typer.Option("--card", help="The member's agent card: a file or a node URL.")
    ],
    admin_key: Annotated[
        Path | None, typer.Option(help="Admin private key (default: ROSTER_DIR/admin).")
    ] = None,
) -> None:
    """Admit an organization from its agent card (org id, endpoints, public key, model)."""
    from consortium.federation.admin import add_member, member_from_card, read_card

    def go() -> None:
        data, url = read_card(card)
        member = member_from_card(data, url)
        updated = add_member(roster, admin_key_path(roster, admin_key), member)
        out.print(
            f"added {member.org_id} (key {member.keys[0].kid}); roster version {updated.version}",
            soft_wrap=True,
        )

    run(go)


def _set_status(roster: Path, org: str, status: str, admin_key: Path | None) -> None:
    from consortium.federation.admin import set_status

    updated = run(lambda: set_status(roster, admin_key_path(roster, admin_key), org, status))  # type: ignore[arg-type]
    out.print(f"{org} is {status}; roster version {updated.version}")


@federation_app.command("suspend")
def federation_suspend(
    roster: Annotated[Path, typer.Argument(help="federation.toml")],
    org: Annotated[str, typer.Argument(help="Organization id.")],
    admin_key: Annotated[Path | None, typer.Option(help="Admin private key.")] = None,
) -> None:
    """Suspend a member: its messages are refused until it is active again."""
    _set_status(roster, org, "suspended", admin_key)


@federation_app.command("reinstate")
def federation_reinstate(
    roster: Annotated[Path, typer.Argument(help="federation.toml")],
    org: Annotated[str, typer.Argument(help="Organization id.")],
    admin_key: Annotated[Path | None, typer.Option(help="Admin private key.")] = None,
) -> None:
    """Make a suspended member active again."""
    _set_status(roster, org, "active", admin_key)


@federation_app.command("revoke")
def federation_revoke(
    roster: Annotated[Path, typer.Argument(help="federation.toml")],
    org: Annotated[str, typer.Argument(help="Organization id.")],
    admin_key: Annotated[Path | None, typer.Option(help="Admin private key.")] = None,
) -> None:
    """Revoke a member for good."""
    _set_status(roster, org, "revoked", admin_key)


@federation_app.command("rotate-key")
def federation_rotate_key(
    roster: Annotated[Path, typer.Argument(help="federation.toml")],
    org: Annotated[str, typer.Argument(help="Organization id of the member.")],
    key: Annotated[
        Path, typer.Option("--key", help="The member's new public key (its next-public.jwk).")
    ],
    old_key_expires: Annotated[
        str,
        typer.Option(
            help="When the member's current keys stop being accepted (ISO 8601; "
            "default: 24 hours from now)."
        ),
    ] = "",
    admin_key: Annotated[
        Path | None, typer.Option(help="Admin private key (default: ROSTER_DIR/admin).")
    ] = None,
) -> None:
    """List a member's new signing key; its current keys stay valid until they expire."""
    from datetime import UTC, datetime, timedelta

    from consortium.federation.admin import read_public_key, rotate_key

    def go() -> None:
        expires = old_key_expires or (datetime.now(UTC) + timedelta(hours=24)).replace(
            microsecond=0
        ).isoformat().replace("+00:00", "Z")
        new = read_public_key(key)
        updated = rotate_key(roster, admin_key_path(roster, admin_key), org, new, expires)
        out.print(
            f"{org}: added key {new.kid}; its other keys expire at {expires}; "
            f"roster version {updated.version}",
            soft_wrap=True,
        )

    run(go)


@key_app.command("rotate")
def key_rotate(
    config: Annotated[Path, typer.Option("--config", help="node.toml")] = Path("node.toml"),
) -> None:
    """Stage a new key pair beside the current one (the node keeps signing with the current
    key until `consortium key activate`)."""
    from consortium.node.keyrotation import stage_key

    staged = run(lambda: stage_key(config))
    out.print(f"staged key {staged.key_id} (public key: {staged.public_path})", soft_wrap=True)
    out.print(
        "next: the federation admin runs `consortium federation rotate-key ROSTER ORG "
        f"--key {staged.public_path}`; then run `consortium key activate` and restart the node",
        soft_wrap=True,
    )


@key_app.command("activate")
def key_activate(
    config: Annotated[Path, typer.Option("--config", help="node.toml")] = Path("node.toml"),
) -> None:
    """Make the staged key current (refused while the roster does not list it); the old
    private key is kept under keys/retired/. Restart the node to sign with the new key."""
    from consortium.node.keyrotation import activate_key

    done = run(lambda: activate_key(config))
    out.print(f"active key: {done.new_key_id} (was {done.old_key_id})", soft_wrap=True)
    out.print(f"old private key kept in {done.retired_path} (mode 0600)", soft_wrap=True)
    if done.card_path is not None:
        out.print(f"rewrote {done.card_path}")
    out.print("restart the node to sign with the new key")


@policy_app.command("sign")
def policy_sign(
    policy: Annotated[Path, typer.Argument(help="The policy artifact (JSON).")],
    roster: Annotated[Path, typer.Option(help="federation.toml (names the federation).")],
    admin_key: Annotated[
        Path | None, typer.Option(help="Admin private key (default: ROSTER_DIR/admin).")
    ] = None,
) -> None:
    """Stamp the artifact with the federation id and sign it with the admin key."""
    from consortium.federation.admin import load_admin_key
    from consortium.federation.policy import load_policy, sign_policy, write_policy
    from consortium.federation.roster import load_roster, now_iso

    def go() -> None:
        artifact = load_policy(policy, None)
        fed = load_roster(roster).federation_id
        stamped = artifact.model_copy(update={"federation_id": fed, "created_at": now_iso()})
        key = load_admin_key(admin_key_path(roster, admin_key))
        write_policy(policy, sign_policy(stamped, [key]))
        out.print(f"signed {policy} (version {artifact.version}) for federation {fed}")

    run(go)


@policy_app.command("verify")
def policy_verify(
    policy: Annotated[Path, typer.Argument(help="The policy artifact (JSON).")],
    admin_pubkey: Annotated[
        Path | None,
        typer.Option(help="Trusted admin public key (default: ROSTER_DIR/admin/public.jwk)."),
    ] = None,
    roster: Annotated[
        Path | None, typer.Option(help="federation.toml next to the admin's keys.")
    ] = None,
) -> None:
    """Exit 0 only for a well-formed artifact signed by the trusted admin key."""
    from consortium.federation.admin import default_paths
    from consortium.federation.policy import load_policy
    from consortium.trust.keys import load_public_key

    def go() -> None:
        if admin_pubkey is None and roster is None:
            raise ConfigError("give --admin-pubkey (or --roster to use the admin key next to it)")
        key = admin_pubkey or default_paths(roster).admin_public  # type: ignore[arg-type]
        artifact = load_policy(policy, [load_public_key(key)])
        out.print(
            f"{policy}: valid policy {artifact.version} for federation "
            f"{artifact.federation_id or '-'}, {len(artifact.weights)} features"
        )

    run(go)


@federation_app.command("verify")
def federation_verify(
    roster: Annotated[Path, typer.Argument(help="federation.toml")],
    admin_pubkey: Annotated[
        Path | None,
        typer.Option(help="Trusted admin public key (default: ROSTER_DIR/admin/public.jwk)."),
    ] = None,
) -> None:
    """Exit 0 only if the roster is well formed and signed by the trusted admin key."""
    from consortium.federation.admin import default_paths
    from consortium.federation.roster import load_verified_roster
    from consortium.trust.keys import load_public_key

    def go() -> None:
        key = load_public_key(admin_pubkey or default_paths(roster).admin_public)
        r = load_verified_roster(roster, [key])
        out.print(
            f"ok: {r.federation_id} version {r.version}, {len(r.members)} member(s), "
            "signed by the admin key"
        )

    run(go)


@federation_app.command("show")
def federation_show(roster: Annotated[Path, typer.Argument(help="federation.toml")]) -> None:
    """Print the roster's members (signature not checked: use verify)."""
    from rich.table import Table

    from consortium.federation.roster import load_roster

    r = run(lambda: load_roster(roster))
    table = Table(title=f"{r.name} ({r.federation_id}) — version {r.version}, issued {r.issued_at}")
    for col in ("org", "name", "status", "gRPC", "models", "keys"):
        table.add_column(col, overflow="fold")
    for m in r.members:
        keys = ", ".join(
            k.kid[:12] + (f" until {k.not_after}" if k.not_after else "") for k in m.keys
        )
        table.add_row(
            m.org_id,
            m.display_name,
            m.status,
            m.endpoints.grpc,
            ", ".join(m.capabilities.models),
            keys,
        )
    out.print(table)


@bench_app.command("routing")
def bench_routing(
    limit: Annotated[
        int | None, typer.Option(min=10, help="Use only the first N items of each split.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    plot: Annotated[
        Path | None, typer.Option(help="Where to write the PNG plot (default: bench-routing.png).")
    ] = None,
    local: Annotated[str, typer.Option(help="The origin's (weak) model.")] = "smollm2-135m",
    strong: Annotated[str, typer.Option(help="The peer's (strong) model.")] = "gemma3-270m",
    tune_split: Annotated[str, typer.Option(help="Split to tune on.")] = "arc_easy_dev",
    eval_split: Annotated[str, typer.Option(help="Split to report on.")] = "arc_easy_test",
    rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Escalation rate of the operating point.")
    ] = 0.5,
    bootstrap: Annotated[int, typer.Option(min=100, help="Bootstrap resamples.")] = 1000,
    policy_out: Annotated[
        Path | None,
        typer.Option(help="Also write the learned router's policy (unsigned) to this file."),
    ] = None,
) -> None:
    """Replay every router over cached model outputs: cost-quality curves, AUC, APGR,
    CPT(50 %), CPT(80 %) with bootstrap 95 % intervals, against random and the oracle."""
    from consortium.evaluation.harness import split_data
    from consortium.evaluation.plots import plot_routing
    from consortium.evaluation.routing_eval import evaluate_routers

    def go() -> dict[str, Any]:
        show = sys.stderr.isatty()
        dev = split_data(tune_split, local, strong, limit=limit, show_progress=show)
        test = split_data(eval_split, local, strong, limit=limit, show_progress=show)
        return evaluate_routers(
            dev, test, rate=rate, bootstrap_samples=bootstrap, policy_out=policy_out
        )

    result = run(go)
    png = plot_routing(result, plot or Path("bench-routing.png"))
    result["_setup"]["plot"] = str(png)
    print_bench(
        result,
        as_json,
        [
            "accuracy",
            "auc",
            "apgr",
            "apgr_ci95",
            "cpt50",
            "cpt50_ci95",
            "cpt80",
            "escalation_rate",
            "tokens",
        ],
    )


@bench_app.command("collaborate")
def bench_collaborate(
    limit: Annotated[
        int | None, typer.Option(min=10, help="Use only the first N items of each split.")
    ] = None,
    live: Annotated[
        int,
        typer.Option(min=0, help="Also run debate, mixture and self-consistency live on N items."),
    ] = 0,
    rounds: Annotated[int, typer.Option(min=1, max=5, help="Debate rounds.")] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    local: Annotated[str, typer.Option(help="The origin's model.")] = "smollm2-135m",
    strong: Annotated[str, typer.Option(help="The peer's model.")] = "gemma3-270m",
    tune_split: Annotated[str, typer.Option(help="Split to tune on.")] = "arc_easy_dev",
    eval_split: Annotated[str, typer.Option(help="Split to report on.")] = "arc_easy_test",
    plot: Annotated[
        Path | None,
        typer.Option(help="Where to write the PNG plot (default: bench-collaborate.png)."),
    ] = None,
) -> None:
    """Vote, debate (full, ring, star) and mixture against the best single model and its
    self-consistency at the same token budget."""
    from consortium.evaluation.collab_eval import evaluate_collaboration
    from consortium.evaluation.harness import load_backend, progress_bar, split_data
    from consortium.evaluation.plots import plot_collaboration

    def go() -> dict[str, Any]:
        show = sys.stderr.isatty()
        dev = split_data(tune_split, local, strong, limit=limit, show_progress=show)
        test = split_data(eval_split, local, strong, limit=limit, show_progress=show)
        with progress_bar(show) as start:
            return evaluate_collaboration(
                dev, test, live_limit=live, load=load_backend, rounds=rounds, progress=start
            )

    result = run(go)
    png = plot_collaboration(result, plot or Path("bench-collaborate.png"))
    result["_setup"]["plot"] = str(png)
    print_bench(result, as_json, ["accuracy", "gain_over_best_single", "gain_ci95", "tokens"])


def main() -> None:
    app()


if __name__ == "__main__":
    main()
