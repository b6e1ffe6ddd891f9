"""`consortium redact disclose | check` as a user runs them (a subprocess): the origin
discloses one type of span (or all, only when asked) into a private receipt file, the
auditor checks it against the roster (exit 0), a tampered receipt fails (exit 1), and
every bad input is one error line and exit code 2, without a traceback."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import Result
from google.protobuf.json_format import MessageToDict
from typer.testing import CliRunner

from consortium.cli.app import app
from consortium.federation.roster import sign_roster, write_roster
from consortium.redaction.receipts import DisclosureStore, make_disclosure
from consortium.trust.keys import generate_key, write_public_key
from tests.cli.test_trust_cli import one_error_line
from tests.node.test_receipts import World

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-m", "consortium.cli", "redact", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=cwd,
    )


class Setup:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.world = World()
        self.config = tmp / "node.toml"
        self.config.write_text("[node]\norg_id = 'acme'\n")
        self.roster = tmp / "federation.toml"
        write_roster(self.roster, self.world.roster)
        self.message, self.disclosures = self.world.send()
        self.id = self.message.message_id
        store = DisclosureStore(tmp / "data" / "redaction.sqlite3")
        store.record(self.id, "task-1", "globex", self.message, self.disclosures)
        store.close()

    def disclose(self, *args: str, out: str = "receipt.json") -> subprocess.CompletedProcess[str]:
        return cli("disclose", "--config", str(self.config), *args, "-o", str(self.tmp / out))

    def check(self, *args: str) -> subprocess.CompletedProcess[str]:
        return cli("check", *args, "--roster", str(self.roster))

    def receipt(self, name: str = "receipt.json") -> dict[str, object]:
        data: dict[str, object] = json.loads((self.tmp / name).read_text())
        return data


@pytest.fixture
def s(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


def test_disclose_one_type_and_check_it(s: Setup) -> None:
    result = s.disclose(s.id, "--type", "EMAIL_ADDRESS")
    assert result.returncode == 0, result.stderr
    assert "1 of 4 span(s) (EMAIL_ADDRESS x1)" in result.stdout
    path = s.tmp / "receipt.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    receipt = s.receipt()
    assert receipt["recipient"] == "globex"
    assert receipt["message"] == MessageToDict(s.message)
    assert receipt["disclosures"] == [s.disclosures[1].encoded]
    assert "Ann Lee" not in path.read_text()  # the other spans stay with the origin

    result = s.check(str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "signature: ok (acme -> globex" in result.stdout
    assert s.disclosures[1].digest in result.stdout and "EMAIL_ADDRESS" in result.stdout
    assert "verified: 1 of 1" in result.stdout
    assert "bob@example.com" not in result.stdout  # no values unless asked
    shown = s.check(str(path), "--show-values")
    assert shown.returncode == 0 and "bob@example.com" in shown.stdout


def test_disclose_all_only_when_asked(s: Setup) -> None:
    one_error_line(s.disclose(s.id), 2, "--all")
    one_error_line(s.disclose(s.id, "--all", "--type", "PERSON"), 2, "--all")
    result = s.disclose(s.id, "--all")
    assert result.returncode == 0, result.stderr
    assert s.receipt()["disclosures"] == [d.encoded for d in s.disclosures]
    assert s.check(str(s.tmp / "receipt.json")).returncode == 0
    result = s.disclose(s.id, "--digest", s.disclosures[3].digest, out="one.json")
    assert result.returncode == 0, result.stderr
    assert s.receipt("one.json")["disclosures"] == [s.disclosures[3].encoded]


def test_disclose_bad_input(s: Setup, tmp_path: Path) -> None:
    one_error_line(
        s.disclose(s.id, "--type", "PHONE_NUMBER"), 2, "no PHONE_NUMBER span", "PERSON x2"
    )
    one_error_line(s.disclose(s.id, "--digest", "nope"), 2, "no span with digest")
    one_error_line(s.disclose("unknown-id", "--all"), 2, "no receipt for message")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "node.toml").write_text("[node]\norg_id = 'acme'\n")
    result = cli("disclose", "--config", str(empty / "node.toml"), s.id, "--all")
    one_error_line(result, 2, "redaction.sqlite3", "redacted nothing yet")
    result = cli("disclose", "--config", str(tmp_path / "missing.toml"), s.id, "--all")
    one_error_line(result, 2, "missing.toml")
    one_error_line(s.disclose(s.id, "--all", out="no/such/dir/r.json"), 2, "cannot write")


def test_a_tampered_receipt_fails_with_exit_1(s: Setup) -> None:
    assert s.disclose(s.id, "--type", "PERSON").returncode == 0
    path = s.tmp / "receipt.json"
    receipt = s.receipt()
    forged = dict(receipt, disclosures=[make_disclosure("PERSON", "Ann Lee").encoded])
    path.write_text(json.dumps(forged))
    result = s.check(str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED: its digest is not among" in result.stdout and "NOT verified" in result.stdout
    message = json.loads(json.dumps(receipt["message"]))
    message["parts"][0]["text"] += " and more"
    path.write_text(json.dumps(dict(receipt, message=message)))
    result = s.check(str(path))
    assert result.returncode == 1
    assert "signature: FAILED: bad_signature" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_check_a_message_file_and_disclosures(s: Setup) -> None:
    message = s.tmp / "message.json"
    message.write_text(json.dumps(MessageToDict(s.message)))
    args = ["--message", str(message)]
    result = s.check(
        *args, "--disclosure", s.disclosures[0].encoded, "--disclosure", s.disclosures[2].encoded
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verified: 2 of 2" in result.stdout
    other = make_disclosure("PERSON", "Ann Lee")
    assert s.check(*args, "--disclosure", other.encoded).returncode == 1


def test_check_bad_input_is_one_line(s: Setup) -> None:
    t = s.tmp
    good = s.disclosures[0].encoded
    (t / "bad.json").write_text("{not json")
    (t / "list.json").write_text("[]")
    (t / "notmsg.json").write_text(json.dumps({"message": {"foo": 1}, "disclosures": [good]}))
    (t / "strmsg.json").write_text(json.dumps({"message": "x", "disclosures": [good]}))
    msg = MessageToDict(s.message)
    (t / "baddisc.json").write_text(json.dumps({"message": msg, "disclosures": [good, "@@"]}))
    (t / "nodisc.json").write_text(json.dumps({"message": msg, "disclosures": []}))
    (t / "notlist.json").write_text(json.dumps({"message": msg, "disclosures": good}))
    (t / "m.json").write_text(json.dumps(msg))
    (t / "binary.json").write_bytes(b"\xff\xfe\x00")
    cases = [
        ((str(t / "missing.json"),), "receipt not found"),
        ((str(t / "bad.json"),), "not JSON"),
        ((str(t / "binary.json"),), "not UTF-8"),
        ((str(t),), "is a directory"),
        ((str(t / "list.json"),), "not a receipt"),
        ((str(t / "notmsg.json"),), "message: not an A2A message"),
        ((str(t / "strmsg.json"),), "not an A2A message"),
        ((str(t / "baddisc.json"),), "disclosure 2: the disclosure is not unpadded base64url"),
        ((str(t / "nodisc.json"),), "no disclosure to check"),
        ((str(t / "notlist.json"),), "disclosures: not a list of strings"),
        ((), "give a RECEIPT file"),
        ((str(t / "nodisc.json"), "--message", str(t / "m.json")), "not both"),
        (("--message", str(t / "m.json")), "no disclosure to check"),
        (("--message", str(t / "m.json"), "--disclosure", "W10"), "array of 3"),
    ]
    for args, words in cases:
        one_error_line(s.check(*args), 2, words)
    s.roster.write_text("federation_id = 'fed'\n")
    (t / "r.json").write_text(json.dumps({"message": msg, "disclosures": [good]}))
    one_error_line(s.check(str(t / "r.json")), 2, "federation.toml", "name: required")
    result = cli("check", str(t / "r.json"), "--roster", str(t / "nope.toml"))
    one_error_line(result, 2, "nope.toml", "file not found")


def test_check_the_roster_signature_when_given_the_admin_key(s: Setup) -> None:
    admin = generate_key()
    write_public_key(s.tmp / "admin.jwk", admin)
    assert s.disclose(s.id, "--type", "IBAN_CODE").returncode == 0
    args = (str(s.tmp / "receipt.json"), "--admin-pubkey", str(s.tmp / "admin.jwk"))
    one_error_line(s.check(*args), 2, "federation.toml", "roster")  # not signed
    write_roster(s.roster, sign_roster(s.world.roster, [admin]))
    result = s.check(*args)
    assert result.returncode == 0, result.stdout + result.stderr


def _preview(config: Path, peer: str, text: str) -> Result:
    """`consortium redact preview`, in this process (the detector loads once per call,
    its libraries once per process: a subprocess per case would cost seconds each)."""
    return CliRunner().invoke(
        app, ["redact", "preview", "--config", str(config), "--peer", peer, text]
    )


def test_preview_shows_what_a_peer_would_receive(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        '[node]\norg_id = "acme"\n[redaction]\nenabled = true\n'
        'actions = { US_SSN = "block" }\n'
        '[redaction.peers.initech]\ndefault = "mask"\n'
    )
    r = _preview(config, "globex", "Mail ann@x.org")
    assert r.exit_code == 0, r.output
    assert "Mail <EMAIL_ADDRESS_1>" in r.output and "ann@x.org" not in r.output
    r = _preview(config, "initech", "Mail ann@x.org")
    assert r.exit_code == 0 and "Mail <EMAIL_ADDRESS>" in r.output
    r = _preview(config, "globex", "SSN 536-90-4399")
    assert r.exit_code == 1 and "blocked for globex: US_SSN" in r.output
    assert "536-90-4399" not in r.output
    # Unicode formatting does not hide a value: no-break spaces between a card's digits
    # (the example: it went out as <STREET_ADDRESS_1> and twelve raw digits).
    r = _preview(config, "globex", "card 4111\u00a01111\u00a01111\u00a01111")
    assert r.exit_code == 0, r.output
    assert "CREDIT_CARD" in r.output and "1111" not in r.output


def test_preview_bad_input_is_one_line(tmp_path: Path) -> None:
    r = cli("preview", "--config", str(tmp_path / "none.toml"), "--peer", "x", "t")
    one_error_line(r, 2, "file not found")
    config = tmp_path / "node.toml"
    config.write_text('[node]\norg_id = "acme"\n[redaction]\nactions = { NOPE = "keep" }\n')
    r = cli("preview", "--config", str(config), "--peer", "x", "t")
    one_error_line(r, 2, "unknown entity type 'NOPE'")
