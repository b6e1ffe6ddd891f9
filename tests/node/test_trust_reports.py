"""Members' trust reports between real echo nodes on loopback (gRPC): a report sent
through the exchange is signed, acknowledged, kept and folded in; a forged one, one from
a non-member or from a caller that is no member, one with bad content, a stale one and
one that names a task are refused and counted, changing no score; entries about unknown
peers are dropped; the reports survive in trust.sqlite3; the periodic round runs; and
the node keeps serving. A report never becomes a task.

The report rounds are driven by the tests (`report_interval_s = 0` in the fixture), so
nothing else sends reports while a test looks at the counters.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from a2a.types import a2a_pb2, a2a_pb2_grpc
from google.protobuf import json_format, struct_pb2

from consortium.cli.trust import _peers_json
from consortium.node.config import parse_config
from consortium.node.reports import REPORT, TrustReports, ack_of, report_message
from consortium.protocols.replies import ReportAck
from consortium.trust.keys import generate_key, load_private_key
from consortium.trust.reports import ReportEntry, TrustReport
from consortium.trust.reputation import Evidence
from consortium.trust.reputation_engine import ReputationAssessor
from consortium.trust.reputation_store import ReputationStore
from consortium.trust.signing import SigningIdentity, sign_request
from tests.integration.test_federation import Federation

pytestmark = pytest.mark.asyncio(loop_scope="module")


class ReportFederation(Federation):
    def config(self, org: str) -> Any:
        cfg = super().config(org)
        data = cfg.model_dump(mode="json", exclude={"base_dir"})
        data["trust"] = {"report_interval_s": 0}
        return parse_config(data, path=cfg.base_dir / "node.toml")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ReportFederation]:
    f = ReportFederation(tmp_path_factory.mktemp("reports"))
    try:
        await f.start()
        yield f
    finally:
        await f.stop()


def reports(fed: Federation, org: str) -> TrustReports:
    r = fed.nodes[org].reports
    assert r is not None
    return r


def assessor(fed: Federation, org: str) -> ReputationAssessor:
    federation = fed.nodes[org].federation
    assert federation is not None and isinstance(federation.assessor, ReputationAssessor)
    return federation.assessor


async def send(fed: Federation, sender: str, to: str, message: a2a_pb2.Message) -> ReportAck:
    """`message` through `sender`'s exchange (signed, verified, assessed) to `to`."""
    federation = fed.nodes[sender].federation
    assert federation is not None
    reply = await federation.peers.exchange(to, message, REPORT)
    ack = ack_of(reply.message)
    assert ack is not None
    return ack


def signed(fed: Federation, sender: str, to: str, message: a2a_pb2.Message) -> a2a_pb2.Message:
    node = fed.nodes[sender]
    key = load_private_key(node.config.resolve(node.config.identity.private_key))
    return sign_request(message, SigningIdentity(key, sender, "test-federation"), recipient=to)[0]


async def raw_send(fed: Federation, to: str, message: a2a_pb2.Message, **kw: Any) -> Any:
    endpoints = fed.nodes[to].endpoints
    assert endpoints is not None
    async with grpc.aio.insecure_channel(endpoints.grpc_target) as ch:
        return await a2a_pb2_grpc.A2AServiceStub(ch).SendMessage(
            a2a_pb2.SendMessageRequest(message=message), **kw
        )


def tasks(fed: Federation, org: str) -> int:
    with sqlite3.connect(fed.nodes[org].config.database_path) as db:
        return int(db.execute("SELECT count(*) FROM tasks").fetchone()[0])


def report(reporter: str, at: float | None = None, **scores: float) -> TrustReport:
    return TrustReport(
        reporter=reporter,
        issued_at=time.time() if at is None else at,
        entries=[ReportEntry(org=o, score=s, evidence=20) for o, s in scores.items()],
    )


def opinion(fed: Federation, org: str, peer: str) -> tuple[float, float]:
    return assessor(fed, org).model_reputation(peer, "").opinion


async def test_a_members_report_is_acknowledged_kept_and_folded_in(fed: ReportFederation) -> None:
    # acme's own evidence: initech fails canaries.
    for _ in range(4):
        assessor(fed, "acme").record(Evidence("initech", "canary", False, "canary_failed"))
    own = reports(fed, "acme").own_report()
    assert [e.org for e in own.entries] == ["initech"] and own.entries[0].score < 0.7
    tasks_before = tasks(fed, "globex")
    outcomes = await reports(fed, "acme").send_all()
    assert outcomes == {"globex": "ok", "initech": "ok"}
    assert reports(fed, "acme").sent == 2
    globex = reports(fed, "globex")
    assert globex.received == 1
    good, bad = opinion(fed, "globex", "initech")
    # Folded in: acme's score of initech, as pseudo-answers; initech's score at globex
    # went down.
    assert good / (good + bad) == pytest.approx(own.entries[0].score, abs=1e-3)
    assert assessor(fed, "globex").standing("initech").score < 0.9
    # globex knows nothing of initech itself: its routing now weighs acme higher.
    federation = fed.nodes["globex"].federation
    assert federation is not None
    weights = {p.org: p.trust for p in federation.peers.candidates()}
    assert weights["initech"] < weights["acme"]
    # initech is told about itself: dropped, counted.
    assert reports(fed, "initech").dropped["about_self"] == 1
    assert opinion(fed, "initech", "initech") == (0.0, 0.0)
    # Kept in trust.sqlite3, seen by another connection (the CLI), and shown per peer.
    store = ReputationStore(fed.nodes["globex"].config.trust_path, must_exist=True)
    try:
        assert set(store.load_reports()) == {"acme"}
        assert store.load_opinions()["initech"] == pytest.approx((good, bad))
    finally:
        store.close()
    shown = {p["peer"]: p for p in _peers_json(assessor(fed, "globex").reputations())}
    assert shown["initech"]["reports"] == {"good": round(good, 6), "bad": round(bad, 6)}
    # A message-only exchange: no task at the receiver, and the ack was assessed as a
    # verified reply at the sender.
    assert tasks(fed, "globex") == tasks_before
    counts = assessor(fed, "acme").model_reputation("globex", "").counts
    assert counts.get(("protocol", True), 0) >= 1
    health = await fed.healthz("globex")
    assert health["trust_reports"]["received"] == 1


async def test_a_forged_report_is_refused_before_it_is_read(fed: ReportFederation) -> None:
    message = signed(fed, "acme", "globex", report_message(report("acme", initech=1.0)))
    # Tampered after signing: initech praised instead.
    tampered = a2a_pb2.Message()
    tampered.CopyFrom(message)
    value = struct_pb2.Value()
    json_format.ParseDict(report("acme", initech=0.0).wire(), value)
    tampered.parts[0].data.CopyFrom(value)
    before = opinion(fed, "globex", "initech")
    refused = dict(fed.nodes["globex"].handler.refusals)  # type: ignore[union-attr]
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await raw_send(fed, "globex", tampered)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    handler = fed.nodes["globex"].handler
    assert handler is not None
    assert handler.refusals["bad_signature"] == refused.get("bad_signature", 0) + 1
    assert opinion(fed, "globex", "initech") == before


async def test_a_report_from_a_non_member_is_refused(fed: ReportFederation) -> None:
    stranger = SigningIdentity(generate_key(), "umbrella", "test-federation")
    message = sign_request(
        report_message(report("umbrella", initech=0.0)), stranger, recipient="globex"
    )[0]
    before = opinion(fed, "globex", "initech")
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await raw_send(fed, "globex", message)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED  # no membership oracle
    handler = fed.nodes["globex"].handler
    assert handler is not None and handler.refusals["non_member"] >= 1
    # A local user (an API key) is no member either.
    keys = fed.nodes["globex"].keys
    assert keys is not None
    token = keys.create("reporter")[1]
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await raw_send(
            fed,
            "globex",
            report_message(report("acme", initech=0.0)),
            metadata=(("authorization", f"Bearer {token}"),),
        )
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reports(fed, "globex").refused["not_member"] == 1
    assert opinion(fed, "globex", "initech") == before


async def test_entries_about_unknown_peers_are_dropped_and_bad_reports_refused(
    fed: ReportFederation,
) -> None:
    globex = reports(fed, "globex")
    ack = await send(
        fed, "acme", "globex", report_message(report("acme", nobody=0.0, acme=1.0, initech=0.5))
    )
    assert ack.accepted and ack.used == 1
    assert ack.dropped == {"unknown_peer": 1, "self_report": 1}
    assert globex.dropped["unknown_peer"] == 1
    assert opinion(fed, "globex", "nobody") == (0.0, 0.0)
    assert "nobody" not in {r.peer for r in assessor(fed, "globex").reputations()}
    kept = opinion(fed, "globex", "initech")

    malformed = report_message(report("acme"))
    bad = struct_pb2.Value()
    json_format.ParseDict({"reporter": "acme", "issued_at": 1.0, "entries": "x"}, bad)
    malformed.parts[0].data.CopyFrom(bad)
    text_only = report_message(report("acme"))
    text_only.parts[0].text = "initech is bad"
    odd_options = report_message(report("acme", initech=0.0))
    odd_options.metadata.update({"consortium": {"mode": "trust_report", "surprise": 1}})
    cases = {
        "malformed_report": [malformed, text_only, odd_options],
        "stale_report": [report_message(report("acme", at=1_000.0, initech=0.0))],
        "reporter_mismatch": [report_message(report("initech", globex=0.0))],
        "future_report": [report_message(report("acme", at=time.time() + 3600, initech=0.0))],
    }
    tasks_before = tasks(fed, "globex")
    for reason, messages in cases.items():
        for message in messages:
            ack = await send(fed, "acme", "globex", message)
            assert not ack.accepted and ack.reason == reason, ack
            assert ack.error and ack.error.startswith(reason)
        assert globex.refused[reason] == len(messages)
    assert opinion(fed, "globex", "initech") == kept  # no score changed
    assert tasks(fed, "globex") == tasks_before  # and nothing became a task
    # A trust report cannot name a task.
    with_task = report_message(report("acme", initech=0.0))
    with_task.task_id = "some-task"
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await raw_send(fed, "globex", signed(fed, "acme", "globex", with_task))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The node keeps serving.
    answer = await fed.ask_via("globex", "still serving")
    assert answer.state == "completed" and answer.text == "still serving"


async def test_a_streamed_report_is_one_message_and_no_task(fed: ReportFederation) -> None:
    before = tasks(fed, "initech")
    message = signed(fed, "acme", "initech", report_message(report("acme", globex=0.9)))
    endpoints = fed.nodes["initech"].endpoints
    assert endpoints is not None
    async with grpc.aio.insecure_channel(endpoints.grpc_target) as ch:
        stream = a2a_pb2_grpc.A2AServiceStub(ch).SendStreamingMessage(
            a2a_pb2.SendMessageRequest(message=message)
        )
        events = [event async for event in stream]
    assert [e.WhichOneof("payload") for e in events] == ["message"]
    ack = ack_of(events[0].message)
    assert ack is not None and ack.accepted
    assert tasks(fed, "initech") == before


async def test_reports_survive_a_restart_of_the_exchange(fed: ReportFederation) -> None:
    node = fed.nodes["globex"]
    federation = node.federation
    assert federation is not None
    fresh = ReputationAssessor.open(node.config.trust_path)
    try:
        again = TrustReports(
            org_id="globex",
            roster=federation.roster,
            assessor=fresh,
            peers=federation.peers,
            settings=node.config.trust.report_settings(),
            skew_s=60,
        )
        assert set(again._reports) == {"acme"}
        result = again.refold()
        assert "initech" in result.opinions
        assert fresh.model_reputation("initech", "").opinion == opinion(fed, "globex", "initech")
    finally:
        fresh.close()


async def test_the_periodic_round_sends_and_a_failed_send_does_not_disturb_serving(
    fed: ReportFederation,
) -> None:
    acme = reports(fed, "acme")
    acme.settings = dataclasses.replace(acme.settings, report_interval_s=0.05)
    sent = acme.sent
    task = asyncio.create_task(acme.run())
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while acme.sent < sent + 2:
            assert asyncio.get_running_loop().time() < deadline, "no report round"
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # A peer that refuses the report (a stale clock here) is counted, not raised.
    clock = acme._clock
    acme._clock = lambda: 1_000.0
    try:
        outcomes = await acme.send_all()
    finally:
        acme._clock = clock
    assert set(outcomes.values()) == {"stale_report"}
    assert acme.send_failed["stale_report"] == 2
    answer = await fed.ask_via("acme", "after the round", peer="globex")
    assert answer.state == "completed", answer.status_text


async def test_a_report_one_replica_received_is_folded_by_another(fed: ReportFederation) -> None:
    """A second replica of globex (its own exchange and assessor on the same trust
    store), made before initech's report reaches the node, folds that report too."""
    node = fed.nodes["globex"]
    federation = node.federation
    assert federation is not None
    other = ReputationAssessor.open(node.config.trust_path)
    try:
        replica = TrustReports(
            org_id="globex",
            roster=federation.roster,
            assessor=other,
            peers=federation.peers,
            settings=node.config.trust.report_settings(),
            skew_s=60,
        )
        assert "initech" not in replica._kept_reports()
        ack = await send(fed, "initech", "globex", report_message(report("initech", acme=0.2)))
        assert ack.accepted
        replica.refold()
        assert "initech" in replica._kept_reports()
        assert other.model_reputation("acme", "").opinion == opinion(fed, "globex", "acme")
        assert opinion(fed, "globex", "acme") != (0.0, 0.0)
    finally:
        other.close()
