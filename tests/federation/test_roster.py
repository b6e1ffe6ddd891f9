"""The signed roster and the `consortium federation` commands."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from consortium.federation.admin import add_member, create_federation, member_from_card, set_status
from consortium.federation.roster import (
    RosterError,
    load_roster,
    load_verified_roster,
    write_roster,
)
from consortium.node.setup import init_node
from consortium.trust.keys import generate_key, load_public_key

CLI = [sys.executable, "-m", "consortium.cli"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def federation(tmp_path: Path) -> tuple[Path, Path, Path]:
    paths = create_federation("Health Research Network", tmp_path / "fed")
    card = init_node("acme", tmp_path / "acme", grpc_port=0, http_port=0).card_path
    return paths.roster, paths.admin_private, card


def admin_pub(roster: Path) -> list:  # type: ignore[type-arg]
    return [load_public_key(roster.parent / "admin" / "public.jwk")]


def test_create_writes_a_signed_empty_roster(federation: tuple[Path, Path, Path]) -> None:
    roster_path, admin_private, _ = federation
    assert stat.S_IMODE(admin_private.stat().st_mode) == 0o600
    roster = load_verified_roster(roster_path, admin_pub(roster_path))
    assert roster.federation_id == "health-research-network"
    assert roster.members == [] and roster.version == 1 and roster.issued_at


def test_add_member_from_agent_card(federation: tuple[Path, Path, Path]) -> None:
    roster_path, admin_private, card = federation
    member = member_from_card(json.loads(card.read_text()))
    assert member.org_id == "acme" and member.capabilities.models == ["smollm2-135m"]
    updated = add_member(roster_path, admin_private, member)
    assert updated.version == 2
    roster = load_verified_roster(roster_path, admin_pub(roster_path))
    acme = roster.member("acme")
    assert acme is not None and acme.status == "active"
    assert acme.key(acme.keys[0].kid) is not None
    with pytest.raises(RosterError, match="already a member"):
        add_member(roster_path, admin_private, member)


def test_suspend_then_revoke_is_final(federation: tuple[Path, Path, Path]) -> None:
    roster_path, admin_private, card = federation
    add_member(roster_path, admin_private, member_from_card(json.loads(card.read_text())))
    set_status(roster_path, admin_private, "acme", "suspended")
    assert (
        load_verified_roster(roster_path, admin_pub(roster_path)).member("acme").status
        == "suspended"
    )  # type: ignore[union-attr]
    set_status(roster_path, admin_private, "acme", "revoked")
    with pytest.raises(RosterError, match="revocation is final"):
        set_status(roster_path, admin_private, "acme", "active")
    with pytest.raises(RosterError, match="not a member"):
        set_status(roster_path, admin_private, "nobody", "suspended")


def test_tampered_roster_is_refused(federation: tuple[Path, Path, Path]) -> None:
    roster_path, admin_private, card = federation
    add_member(roster_path, admin_private, member_from_card(json.loads(card.read_text())))
    roster = load_roster(roster_path)
    tampered = roster.model_copy(
        update={"members": [roster.members[0].model_copy(update={"status": "revoked"})]}
    )
    write_roster(roster_path, tampered)
    with pytest.raises(RosterError, match="no valid admin signature"):
        load_verified_roster(roster_path, admin_pub(roster_path))


def test_roster_signed_by_another_key_or_unsigned_is_refused(
    federation: tuple[Path, Path, Path],
) -> None:
    roster_path, _, _ = federation
    with pytest.raises(RosterError, match="unknown signing key"):
        load_verified_roster(roster_path, [generate_key()])
    write_roster(roster_path, load_roster(roster_path).model_copy(update={"signatures": []}))
    with pytest.raises(RosterError, match="not signed"):
        load_verified_roster(roster_path, admin_pub(roster_path))


def test_card_without_key_is_refused() -> None:
    with pytest.raises(Exception, match="no signing key"):
        member_from_card({"name": "x", "capabilities": {"extensions": []}})


def test_cli_create_add_suspend_verify_show(tmp_path: Path) -> None:
    card = init_node("globex", tmp_path / "globex", grpc_port=0, http_port=0).card_path
    assert cli("federation", "create", "Test Fed", "--dir", str(tmp_path / "fed")).returncode == 0
    roster = tmp_path / "fed" / "federation.toml"
    r = cli("federation", "add-member", str(roster), "--card", str(card))
    assert r.returncode == 0, r.stderr
    assert cli("federation", "suspend", str(roster), "globex").returncode == 0
    r = cli("federation", "verify", str(roster))
    assert r.returncode == 0 and "version 3" in r.stdout
    r = cli("federation", "show", str(roster))
    assert "globex" in r.stdout and "suspended" in r.stdout
    roster.write_text(roster.read_text().replace("suspended", "active"))
    r = cli("federation", "verify", str(roster))
    assert (
        r.returncode == 2 and "no valid admin signature" in r.stderr and "Traceback" not in r.stderr
    )
    r = cli("federation", "verify", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "not found" in r.stderr


def test_cli_add_member_as_founder(tmp_path: Path) -> None:
    card = init_node("globex", tmp_path / "globex", grpc_port=0, http_port=0).card_path
    assert cli("federation", "create", "Test Fed", "--dir", str(tmp_path / "fed")).returncode == 0
    roster = tmp_path / "fed" / "federation.toml"
    r = cli("federation", "add-member", str(roster), "--card", str(card), "--founder")
    assert r.returncode == 0, r.stderr
    loaded = load_verified_roster(roster, admin_pub(roster))
    assert loaded.founders() == {"globex"}
