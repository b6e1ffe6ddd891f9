"""What the `consortium` command modules share: the Typer apps they register commands
on, the consoles, and the error edge (a ConsortiumError prints one line and exits with
its code)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console

from consortium.errors import ConsortiumError

app = typer.Typer(
    name="consortium",
    help="Consortium: a federated network of LLM agents, one node per organization.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
node_app = typer.Typer(help="Run this organization's node.", no_args_is_help=True)
app.add_typer(node_app, name="node")
federation_app = typer.Typer(
    help="Administer a federation: its roster, keys and routing policy.", no_args_is_help=True
)
app.add_typer(federation_app, name="federation")
key_app = typer.Typer(help="Rotate this organization's signing key.", no_args_is_help=True)
app.add_typer(key_app, name="key")
keys_app = typer.Typer(
    help="API keys for this node's local users and apps (take effect without a restart).",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")
policy_app = typer.Typer(help="Sign and verify routing-policy artifacts.", no_args_is_help=True)
federation_app.add_typer(policy_app, name="policy")
bench_app = typer.Typer(
    help="Evaluate routers and collaboration protocols on benchmark data.", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")

out = Console()
err = Console(stderr=True)
T = TypeVar("T")


def admin_key_path(roster: Path, admin_key: Path | None) -> Path:
    """The federation admin's private key: given, or next to the roster (admin/)."""
    from consortium.federation.admin import default_paths

    return admin_key or default_paths(roster).admin_private


def fail(e: ConsortiumError) -> NoReturn:
    err.print(f"[red]error:[/red] {e}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(e.exit_code)


def run(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except ConsortiumError as e:
        fail(e)


def write_through(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def print_bench(result: dict[str, Any], as_json: bool, columns: list[str]) -> None:
    """One JSON object ({name: {metric: value}}, run details under "_setup"), or a table."""
    rows = {k: v for k, v in result.items() if not k.startswith("_")}
    if as_json:
        write_through(
            json.dumps({**rows, "_setup": result["_setup"]}, separators=(",", ":")) + "\n"
        )
        return
    from rich.table import Table

    table = Table(title=", ".join(f"{k}={v}" for k, v in result["_setup"].items()))
    table.add_column("")
    for c in columns:
        table.add_column(c, justify="right")
    for name, row in rows.items():
        table.add_row(name, *(_cell(row.get(c)) for c in columns))
    out.print(table)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list):
        return "[" + ", ".join(_cell(v) for v in value) + "]"
    return str(value)
