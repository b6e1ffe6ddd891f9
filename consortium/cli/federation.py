"""`consortium federation create | add-member | suspend | reinstate | revoke | rotate-key
| verify | show`: the federation admin's commands on the signed roster."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from consortium.cli.common import admin_key_path, out, run


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


def federation_add_member(
    roster: Annotated[Path, typer.Argument(help="federation.toml")],
    card: Annotated[
        str, typer.Option("--card", help="The member's agent card: a file or a node URL.")
    ],
    admin_key: Annotated[
        Path | None, typer.Option(help="Admin private key (default: ROSTER_DIR/admin).")
    ] = None,
    founder: Annotated[
        bool,
        typer.Option(
            "--founder", help="Mark it a founder: pre-trusted when members fold trust reports."
        ),
    ] = False,
) -> None:
    """Admit an organization from its agent card (org id, endpoints, public key, model)."""
    from consortium.federation.admin import add_member, member_from_card, read_card

    def go() -> None:
        data, url = read_card(card)
        member = member_from_card(data, url).model_copy(update={"founder": founder})
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


def federation_suspend(
    roster: Annotated[Path, typer.Argument(help="federation.toml")],
    org: Annotated[str, typer.Argument(help="Organization id.")],
    admin_key: Annotated[Path | None, typer.Option(help="Admin private key.")] = None,
) -> None:
    """Suspend a member: its messages are refused until it is active again."""
    _set_status(roster, org, "suspended", admin_key)


def federation_reinstate(
    roster: Annotated[Path, typer.Argument(help="federation.toml")],
    org: Annotated[str, typer.Argument(help="Organization id.")],
    admin_key: Annotated[Path | None, typer.Option(help="Admin private key.")] = None,
) -> None:
    """Make a suspended member active again."""
    _set_status(roster, org, "active", admin_key)


def federation_revoke(
    roster: Annotated[Path, typer.Argument(help="federation.toml")],
    org: Annotated[str, typer.Argument(help="Organization id.")],
    admin_key: Annotated[Path | None, typer.Option(help="Admin private key.")] = None,
) -> None:
    """Revoke a member for good."""
    _set_status(roster, org, "revoked", admin_key)


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
