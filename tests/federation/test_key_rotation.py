"""Key rotation: a member stages a key, the admin lists it with an expiry on the old one,
the member activates it; messages verify under both keys until the old one expires."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from consortium.errors import ConfigError
from consortium.federation.admin import (
    add_member,
    create_federation,
    member_from_card,
    read_public_key,
    rotate_key,
)
from consortium.federation.roster import load_roster
from consortium.node.client import text_message
from consortium.node.keyrotation import activate_key, stage_key
from consortium.node.setup import init_node
from consortium.trust.admission import MessageVerifier
from consortium.trust.keys import key_id, load_private_key
from consortium.trust.refusals import Rejected
from consortium.trust.replay import ReplayCache
from consortium.trust.signing import SigningIdentity, sign_request

CLI = [sys.executable, "-m", "consortium.cli"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, check=False)


def member_node(tmp: Path) -> tuple[Path, Path]:
    """acme's node.toml, joined to a federation whose roster lists it; and the roster."""
    fed = create_federation("Rotation Test", tmp / "fed")
    init = init_node("acme", tmp / "acme", grpc_port=0, http_port=0)
    add_member(
        fed.roster, fed.admin_private, member_from_card(json.loads(init.card_path.read_text()))
    )
    with init.config_path.open("a") as f:
        f.write(f'\n[federation]\nroster = "{fed.roster}"\nadmin_key = "{fed.admin_public}"\n')
    return init.config_path, fed.roster


def test_the_cli_rotation_flow(tmp_path: Path) -> None:
    config, roster = member_node(tmp_path)
    keys = config.parent / "keys"
    old_kid = key_id(load_private_key(keys / "private.jwk"))

    r = cli("key", "rotate", "--config", str(config))
    assert r.returncode == 0, r.stderr
    staged = load_private_key(keys / "next-private.jwk")  # refuses a readable key file
    assert stat.S_IMODE((keys / "next-private.jwk").stat().st_mode) == 0o600
    assert key_id(staged) in r.stdout
    assert key_id(load_private_key(keys / "private.jwk")) == old_kid  # still the current key

    r = cli("key", "rotate", "--config", str(config))
    assert r.returncode == 2 and "already staged" in r.stderr and "Traceback" not in r.stderr

    # Not yet in the roster: activation would make every message this node sends fail.
    r = cli("key", "activate", "--config", str(config))
    assert r.returncode == 2 and "does not list key" in r.stderr
    assert key_id(load_private_key(keys / "private.jwk")) == old_kid

    r = cli("federation", "rotate-key", str(roster), "acme", "--key", str(keys / "private.jwk"))
    assert r.returncode == 2 and "private key" in r.stderr
    r = cli(
        "federation",
        "rotate-key",
        str(roster),
        "acme",
        "--key",
        str(keys / "next-public.jwk"),
        "--old-key-expires",
        "next tuesday",
    )
    assert r.returncode == 2 and "ISO 8601" in r.stderr
    r = cli(
        "federation",
        "rotate-key",
        str(roster),
        "acme",
        "--key",
        str(keys / "next-public.jwk"),
        "--old-key-expires",
        "2030-01-01T00:00:00Z",
    )
    assert r.returncode == 0, r.stderr
    assert cli("federation", "verify", str(roster)).returncode == 0
    member = load_roster(roster).member("acme")
    assert member is not None
    assert [(k.kid, k.not_after) for k in member.keys] == [
        (old_kid, "2030-01-01T00:00:00Z"),
        (key_id(staged), ""),
    ]

    r = cli("key", "activate", "--config", str(config))
    assert r.returncode == 0, r.stderr
    assert key_id(load_private_key(keys / "private.jwk")) == key_id(staged)
    assert json.loads((keys / "public.jwk").read_text())["kid"] == key_id(staged)
    retired = keys / "retired" / f"{old_kid}.jwk"
    assert stat.S_IMODE(retired.stat().st_mode) == 0o600
    assert not (keys / "next-private.jwk").exists()
    card = (config.parent / "agent-card.json").read_text()
    assert key_id(staged) in card and old_kid not in card
    r = cli("key", "activate", "--config", str(config))
    assert r.returncode == 2 and "no staged key" in r.stderr


def test_old_key_verifies_until_its_expiry_and_the_new_one_after(tmp_path: Path) -> None:
    config, roster = member_node(tmp_path)
    keys = config.parent / "keys"
    old = load_private_key(keys / "private.jwk")
    stage_key(config)
    new = load_private_key(keys / "next-private.jwk")
    admin = roster.parent / "admin" / "private.jwk"
    rotate_key(
        roster, admin, "acme", read_public_key(keys / "next-public.jwk"), "2030-01-01T00:00:00Z"
    )
    activate_key(config)
    expiry = datetime(2030, 1, 1, tzinfo=UTC).timestamp()

    def verifier(now: float) -> MessageVerifier:
        current = load_roster(roster)
        return MessageVerifier(
            org_id="globex",
            roster=lambda: current,
            replay=ReplayCache(tmp_path / f"replay-{now}.sqlite3", clock=lambda: now),
            clock=lambda: now,
        )

    def signed(key: object, now: float) -> object:
        return sign_request(
            text_message("hi"),
            SigningIdentity(key, "acme", load_roster(roster).federation_id),
            recipient="globex",
            now=now,
        )[0]

    before, after = expiry - 10, expiry + 10
    verifier(before).verify(signed(old, before))  # type: ignore[arg-type]
    verifier(before).verify(signed(new, before))  # type: ignore[arg-type]
    verifier(after).verify(signed(new, after))  # type: ignore[arg-type]
    with pytest.raises(Rejected) as e:
        verifier(after).verify(signed(old, after))  # type: ignore[arg-type]
    assert e.value.reason == "unknown_key"

    # The same key twice, or for a non-member, is refused without touching the roster.
    version = load_roster(roster).version
    with pytest.raises(ConfigError, match="already has key"):
        rotate_key(roster, admin, "acme", read_public_key(keys / "public.jwk"), "2031-01-01")
    with pytest.raises(ConfigError, match="not a member"):
        rotate_key(roster, admin, "initech", read_public_key(keys / "public.jwk"), "2031-01-01")
    assert load_roster(roster).version == version
