"""A node whose `[storage]` is PostgreSQL keeps its audit log there (node/app.py hands
build_audit the storage's "audit" store): echo nodes on loopback, globex on PostgreSQL,
a question escalated from acme to globex; globex's log holds the request it admitted,
has no audit.sqlite3, and the auditor's check of it (node/audit.py verify_organization,
what `consortium audit verify` runs) passes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from consortium.node.audit import load_history, log_file, verify_organization
from consortium.trust.audit.log import SqliteAuditLog
from tests.conftest import PgDatabase
from tests.integration.test_federation import Federation


class PgGlobex(Federation):
    def __init__(self, tmp: Path, pg: PgDatabase) -> None:
        super().__init__(tmp)
        self.pg = pg

    def config(self, org: str) -> Any:
        cfg = super().config(org)
        if org != "globex":
            return cfg
        storage = cfg.storage.model_copy(
            update={"url": self.pg.url, "password_file": str(self.pg.password_file)}
        )
        return cfg.model_copy(update={"storage": storage})


async def test_a_node_on_postgresql_keeps_its_audit_log_there(
    tmp_path: Path, pg_database: PgDatabase
) -> None:
    fed = PgGlobex(tmp_path, pg_database)
    try:
        await fed.start()
        answer = await fed.ask_via("acme", "hello", peer="globex")
        assert answer.state == "completed", answer.status_text
        globex = fed.nodes["globex"]
        assert globex.federation is not None
        log = globex.federation.audit_log
        assert isinstance(log, SqliteAuditLog) and log.where.startswith("postgresql://")
        admitted = [
            entry
            for seq in range(log.size)
            if (entry := log.entry(seq)) is not None
            and (entry["kind"], entry["dir"], entry.get("peer")) == ("request", "in", "acme")
        ]
        assert admitted
    finally:
        await fed.stop()
    cfg = fed.nodes["globex"].config
    assert not cfg.audit_path.exists()
    history, _ = load_history(cfg)
    report, unread = verify_organization(cfg, history, [fed.nodes["acme"].config])
    assert report.ok and unread == [], report.findings
    assert report.entries >= len(admitted) and report.checkpoints >= 1
    with log_file(cfg) as path:
        assert path is not None and path.is_file()


def test_the_auditor_reads_signed_copies_from_a_task_store_on_postgresql(
    tmp_path: Path, pg_database: PgDatabase
) -> None:
    """`consortium audit trace` reads each organization's signed copies where its
    [storage] keeps them: here its PostgreSQL database (one SELECT, nothing written)."""
    from a2a.types import a2a_pb2

    from consortium.node.audit_records import read_signed_copies_from
    from consortium.node.store import NodeTaskStore
    from consortium.storage import migrations
    from consortium.trust.claims import SIGNATURE_KEY
    from tests.conftest import make_config

    cfg = make_config(
        tmp_path / "acme",
        storage={"url": pg_database.url, "password_file": str(pg_database.password_file)},
    )
    storage = pg_database.storage()
    try:
        migrations.upgrade(storage)
        signed = a2a_pb2.Message(message_id="m-1", role=a2a_pb2.ROLE_AGENT)
        signed.metadata.update({SIGNATURE_KEY: "h..s"})
        task = a2a_pb2.Task(
            id="t-1",
            context_id="c",
            status=a2a_pb2.TaskStatus(state=a2a_pb2.TASK_STATE_COMPLETED, message=signed),
            history=[a2a_pb2.Message(message_id="unsigned", role=a2a_pb2.ROLE_USER)],
        )
        NodeTaskStore(storage.database("tasks")).save_sync(task, "someone")
    finally:
        storage.close()
    copies, problems = read_signed_copies_from(cfg)
    assert problems == []
    assert [c.message.message_id for c in copies] == ["m-1"]
    assert not (cfg.data_dir / "node.sqlite3").exists()
