"""`consortium demo`: three organizations on loopback (consortium/launch/demo.py), shown
on the terminal."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from consortium.cli.common import out, run


def demo(
    workdir: Annotated[
        Path | None, typer.Option(help="Where to put the three nodes (default: a temp dir).")
    ] = None,
) -> None:
    """Three organizations on loopback form a federation, answer signed questions (one across
    organizations), print tables, stop."""
    from consortium.launch.demo import run_demo

    # A log or CI transcript is not a terminal: give the table room instead of 80 columns.
    console = out if out.is_terminal else Console(width=160)
    run(lambda: run_demo(workdir, console))
