"""Every command's --help shows its text as written: a node.toml section such as
`[trust]` is not taken for a rich markup tag and dropped ("(default: 's)")."""

from __future__ import annotations

import re

import click
import pytest
import typer
from typer.testing import CliRunner

from consortium.cli.app import app

SECTION = re.compile(r"\\?\[([a-z_.]+)\]")


def commands() -> list[object]:
    found: list[tuple[list[str], click.Command]] = []

    def walk(path: list[str], command: click.Command) -> None:
        found.append((path, command))
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk([*path, name], sub)

    walk([], typer.main.get_command(app))
    return [
        pytest.param(path, command, id=" ".join(path) or "consortium") for path, command in found
    ]


@pytest.mark.parametrize(("path", "command"), commands())
def test_help_keeps_bracketed_section_names(path: list[str], command: click.Command) -> None:
    texts = [command.help or "", *(getattr(p, "help", None) or "" for p in command.params)]
    wanted = {f"[{m}]" for text in texts for m in SECTION.findall(text)}
    if not wanted:
        return
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for section in wanted:
        assert section in result.output, f"{' '.join(path)} --help lost {section}"
