"""The `consortium` command line (consortium/cli/app.py registers every command). The
only package that imports typer or rich."""

from consortium.cli.app import app, main

__all__ = ["app", "main"]
