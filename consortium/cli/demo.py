"""`consortium demo`: three organizations on loopback (consortium/launch/demo.py), shown
on the terminal: its lines, a spinner while it waits, its tables."""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from consortium.cli.common import out, progress_bar, run, stop_on_sigterm

if TYPE_CHECKING:
    from consortium.evaluation.harness import Progress, Start
    from consortium.launch import demo as demo_logic
    from consortium.node.config import NodeConfig


class ConsoleReporter:
    """The demo's Reporter on a rich console."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def heading(self, title: str, detail: str) -> None:
        self.console.print(f"[bold]{title}[/bold]{detail}")

    def line(self, text: str) -> None:
        self.console.print(text)

    def table(self, table: demo_logic.Table) -> None:
        shown = Table(title=table.title)
        for col in table.columns:
            shown.add_column(col, overflow="fold")
        for row in table.rows:
            shown.add_row(*row)
        self.console.print(shown)

    def status(self, text: str) -> AbstractContextManager[object]:
        return self.console.status(text)

    def progress(self) -> AbstractContextManager[Start]:
        return progress_bar(sys.stderr.isatty())


def demo(
    workdir: Annotated[
        Path | None, typer.Option(help="Where to put the three nodes (default: a temp dir).")
    ] = None,
) -> None:
    """Three organizations on loopback form a federation, answer signed questions (one across
    organizations), print tables, stop."""
    from consortium.evaluation.datasets import load_arc, split_path
    from consortium.evaluation.seeding import seed_node_records
    from consortium.launch.demo import SEED_ITEMS, SEED_SPLIT, TRUST_VOTES, PanelQuestion, run_demo

    def seed(config: NodeConfig, index: int, parts: int, progress: Progress) -> int:
        return seed_node_records(
            config, SEED_SPLIT, index, parts, SEED_ITEMS, progress=progress
        ).stored

    # A log or CI transcript is not a terminal: give the table room instead of 80 columns.
    console = out if out.is_terminal else Console(width=160)
    questions = [
        PanelQuestion(it.question.stem, tuple(it.question.choices), it.answer)
        for it in load_arc(split_path(SEED_SPLIT))[:TRUST_VOTES]
    ]
    stop_on_sigterm()
    run(lambda: run_demo(workdir, ConsoleReporter(console), seed, questions))
