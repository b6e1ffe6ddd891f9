"""A node that stops sends its last checkpoint to its witnesses (echo nodes in process,
real gRPC on loopback, witnessing rounds far apart): afterwards the witnesses have
cosigned all of its log but the records of that last submission itself, so its tail
cannot be rewritten unnoticed."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from consortium.trust.audit import log_origin
from consortium.trust.audit.log import SqliteAuditLog
from tests.integration.test_federation import Federation


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    db = sqlite3.connect(path)
    try:
        return list(db.execute(sql))
    finally:
        db.close()


async def test_the_last_checkpoint_is_witnessed_at_stop(tmp_path: Path) -> None:
    fed = Federation(tmp_path)  # witness_interval_s = 30: no round during the test
    try:
        await fed.start()
        answer = await fed.ask_via("acme", "hello", peer="globex")
        assert answer.state == "completed", answer.status_text
        acme = fed.nodes["acme"]
        await acme.stop()
        path = acme.config.audit_path
        cosigned = dict(rows(path, "SELECT witness, MAX(size) FROM cosignatures GROUP BY witness"))
        assert set(cosigned) == {"globex", "initech"}, cosigned
        size = min(int(str(n)) for n in cosigned.values())
        # After the witnessed checkpoint: only the submission's own request and answer.
        tail = [
            json.loads(str(b))
            for (b,) in rows(path, f"SELECT body FROM entries WHERE seq >= {size}")
        ]
        assert tail and {(e["kind"], e["peer"]) for e in tail} <= {
            (kind, peer) for kind in ("request", "answer") for peer in ("globex", "initech")
        }, tail
        for witness in ("globex", "initech"):
            log = fed.nodes[witness].federation.audit_log  # type: ignore[union-attr]
            assert isinstance(log, SqliteAuditLog)
            seen = log.seen(log_origin("test-federation", "acme"))
            assert seen is not None and seen.size == cosigned[witness]
    finally:
        await fed.stop()
