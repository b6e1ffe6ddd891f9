"""`consortium key rotate | activate`: rotating this organization's signing key (staged
beside the current one, activated once the roster lists it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from consortium.cli.common import out, run


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
