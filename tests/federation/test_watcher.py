"""The roster watcher (consortium/federation/watcher.py): a new admin-signed version on
disk takes effect without a restart; an unsigned, tampered, foreign, malformed, missing
or older one is refused and the roster in force stays."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from jwcrypto import jwk

from consortium.federation.admin import (
    FederationPaths,
    add_member,
    create_federation,
    member_key,
    set_status,
    update_roster,
)
from consortium.federation.roster import Member, RosterError, load_roster, write_roster
from consortium.federation.watcher import RosterWatcher
from consortium.trust.keys import generate_key, load_public_key, public_jwk


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Polls `condition` until it holds; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s")
        time.sleep(0.02)


def member(org_id: str) -> Member:
    return Member(org_id=org_id, keys=[member_key(public_jwk(generate_key()), "--key")])


def replace_file(path: Path, text: str) -> None:
    """Writes like an operator's tool: a new file renamed over the old one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    Path(tmp).replace(path)


@pytest.fixture
def fed(tmp_path: Path) -> FederationPaths:
    return create_federation("Watch Federation", tmp_path / "fed")


def admin_keys(fed: FederationPaths) -> list[jwk.JWK]:
    return [load_public_key(fed.admin_public)]


def watcher(fed: FederationPaths, interval: float = 0.0) -> RosterWatcher:
    return RosterWatcher(fed.roster, admin_keys(fed), check_interval_s=interval)


def test_a_new_signed_version_takes_effect(fed: FederationPaths) -> None:
    w = watcher(fed)
    assert w.current().version == 1 and w.current().members == []
    add_member(fed.roster, fed.admin_private, member("acme"))
    roster = w.current()
    assert roster.version == 2 and roster.member("acme") is not None and w.reloads == 1
    set_status(fed.roster, fed.admin_private, "acme", "suspended")
    assert w.current().member("acme").status == "suspended"  # type: ignore[union-attr]
    assert w.reloads == 2 and w.refused == 0
    assert w.current().version == 3 and w.reloads == 2  # unchanged file: no reload


def test_a_change_takes_effect_within_the_check_interval(fed: FederationPaths) -> None:
    w = watcher(fed, interval=0.2)
    assert w.current().version == 1
    add_member(fed.roster, fed.admin_private, member("acme"))
    wait_until(lambda: w.current().version == 2)
    assert w.reloads == 1


def test_check_now_reads_a_change_within_the_interval(fed: FederationPaths) -> None:
    """What SIGHUP asks of the node: the file looked at now, not after the interval."""
    w = watcher(fed, interval=3600)
    assert w.current().version == 1
    add_member(fed.roster, fed.admin_private, member("acme"))
    assert w.current().version == 1  # the interval has not passed
    assert w.check_now().version == 2 and w.reloads == 1
    assert w.current().version == 2
    assert w.check_now().version == 2 and w.reloads == 1  # unchanged file: no reload


def test_check_now_refuses_a_bad_file_like_current(fed: FederationPaths) -> None:
    w = watcher(fed, interval=3600)
    tampered(fed.roster)
    assert w.check_now().version == 1 and w.refused == 1 and w.reloads == 0


def tampered(path: Path) -> None:
    """A member added to a signed roster without re-signing it."""
    roster = load_roster(path)
    write_roster(path, roster.model_copy(update={"members": [*roster.members, member("eve")]}))


def without_signatures(path: Path) -> None:
    write_roster(path, load_roster(path).model_copy(update={"signatures": []}))


def foreign(path: Path) -> None:
    """Another federation's roster, signed by its own admin."""
    other = create_federation("Other Federation", path.parent.parent / "other")
    replace_file(path, other.roster.read_text())


def malformed(path: Path) -> None:
    replace_file(path, "federation_id = [unclosed\n")


def not_a_roster(path: Path) -> None:
    replace_file(path, 'federation_id = "x"\n')


def removed(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize(
    "spoil", [tampered, without_signatures, foreign, malformed, not_a_roster, removed]
)
def test_a_bad_file_is_refused_and_the_roster_in_force_stays(
    fed: FederationPaths, spoil: Callable[[Path], None], caplog: pytest.LogCaptureFixture
) -> None:
    add_member(fed.roster, fed.admin_private, member("acme"))
    good = fed.roster.read_text()
    w = watcher(fed)
    assert w.current().version == 2
    with caplog.at_level(logging.WARNING, logger="consortium.federation.watcher"):
        spoil(fed.roster)
        roster = w.current()
    assert roster.version == 2 and roster.member("acme") is not None
    assert roster.member("eve") is None and roster.federation_id == "watch-federation"
    assert w.refused == 1 and w.reloads == 0
    assert "refused, keeping version 2" in caplog.text
    # Refused once: asking again does not re-read an unchanged file.
    assert w.current().version == 2 and w.refused == 1
    # The watcher is not stuck: the good file back, then a new version, are taken.
    replace_file(fed.roster, good)
    assert w.current().version == 2 and w.refused == 1
    add_member(fed.roster, fed.admin_private, member("globex"))
    assert w.current().member("globex") is not None and w.current().version == 3


def test_a_signed_roster_of_another_federation_is_refused(fed: FederationPaths) -> None:
    w = watcher(fed)
    update_roster(
        fed.roster, fed.admin_private, lambda r: r.model_copy(update={"federation_id": "other"})
    )
    assert w.current().federation_id == "watch-federation" and w.refused == 1


def test_an_older_signed_version_is_refused(fed: FederationPaths) -> None:
    add_member(fed.roster, fed.admin_private, member("acme"))
    version_2 = fed.roster.read_text()
    w = watcher(fed)
    set_status(fed.roster, fed.admin_private, "acme", "revoked")
    assert w.current().version == 3
    # Replaying the signed version 2 would bring a revoked member back.
    replace_file(fed.roster, version_2)
    roster = w.current()
    assert roster.version == 3 and roster.member("acme").status == "revoked"  # type: ignore[union-attr]
    assert w.refused == 1


def test_a_bad_roster_at_start_fails_loudly(fed: FederationPaths) -> None:
    without_signatures(fed.roster)
    with pytest.raises(RosterError, match="not signed"):
        watcher(fed)
    with pytest.raises(RosterError, match="not found"):
        RosterWatcher(fed.roster.with_name("missing.toml"), admin_keys(fed))
