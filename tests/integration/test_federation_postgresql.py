"""The federation round trip with every organization's node on PostgreSQL storage (a
database each, one real server): signing and verifying — their replay-cache inserts —
run in the storage's threads (node/offload.py), off the event loop, and the trace keeps
its shape: the verification's and the signing's own times on their spans."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from consortium.node.config import parse_config
from consortium.node.offload import INLINE
from consortium.node.setup import init_node
from tests.integration.test_federation import ORGS, Federation, spans_of


class PgFederation(Federation):
    def __init__(self, tmp: Path, urls: dict[str, str], password_file: Path) -> None:
        super().__init__(tmp)
        self.urls = urls
        self.password_file = password_file

    def config(self, org: str) -> Any:
        d = self.tmp / org
        init_node(org, d, grpc_port=0, http_port=0)
        data: dict[str, Any] = {
            "node": {"org_id": org},
            "server": {
                "grpc_port": 0,
                "http_port": 0,
                "stream_interval_s": 0.0,
                "shutdown_grace_s": 1.0,
            },
            "model": {"backend": "echo", "name": f"echo-{org}"},
            "federation": {"roster": str(self.roster), "admin_key": str(self.admin_pub)},
            "storage": {"url": self.urls[org], "password_file": str(self.password_file)},
        }
        return parse_config(data, path=d / "node.toml")


@pytest.fixture
async def pg_fed(pg_cluster: Any, tmp_path: Path) -> Any:
    import secrets

    urls = {org: pg_cluster.create_database(f"f_{org}_{secrets.token_hex(4)}") for org in ORGS}
    password_file = tmp_path / "db-password"
    password_file.write_text(pg_cluster.password + "\n")
    password_file.chmod(0o600)
    f = PgFederation(tmp_path, urls, password_file)
    try:
        await f.start()
        yield f
    finally:
        await f.stop()


async def test_a_round_trip_on_postgresql_verifies_off_the_event_loop(
    pg_fed: PgFederation,
) -> None:
    for org in ORGS:
        node = pg_fed.nodes[org]
        assert node.databases is not None and node.databases.kind == "postgresql"
        assert node.federation is not None and node.federation.offload is not INLINE
    # Where globex's replay cache is written from: a storage thread, never the loop.
    globex_node = pg_fed.nodes["globex"]
    assert globex_node.federation is not None
    replay = globex_node.federation.replay
    first_sighting = replay.first_sighting
    threads: list[str] = []

    def spy(sender: str, message_id: str, expires_at: float) -> bool:
        threads.append(threading.current_thread().name)
        return first_sighting(sender, message_id, expires_at)

    replay.first_sighting = spy  # type: ignore[method-assign]
    loop_thread = threading.current_thread().name
    answer = await pg_fed.ask_via("acme", "trace me on postgresql", peer="globex")
    assert answer.state == "completed", answer.status_text
    assert answer.text == "trace me on postgresql"
    assert answer.provenance.verified is True and answer.provenance.verified_events >= 4
    assert threads and all(t != loop_thread and t.startswith("storage") for t in threads)
    await pg_fed.stop()
    acme = spans_of(pg_fed.nodes["acme"].config.data_dir / "traces.jsonl")
    globex = spans_of(pg_fed.nodes["globex"].config.data_dir / "traces.jsonl")
    call = next(s for s in acme if s["name"] == "invoke_agent globex")
    receive = next(
        s
        for s in globex
        if s["name"].startswith("a2a.receive ") and s["attrs"].get("consortium.sender") == "acme"
    )
    assert receive["traceId"] == call["traceId"] and receive["parentSpanId"] == call["spanId"]
    verify = next(
        s for s in globex if s["name"] == "consortium.verify" and s["traceId"] == call["traceId"]
    )
    assert verify["attrs"]["consortium.verdict"] == "verified"
    assert verify["parentSpanId"] == receive["spanId"]  # the thread kept the span's context
    sign = next(s for s in acme if s["name"] == "consortium.sign")
    assert sign["parentSpanId"] == call["spanId"]
    received = next(
        s for s in acme if s["name"] == "consortium.verify" and s["parentSpanId"] == call["spanId"]
    )
    verifying_ms = float(received["attrs"]["consortium.verify.ms"])
    span_ns = int(received["endTimeUnixNano"]) - int(received["startTimeUnixNano"])
    assert 0 < verifying_ms * 1e6 < span_ns
    signing_ms = float(receive["attrs"]["consortium.sign.ms"])
    receive_ns = int(receive["endTimeUnixNano"]) - int(receive["startTimeUnixNano"])
    assert 0 < signing_ms * 1e6 < receive_ns
