"""SIGKILL at random moments while a process appends to its audit log from two threads,
with a checkpoint signed every 16 entries (so kills land in appends, in checkpoint
signing, and between): over 20 trials, no acknowledged entry is lost (an entry is
acknowledged once `append` returned, as the node acts on a message only then), the log
reopens (its own check passes) and `verify_log` finds nothing wrong."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from consortium.federation.roster import Member, MemberKey, Roster
from consortium.launch.supervisor import Watcher
from consortium.node.audit import RosterHistory
from consortium.trust.audit import log_origin
from consortium.trust.audit.log import SqliteAuditLog
from consortium.trust.audit.verify import verify_log
from consortium.trust.keys import generate_key, key_id, load_private_key, write_private_key

TRIALS = 20
WRITER = textwrap.dedent(
    """
    import sys, threading
    from pathlib import Path
    from consortium.trust.audit import Hop
    from consortium.trust.audit.log import SqliteAuditLog
    from consortium.trust.keys import load_private_key

    path, key_path, trial = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    key = load_private_key(key_path)
    log = SqliteAuditLog(path, federation_id="fed", org_id="acme", key=lambda: key,
                         checkpoint_every=16)
    lock = threading.Lock()
    print("ready", flush=True)

    def work(name):
        for i in range(100_000):
            mid = f"{trial}-{name}-{i}"
            log.sent(Hop(kind="request", peer="globex", message_id=mid, kid="k",
                         digest="d" * 43, jws="h..s"))
            with lock:
                print("ack", mid, flush=True)

    threads = [threading.Thread(target=work, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    """
)


def test_no_acknowledged_entry_is_lost_to_sigkill(tmp_path: Path) -> None:
    key_path = tmp_path / "acme.jwk"
    write_private_key(key_path, generate_key())
    key = load_private_key(key_path)
    history = RosterHistory(
        [
            Roster(
                federation_id="fed",
                name="t",
                members=[
                    Member(org_id="acme", keys=[MemberKey(kid=key_id(key), x=str(key.get("x")))])
                ],
            )
        ]
    )
    path = tmp_path / "audit.sqlite3"
    rng = random.Random(14)
    acknowledged: list[str] = []
    # Each writer is stopped if this process dies mid-trial.
    watcher = Watcher()
    for trial in range(TRIALS):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(key_path), str(trial)],
            stdout=subprocess.PIPE,
            text=True,
        )
        watcher.watch(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        # Kill after a random number of acknowledgements, at a random moment after it.
        wanted = rng.randint(1, 300)
        for _ in range(wanted):
            line = proc.stdout.readline()
            assert line.startswith("ack "), line
            acknowledged.append(line.split()[1])
        time.sleep(rng.random() * 0.02)
        proc.send_signal(signal.SIGKILL)
        # What it printed before dying was acknowledged too (a line the kill cut short
        # names no entry: left out).
        rest, _ = proc.communicate(timeout=30)
        whole = rest.split("\n")[:-1]
        acknowledged += [line.split()[1] for line in whole if len(line.split()) == 2]
        assert proc.returncode == -signal.SIGKILL

        report = verify_log(path, history, origin=log_origin("fed", "acme"), org="acme")
        assert report.ok, (trial, report.findings)
        logged = {b.get("msg") for b in report.bodies}
        lost = [m for m in acknowledged if m not in logged]
        assert lost == [], (trial, lost[:5])
        assert report.entries >= len(acknowledged)
    watcher.close()

    # The log reopens after the last kill and goes on.
    log = SqliteAuditLog(path, federation_id="fed", org_id="acme", key=lambda: key)
    try:
        assert log.size == report.entries
    finally:
        log.close()
    assert verify_log(path, history, origin=log_origin("fed", "acme"), org="acme").ok


@pytest.mark.parametrize("durable_against", ["crash", "power"])
def test_each_append_is_committed_before_it_returns(tmp_path: Path, durable_against: str) -> None:
    """A second connection sees an entry as soon as `append` returned."""
    import sqlite3

    key = generate_key()
    log = SqliteAuditLog(
        tmp_path / "a.sqlite3",
        federation_id="fed",
        org_id="acme",
        key=lambda: key,
        durable_against=durable_against,  # type: ignore[arg-type]
    )
    try:
        other = sqlite3.connect(tmp_path / "a.sqlite3")
        for i in range(5):
            log.record("route", detail={"i": i})
            [(n,)] = other.execute("SELECT COUNT(*) FROM entries").fetchall()
            assert n == i + 1
        other.close()
    finally:
        log.close()
