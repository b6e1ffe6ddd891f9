"""The `consortium` command line: one Typer app and its command groups, with every
command registered here, explicitly, from the module that holds it (one module per
group). Importing a command module registers nothing."""

from __future__ import annotations

import typer

from consortium.cli import (
    audit,
    audit_trace,
    bench,
    db,
    demo,
    federation,
    key,
    keys,
    net,
    node,
    policy,
    redact,
    train,
    trust,
    up,
)

app = typer.Typer(
    name="consortium",
    help="Consortium: a federated network of LLM agents, one node per organization.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
node_app = typer.Typer(help="Run this organization's node.", no_args_is_help=True)
federation_app = typer.Typer(
    help="Administer a federation: its roster, keys and routing policy.", no_args_is_help=True
)
key_app = typer.Typer(help="Rotate this organization's signing key.", no_args_is_help=True)
keys_app = typer.Typer(
    help="API keys for this node's local users and apps (take effect without a restart).",
    no_args_is_help=True,
)
trust_app = typer.Typer(
    help="Peers' reputations kept by this node (take effect without a restart).",
    no_args_is_help=True,
)
redact_app = typer.Typer(
    help="Redaction: preview what the policy sends a peer; disclose and verify receipts.",
    no_args_is_help=True,
)
audit_app = typer.Typer(
    help="Audit: verify organizations' tamper-evident logs and rebuild a task's path.",
    no_args_is_help=True,
)
policy_app = typer.Typer(help="Sign and verify routing-policy artifacts.", no_args_is_help=True)
db_app = typer.Typer(
    help="This node's state storage (\\[storage] url): schema upgrades, moving to PostgreSQL.",
    no_args_is_help=True,
)
bench_app = typer.Typer(
    help="Evaluate routers, collaboration protocols and the trust layer on benchmark data.",
    no_args_is_help=True,
)

app.add_typer(node_app, name="node")
app.add_typer(federation_app, name="federation")
app.add_typer(key_app, name="key")
app.add_typer(keys_app, name="keys")
app.add_typer(trust_app, name="trust")
app.add_typer(redact_app, name="redact")
app.add_typer(audit_app, name="audit")
federation_app.add_typer(policy_app, name="policy")
app.add_typer(bench_app, name="bench")
app.add_typer(db_app, name="db")
app.add_typer(net.group(), name="net")

# The order below is the order `--help` lists the commands in.

# Federated training of the routing policy (Flower).
federation_app.command("seed-routing-data")(train.seed_routing_data)
federation_app.command("train")(train.train)
federation_app.command("supernode")(train.supernode)
federation_app.command("supernode-key")(train.supernode_key)
federation_app.command("superlink")(train.superlink_cmd)
federation_app.command("register-supernode")(train.register_supernode)
bench_app.command("federated")(bench.bench_federated)

# This organization's node.
app.command("init")(node.init)
node_app.command("start")(node.node_start)
node_app.command("status")(node.node_status)
app.command("ask")(node.ask)

# API keys.
keys_app.command("create")(keys.keys_create)
keys_app.command("list")(keys.keys_list)
keys_app.command("revoke")(keys.keys_revoke)

# Peers' reputations.
trust_app.command("show")(trust.trust_show)
trust_app.command("reset")(trust.trust_reset)

# Redaction receipts.
redact_app.command("preview")(redact.redact_preview)
redact_app.command("disclose")(redact.redact_disclose)
redact_app.command("check")(redact.redact_check)

# State storage.
db_app.command("upgrade")(db.db_upgrade)
db_app.command("status")(db.db_status)
db_app.command("migrate")(db.db_migrate)

# Audit logs.
audit_app.command("verify")(audit.audit_verify)
audit_app.command("export")(audit.audit_export)
audit_app.command("trace")(audit_trace.audit_trace)

app.command("demo")(demo.demo)

# A federation from one file (consortium/launch/launcher.py).
app.command("up")(up.up)
app.command("down")(up.down)
app.command("status")(up.status)

# The federation admin's roster commands.
federation_app.command("create")(federation.federation_create)
federation_app.command("add-member")(federation.federation_add_member)
federation_app.command("suspend")(federation.federation_suspend)
federation_app.command("reinstate")(federation.federation_reinstate)
federation_app.command("revoke")(federation.federation_revoke)
federation_app.command("rotate-key")(federation.federation_rotate_key)

# Signing-key rotation.
key_app.command("rotate")(key.key_rotate)
key_app.command("activate")(key.key_activate)

# Routing-policy artifacts.
policy_app.command("sign")(policy.policy_sign)
policy_app.command("verify")(policy.policy_verify)

federation_app.command("verify")(federation.federation_verify)
federation_app.command("show")(federation.federation_show)

# Benchmarks.
bench_app.command("routing")(bench.bench_routing)
bench_app.command("collaborate")(bench.bench_collaborate)
bench_app.command("trust")(bench.bench_trust)
bench_app.command("redaction")(bench.bench_redaction)


def main() -> None:
    app()
