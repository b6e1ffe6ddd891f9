"""`consortium audit verify | export` as an auditor runs them (subprocesses) over an
organization's directory: a good log verifies (exit 0, text and --json), a tampered one
fails with the finding named (exit 1), export writes every entry and checkpoint as JSON
lines (every entry's bytes as hashed, so the export alone gives every root and proof),
nothing read is modified, and every bad input is one error line and exit 2."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from consortium.federation.admin import add_member, create_federation
from consortium.federation.roster import Member, MemberKey, load_roster
from consortium.trust.audit import Hop
from consortium.trust.audit.log import SqliteAuditLog
from consortium.trust.audit.merkle import Tree, verify_consistency, verify_inclusion
from consortium.trust.keys import generate_key, key_id, write_private_key
from tests.cli.test_trust_cli import one_error_line

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-m", "consortium.cli", "audit", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def organization(base: Path, org: str, roster: Path, admin_public: Path) -> Path:
    d = base / org
    d.mkdir()
    key = generate_key()
    write_private_key(d / "private.jwk", key)
    (d / "node.toml").write_text(
        f'[node]\norg_id = "{org}"\n[identity]\nprivate_key = "private.jwk"\n'
        f'[federation]\nroster = "{roster}"\nadmin_key = "{admin_public}"\n'
    )
    return d


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """acme's directory with a log of 40 entries and checkpoints; globex, a member with
    no log yet; a federation of both."""
    base = tmp_path_factory.mktemp("audit-cli")
    paths = create_federation("Audit Test", base / "fed")
    acme = organization(base, "acme", paths.roster, paths.admin_public)
    organization(base, "globex", paths.roster, paths.admin_public)
    from consortium.trust.keys import load_private_key

    for org in ("acme", "globex"):
        key = load_private_key(base / org / "private.jwk")
        add_member(
            paths.roster,
            paths.admin_private,
            Member(org_id=org, keys=[MemberKey(kid=key_id(key), x=str(key.get("x")))]),
        )
    key = load_private_key(acme / "private.jwk")
    log = SqliteAuditLog(
        acme / "data" / "audit.sqlite3",
        federation_id=load_roster(paths.roster).federation_id,
        org_id="acme",
        key=lambda: key,
        checkpoint_every=16,
    )
    for i in range(40):
        # One entry is not ASCII (receipts hold a note's em dash): exported as hashed.
        message_id = f"m-{i} — café" if i == 7 else f"m-{i}"
        log.sent(
            Hop(kind="request", peer="globex", message_id=message_id, kid="k", digest="d", jws="j")
        )
    log.close()
    return base


def test_a_good_log_verifies(world: Path) -> None:
    before = (world / "acme" / "data" / "audit.sqlite3").read_bytes()
    result = cli("verify", str(world / "acme"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "40 entries, 3 checkpoints" in result.stdout and "verified" in result.stdout
    as_json = cli("verify", str(world / "acme"), "--json", "--witness", str(world / "globex"))
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["ok"] and report["entries"] == 40 and report["latest_checkpoint"] == 40
    assert (world / "acme" / "data" / "audit.sqlite3").read_bytes() == before


def test_export_writes_entries_then_checkpoints(world: Path, tmp_path: Path) -> None:
    out = tmp_path / "log.jsonl"
    result = cli("export", str(world / "acme"), "-o", str(out))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    entries = [d["entry"] for d in lines if "entry" in d]
    checkpoints = [d["checkpoint"] for d in lines if "checkpoint" in d]
    assert [e["seq"] for e in entries] == list(range(40))
    assert [c["size"] for c in checkpoints] == [16, 32, 40]
    assert checkpoints[0]["note"].startswith("consortium/audit-test/acme\n16\n")


def _root(leaves: list[bytes]) -> bytes:
    """RFC 6962 MTH, written out here: the auditor's own, not the log's."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + _root(leaves[:k]) + _root(leaves[k:])).digest()


def test_export_gives_every_root_and_proof_by_itself(world: Path, tmp_path: Path) -> None:
    out = tmp_path / "log.jsonl"
    assert cli("export", str(world / "acme"), "-o", str(out)).returncode == 0
    prefix, suffix = b'{"entry":', b"}"
    leaves, roots = [], {}
    for line in out.read_bytes().splitlines():
        if line.startswith(prefix):
            assert line.endswith(suffix)
            # The entry's bytes, as hashed: the line between its prefix and suffix.
            leaves.append(hashlib.sha256(b"\x00" + line[len(prefix) : -len(suffix)]).digest())
        else:
            note = json.loads(line)["checkpoint"]["note"]
            _, size, root = note.split("\n")[:3]
            roots[int(size)] = base64.b64decode(root)
    assert "— café".encode() in out.read_bytes()  # written as UTF-8, not escaped
    assert len(leaves) == 40 and sorted(roots) == [16, 32, 40]
    for size, root in roots.items():
        assert _root(leaves[:size]) == root, f"checkpoint {size}"
    tree = Tree(leaves)
    for size, root in roots.items():
        for i in range(size):
            verify_inclusion(i, size, leaves[i], tree.inclusion_proof(i, size), root)
    sizes = sorted(roots)
    for old, new in itertools.pairwise(sizes):
        verify_consistency(old, new, tree.consistency_proof(old, new), roots[old], roots[new])


def test_a_tampered_log_fails_with_the_finding(world: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "acme"
    shutil.copytree(world / "acme", copy)
    db = sqlite3.connect(copy / "data" / "audit.sqlite3")
    db.execute("DELETE FROM entries WHERE seq = 7")
    db.commit()
    db.close()
    result = cli("verify", str(copy))
    assert result.returncode == 1
    assert "entry 7: missing" in result.stdout and "FAILED" in result.stdout


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (("verify", "/nonexistent/org"), 2, ("no node.toml here",)),
        (("export", "/nonexistent/org"), 2, ("no node.toml here",)),
    ],
)
def test_bad_input_is_one_line(args: tuple[str, ...], code: int, words: tuple[str, ...]) -> None:
    one_error_line(cli(*args), code, *words)


def test_bad_organizations_are_one_line(world: Path, tmp_path: Path) -> None:
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "node.toml").write_text('[node]\norg_id = "lone"\n')
    one_error_line(cli("verify", str(lone)), 2, "no [federation]")
    stranger = organization(
        tmp_path,
        "umbrella",
        world / "fed" / "federation.toml",
        world / "fed" / "admin" / "public.jwk",
    )
    one_error_line(
        cli("verify", str(world / "acme"), "--witness", str(stranger)), 2, "not a member"
    )
    # globex keeps no log: verify names it, export refuses.
    missing = cli("verify", str(world / "globex"))
    assert missing.returncode == 1 and "no audit log at" in missing.stdout
    one_error_line(cli("export", str(world / "globex")), 2, "no audit log here")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "node.toml").write_text("[node\n")
    one_error_line(cli("verify", str(broken)), 2, "node.toml")
