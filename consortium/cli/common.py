"""What the `consortium` command modules share: the consoles, the error edge (a
ConsortiumError prints one line and exits with its code), SIGTERM handling for commands
that start processes, progress bars, and the rendering of benchmark results."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from consortium.errors import ConsortiumError

if TYPE_CHECKING:
    from consortium.evaluation.harness import Progress, Start

out = Console()
err = Console(stderr=True)
T = TypeVar("T")


def admin_key_path(roster: Path, admin_key: Path | None) -> Path:
    """The federation admin's private key: given, or next to the roster (admin/)."""
    from consortium.federation.admin import default_paths

    return admin_key or default_paths(roster).admin_private


def fail(e: ConsortiumError) -> NoReturn:
    # The message is text, not markup: "[federation]" must print as written.
    err.print(f"[red]error:[/red] {escape(str(e))}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(e.exit_code)


def run(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except ConsortiumError as e:
        fail(e)


def write_through(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the processes a command started (nodes, Flower's)
    are stopped by their context managers, in order, instead of by the supervisor's
    watcher once the command has died."""

    def stop(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


@contextmanager
def progress_bar(enabled: bool) -> Iterator[Start]:
    """Yields `start(description, total) -> advance(n)`; a no-op when disabled."""
    if not enabled:
        yield lambda _d, _t: lambda _n: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as Bar

    with Bar(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
    ) as bar:

        def start(description: str, total: int) -> Callable[[int], None]:
            task = bar.add_task(description, total=total)
            return lambda n: bar.advance(task, n)

        yield start


def progress_bars() -> Progress:
    """Progress bars while stderr is a terminal (none in a log or a pipe)."""
    enabled = sys.stderr.isatty()
    return lambda: progress_bar(enabled)


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
