"""`consortium federation policy sign | verify`: the federation admin's signature on a
routing-policy artifact, and its check."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from consortium.cli.common import admin_key_path, out, run
from consortium.errors import ConfigError


def policy_sign(
    policy: Annotated[Path, typer.Argument(help="The policy artifact (JSON).")],
    roster: Annotated[Path, typer.Option(help="federation.toml (names the federation).")],
    admin_key: Annotated[
        Path | None, typer.Option(help="Admin private key (default: ROSTER_DIR/admin).")
    ] = None,
) -> None:
    """Stamp the artifact with the federation id and sign it with the admin key."""
    from consortium.federation.admin import load_admin_key
    from consortium.federation.roster import load_roster, now_iso
    from consortium.learning.policy import load_policy, sign_policy, write_policy

    def go() -> None:
        artifact = load_policy(policy, None)
        fed = load_roster(roster).federation_id
        stamped = artifact.model_copy(update={"federation_id": fed, "created_at": now_iso()})
        key = load_admin_key(admin_key_path(roster, admin_key))
        write_policy(policy, sign_policy(stamped, [key]))
        out.print(f"signed {policy} (version {artifact.version}) for federation {fed}")

    run(go)


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
    from consortium.learning.policy import load_policy
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
