"""`consortium audit trace` as an auditor runs it (subprocesses) over the directories of
three organizations after a real escalation on loopback (the `traced` federation of
tests/node/test_audit_trace.py): the tree, --json and --task on good records (exit 0);
and on copies of the directories, a digest edited in the receiver's log, the receiver's
entry deleted, a span dropped from a traces file, an unknown trace id (each a finding
named, exit 1, nothing read modified), and bad input (one error line, exit 2)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from a2a.types import a2a_pb2

from tests.cli.test_trust_cli import one_error_line
from tests.node.test_audit_trace import SECRET, Traced, checksums, record_tasks

pytestmark = pytest.mark.asyncio(loop_scope="module")
ROOT = Path(__file__).resolve().parents[2]
ORGS = ("acme", "globex", "initech")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def traced(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Traced]:
    yield await record_tasks(tmp_path_factory.mktemp("trace"))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-m", "consortium.cli", "audit", "trace", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def orgs(dirs: dict[str, Path]) -> list[str]:
    return [a for org in ORGS for a in ("--org", str(dirs[org]))]


def copies(traced: Traced, into: Path) -> dict[str, Path]:
    """Copies of the organizations' directories, to tamper with."""
    dirs = {}
    for org in ORGS:
        dirs[org] = into / org
        shutil.copytree(traced.dirs[org], dirs[org])
    return dirs


def as_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert "Traceback" not in result.stderr, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def request_entry(dirs: dict[str, Path], org: str, trace: str, direction: str) -> int:
    db = sqlite3.connect(dirs[org] / "data" / "audit.sqlite3")
    try:
        for seq, body in db.execute("SELECT seq, body FROM entries ORDER BY seq"):
            e = json.loads(body)
            if e["kind"] == "request" and e["dir"] == direction and e.get("trace") == trace:
                return int(seq)
    finally:
        db.close()
    raise AssertionError("no request entry")


async def test_the_tree_of_a_verified_escalation(traced: Traced) -> None:
    before = checksums(traced.dirs)
    result = cli(traced.escalation, *orgs(traced.dirs))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "acme -> globex" in result.stdout and "request (ask)" in result.stdout
    assert "globex -> acme" in result.stdout and "answer" in result.stdout
    assert "signature verified" in result.stdout and "trace verified" in result.stdout
    assert "route at acme: escalate -> globex by always" in result.stdout
    assert checksums(traced.dirs) == before
    # Identifiers, digests and counts only: never the task's text, in any output.
    as_text = cli(traced.escalation, *orgs(traced.dirs), "--json").stdout
    for output in (result.stdout, as_text):
        assert SECRET not in output and "Nightingale" not in output


async def test_json_lists_the_hops_and_every_log(traced: Traced) -> None:
    data = as_json(cli(traced.vote, *orgs(traced.dirs), "--json"))
    assert data["ok"] is True and data["trace_id"] == traced.vote
    requests = sorted(
        (h["sender"], h["receiver"], h["mode"]) for h in data["hops"] if h["kind"] == "request"
    )
    assert requests == [("acme", "globex", "score"), ("acme", "initech", "score")]
    for hop in data["hops"]:
        assert hop["sender_entry"] is not None and hop["receiver_entry"] is not None
        assert hop["verdict"] in ("signature verified", "digests agree")
    assert {org: log["ok"] for org, log in data["logs"].items()} == dict.fromkeys(ORGS, True)
    assert [f for f in data["findings"] if f["severity"] == "error"] == []


async def test_a_task_id_finds_its_trace(traced: Traced) -> None:
    data = as_json(cli("--task", traced.escalation_task, *orgs(traced.dirs), "--json"))
    assert data["trace_id"] == traced.escalation and data["ok"] is True
    missing = cli("--task", "no-such-task", *orgs(traced.dirs))
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "no span or log entry of the given logs names task no-such-task" in missing.stdout


async def test_a_digest_edited_in_the_receivers_log(traced: Traced, tmp_path: Path) -> None:
    dirs = copies(traced, tmp_path)
    seq = request_entry(dirs, "globex", traced.escalation, "in")
    db = sqlite3.connect(dirs["globex"] / "data" / "audit.sqlite3")
    (body,) = db.execute("SELECT body FROM entries WHERE seq = ?", (seq,)).fetchone()
    entry = json.loads(body)
    entry["digest"] = "A" * 43
    edited = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    db.execute("UPDATE entries SET body = ? WHERE seq = ?", (edited, seq))
    db.commit()
    db.close()
    before = checksums(dirs)
    result = cli(traced.escalation, *orgs(dirs), "--json")
    assert result.returncode == 1, result.stderr
    data = as_json(result)
    assert data["logs"]["globex"]["ok"] is False
    assert any(
        f["where"] == f"entry {seq}" and "edited" in f["what"]
        for f in data["logs"]["globex"]["findings"]
    )
    assert any("the digest differs" in f["what"] for f in data["findings"])
    [request] = [h for h in data["hops"] if h["kind"] == "request"]
    assert request["verdict"] == "failed"
    assert checksums(dirs) == before


async def test_the_receivers_entry_deleted(traced: Traced, tmp_path: Path) -> None:
    dirs = copies(traced, tmp_path)
    seq = request_entry(dirs, "globex", traced.escalation, "in")
    db = sqlite3.connect(dirs["globex"] / "data" / "audit.sqlite3")
    db.execute("DELETE FROM entries WHERE seq = ?", (seq,))
    db.commit()
    db.close()
    result = cli(traced.escalation, *orgs(dirs))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"entry {seq}: missing" in result.stdout
    assert "acme logged it; globex's log has no entry of it" in result.stdout
    assert "has no in entry of request" in result.stdout  # globex's a2a.receive span
    assert "FAILED" in result.stdout


async def test_a_span_dropped_from_a_traces_file(traced: Traced, tmp_path: Path) -> None:
    dirs = copies(traced, tmp_path)
    path = dirs["acme"] / "data" / "traces.jsonl"
    lines = []
    dropped = 0
    for line in path.read_text().splitlines():
        doc = json.loads(line)
        for rs in doc["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                kept = [s for s in ss["spans"] if s["name"] != "invoke_agent globex"]
                dropped += len(ss["spans"]) - len(kept)
                ss["spans"] = kept
        lines.append(json.dumps(doc))
    assert dropped >= 1
    path.write_text("\n".join(lines) + "\n")
    result = cli(traced.escalation, *orgs(dirs), "--json")
    assert result.returncode == 1
    data = as_json(result)
    assert any(
        f["where"].startswith("acme entry ") and "no invoke_agent span" in f["what"]
        for f in data["findings"]
    )


async def test_an_unknown_trace_is_a_finding(traced: Traced) -> None:
    result = cli("0" * 31 + "1", *orgs(traced.dirs))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "no span and no log entry of trace 00000000000000000000000000000001" in result.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--org", "/nonexistent/org"], ["node.toml"]),
        (["--org", "{tmp}"], ["node.toml", "organization's directory"]),
        ([], ["--org"]),
        (["--org", "{acme}", "--org", "{acme}"], ["acme given more than once"]),
        (["--org", "{acme}", "--html", "/nonexistent/dir/r.html"], ["no such directory"]),
    ],
)
async def test_bad_input_is_one_error_line(
    traced: Traced, tmp_path: Path, args: list[str], words: list[str]
) -> None:
    filled = [a.format(tmp=tmp_path, acme=traced.dirs["acme"]) for a in args]
    one_error_line(cli(traced.escalation, *filled), 2, *words)


async def test_a_bad_trace_id_or_none_is_one_error_line(traced: Traced) -> None:
    one_error_line(cli("not-a-trace", "--org", str(traced.dirs["acme"])), 2, "32 hexadecimal")
    one_error_line(cli("--org", str(traced.dirs["acme"])), 2, "--task")


async def test_a_receipt_not_included_is_a_finding(traced: Traced, tmp_path: Path) -> None:
    dirs = copies(traced, tmp_path)
    db = sqlite3.connect(dirs["acme"] / "data" / "audit.sqlite3")
    rows = db.execute("SELECT seq, body FROM entries WHERE kind = 'answer'").fetchall()
    seq, body = next(
        (s, b)
        for s, b in rows
        if json.loads(b).get("trace") == traced.escalation and json.loads(b).get("inclusion")
    )
    entry = json.loads(body)
    entry["inclusion"] = "not_included"
    db.execute(
        "UPDATE entries SET body = ? WHERE seq = ?",
        (json.dumps(entry, sort_keys=True, separators=(",", ":")), seq),
    )
    db.commit()
    db.close()
    data = as_json(cli(traced.escalation, *orgs(dirs), "--json"))
    assert data["ok"] is False and data["logs"]["acme"]["ok"] is False
    assert any(
        f["where"] == f"acme entry {seq}" and "'not_included', not 'included'" in f["what"]
        for f in data["findings"]
    )


async def test_a_signed_copy_altered_in_a_task_store(traced: Traced, tmp_path: Path) -> None:
    """The request as globex's task store keeps it, one word changed: its signature no
    longer verifies, and the hop says so (the logs themselves are intact)."""
    dirs = copies(traced, tmp_path)
    db = sqlite3.connect(dirs["globex"] / "data" / "node.sqlite3")
    altered = 0
    for owner, task_id, body in db.execute("SELECT owner, id, body FROM tasks").fetchall():
        task = a2a_pb2.Task()
        task.ParseFromString(body)
        for message in task.history:
            if (
                message.role == a2a_pb2.ROLE_USER
                and message.parts
                and "consortium.signature" in (message.metadata)
            ):
                message.parts[0].text += " (altered)"
                altered += 1
        db.execute(
            "UPDATE tasks SET body = ? WHERE owner = ? AND id = ?",
            (task.SerializeToString(), owner, task_id),
        )
    db.commit()
    db.close()
    assert altered >= 1
    result = cli(traced.escalation, *orgs(dirs), "--json")
    assert result.returncode == 1
    data = as_json(result)
    assert all(log["ok"] for log in data["logs"].values())
    assert any(
        "the signed copy in globex's task store fails: bad_signature" in f["what"]
        for f in data["findings"]
    )
    [request] = [h for h in data["hops"] if h["kind"] == "request"]
    assert request["verdict"] == "failed"
    assert "altered" not in result.stdout
