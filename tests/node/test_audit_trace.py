"""An auditor rebuilds real three-organization tasks (echo nodes on loopback: these
tests are about messaging) from the organizations' spans, audit logs and task stores
(node/audit_trace.py): an escalation acme -> globex and a vote of acme, globex and
initech over a multiple-choice question. Every hop is logged on both sides with equal
digests, every invoke_agent and a2a.receive span has its entry and every entry its
span, signed copies in the task stores verify, and the logs verify and are witnessed as
configured. The tampering cases (on copies of the organizations' directories) are
tests/cli/test_audit_trace_cli.py."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from consortium.node.audit_records import parse_spans, read_orgs
from consortium.node.audit_trace import find_traces, trace_report
from consortium.node.config import load_config, parse_config
from tests.integration.test_federation import ORGS, Federation

pytestmark = pytest.mark.asyncio(loop_scope="module")
SECRET = "the quarterly numbers of Project Nightingale"
QUESTION = "Which part of a plant takes in water from the soil?"
CHOICES = ["the roots take in water", "the leaves", "the flowers", "the seeds"]
GROUPS = {"panel": {"protocol": "vote", "members": ["self", "globex", "initech"]}}


class PanelFederation(Federation):
    """Echo nodes whose replies carry log receipts; acme has a voting panel of all three."""

    def config(self, org: str) -> Any:
        cfg = super().config(org)
        data = cfg.model_dump(mode="json", exclude={"base_dir"})
        data["audit"]["receipts"] = True
        if org == "acme":
            data["groups"] = GROUPS
        return parse_config(data, path=cfg.base_dir / "node.toml")


@dataclass
class Traced:
    fed: Federation
    dirs: dict[str, Path]
    escalation: str  # trace ids
    vote: str
    escalation_task: str
    vote_task: str


def entries(path: Path) -> list[dict[str, Any]]:
    db = sqlite3.connect(path)
    try:
        return [json.loads(b) for (b,) in db.execute("SELECT body FROM entries ORDER BY seq")]
    finally:
        db.close()


def trace_of(log: list[dict[str, Any]], peer: str) -> str:
    return str([e for e in log if e["kind"] == "request" and e.get("peer") == peer][-1]["trace"])


async def record_tasks(tmp: Path) -> Traced:
    """Runs an escalation and a vote on a fresh echo federation in `tmp`, stops it (which
    flushes every node's span exporter and checkpoints every log) and writes each
    organization's node.toml as an auditor reads it."""
    fed = PanelFederation(tmp)
    try:
        await fed.start()
        escalated = await fed.ask_via("acme", SECRET, route="always:globex")
        assert escalated.state == "completed", escalated.status_text
        acme_log = fed.nodes["acme"].config.audit_path
        escalation = trace_of(entries(acme_log), "globex")
        voted = await fed.ask_via("acme", QUESTION, choices=CHOICES, route="panel")
        assert voted.state == "completed", voted.status_text
        vote = trace_of(entries(acme_log), "initech")
    finally:
        await fed.stop()
    dirs = {}
    for org in ORGS:
        # The test's nodes run on a config built in memory; node.toml gets its federation.
        with (fed.tmp / org / "node.toml").open("a") as f:
            f.write(f'\n[federation]\nroster = "{fed.roster}"\nadmin_key = "{fed.admin_pub}"\n')
        dirs[org] = fed.tmp / org
    return Traced(fed, dirs, escalation, vote, escalated.task_id, voted.task_id)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def traced(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Traced]:
    yield await record_tasks(tmp_path_factory.mktemp("trace"))


def report_of(traced: Traced, trace_id: str, orgs: tuple[str, ...] = ORGS) -> Any:
    configs = [load_config(traced.dirs[o] / "node.toml") for o in orgs]
    return trace_report(read_orgs(configs), trace_id)


def checksums(dirs: dict[str, Path]) -> dict[str, bytes]:
    return {
        str(p): p.read_bytes() for d in dirs.values() for p in sorted(d.rglob("*")) if p.is_file()
    }


async def test_an_escalation_is_rebuilt_and_every_hop_verifies(traced: Traced) -> None:
    before = checksums(traced.dirs)
    report = report_of(traced, traced.escalation)
    assert report.ok, [str(f) for f in report.findings] + [
        str(f) for log in report.logs.values() for f in log.findings
    ]
    assert checksums(traced.dirs) == before  # nothing read was modified
    [request] = [h for h in report.hops if h.kind == "request"]
    assert (request.sender, request.receiver, request.mode) == ("acme", "globex", "ask")
    assert request.out is not None and request.into is not None
    assert request.out["digest"] == request.into["digest"]
    assert request.verdict == "signature verified"  # globex's task store keeps it
    assert request.answers == 1 and request.events >= 4
    assert request.model == "echo-globex" and request.tokens and request.tokens > 0
    assert request.latency_ms is not None and request.latency_ms > 0
    assert request.inclusion == "included"
    assert "globex's log receipt included" in request.marks
    for hop in report.hops:
        assert hop.out is not None and hop.into is not None, hop
        assert hop.out["digest"] == hop.into["digest"] and hop.out["jws"] == hop.into["jws"]
        assert hop.verdict in ("signature verified", "digests agree")
        if hop.kind != "request":
            assert (hop.sender, hop.receiver, hop.parent) == ("globex", "acme", request.message_id)
    # Every invoke_agent span of the trace is a hop (and the checks found no orphan).
    assert report.spans["acme"] > 0 and report.spans["globex"] > 0
    assert report.spans["initech"] == 0
    assert {r.get("route") for r in report.routes} >= {"escalate"}


async def test_a_vote_of_three_organizations_is_rebuilt(traced: Traced) -> None:
    report = report_of(traced, traced.vote)
    assert report.ok, [str(f) for f in report.findings]
    requests = sorted((h.receiver, h.mode) for h in report.hops if h.kind == "request")
    assert requests == [("globex", "score"), ("initech", "score")]
    for hop in report.hops:
        assert hop.out is not None and hop.into is not None
        assert hop.out["digest"] == hop.into["digest"]
        assert hop.verdict in ("signature verified", "digests agree")
    answers = [h for h in report.hops if h.kind == "answer"]
    assert sorted(h.sender for h in answers) == ["globex", "initech"]
    # Scores are one Message each, kept in no task store: the digests agree.
    assert {h.verdict for h in answers} == {"digests agree"}


async def test_a_task_id_finds_its_trace(traced: Traced) -> None:
    configs = [load_config(traced.dirs[o] / "node.toml") for o in ORGS]
    records = read_orgs(configs)
    assert find_traces(records, traced.escalation_task)[0] == traced.escalation
    assert find_traces(records, traced.vote_task)[0] == traced.vote
    assert find_traces(records, "no-such-task") == []


async def test_an_organization_left_out_leaves_hops_one_sided(traced: Traced) -> None:
    report = report_of(traced, traced.escalation, ("acme",))
    assert report.ok  # only warnings: globex's side is not checked
    assert {h.verdict for h in report.hops} <= {"one side", "signature verified"}
    assert any("globex was not given" in f.what for f in report.findings)


async def test_witnessing_is_checked_as_configured(traced: Traced, tmp_path: Path) -> None:
    """A log whose config asks for more cosignatures than it has fails the trace."""
    dirs = {}
    for org in ORGS:
        dirs[org] = tmp_path / org
        shutil.copytree(traced.dirs[org], dirs[org])
    with (dirs["globex"] / "node.toml").open("a") as f:
        f.write("\n[audit]\nwitnessed_by = 5\n")
    configs = [load_config(dirs[o] / "node.toml") for o in ORGS]
    report = trace_report(read_orgs(configs), traced.escalation)
    assert not report.ok and not report.logs["globex"].ok
    assert any("cosignatures" in f.what for f in report.logs["globex"].findings)


async def test_garbage_in_entries_and_span_lines_is_reported_never_raised(
    traced: Traced,
) -> None:
    """Edited entries may hold any JSON; a traces file any text: the join reports them."""
    records = read_orgs([load_config(traced.dirs[o] / "node.toml") for o in ORGS])
    acme = records[0]
    t = traced.escalation
    acme.log.bodies += [
        {"kind": "request", "dir": "out", "msg": ["x"], "trace": t, "time": "soon", "seq": "a"},
        {"kind": "answer", "dir": "in", "msg": "m2", "trace": t, "time": 1e300, "jws": 5},
        {
            "kind": "answer",
            "dir": "in",
            "peer": "globex",
            "msg": "m4",
            "trace": t,
            "inclusion": "x",
            "seq": 99,
        },
        {
            "kind": "answer",
            "dir": "in",
            "peer": "globex",
            "msg": "m5",
            "trace": t,
            "inclusion": "included",
            "receipt": [1],
        },
        {"kind": "route", "trace": t, "detail": [1, 2]},
        {"kind": "request", "dir": "in", "peer": None, "msg": "m3", "trace": t, "kid": {}},
    ]
    spans, problems = parse_spans(
        [
            "not json",
            "[]",
            json.dumps({"resourceSpans": [{"resource": {}, "scopeSpans": [{"spans": [{}]}]}]}),
            json.dumps({"resourceSpans": [{"resource": {"attributes": [7]}}]}),
        ],
        "traces.jsonl",
    )
    assert len(problems) == 3 and "traces.jsonl line 1 is not OTLP JSON" in problems[0]
    assert acme.spans is not None
    acme.spans += spans
    report = trace_report(records, t)
    assert not report.ok
    assert any("not 'included'" in f.what for f in report.findings)
    assert any("checks as 'malformed'" in f.what for f in report.findings)
    assert any(
        f.where == "acme entry -1" and "without a peer, a message id" in f.what
        for f in report.findings
    )
    assert any("held no key" in f.what or "JWS header" in f.what for f in report.findings)


async def test_a_refused_message_is_the_receivers_side_of_its_hop(traced: Traced) -> None:
    """globex's log as if it had refused acme's scoring request of the vote."""
    records = read_orgs([load_config(traced.dirs[o] / "node.toml") for o in ORGS])
    globex = records[1]
    [entry] = [
        e
        for e in globex.log.bodies
        if e["kind"] == "request" and e["dir"] == "in" and e.get("trace") == traced.vote
    ]
    globex.log.bodies.remove(entry)
    refusal = {k: entry[k] for k in ("seq", "time", "peer", "msg", "trace", "span")}
    globex.log.bodies.append(
        {**refusal, "kind": "refusal", "dir": "in", "verdict": "bad_signature", "what": "message"}
    )
    report = trace_report(records, traced.vote)
    assert not report.ok
    [hop] = [h for h in report.hops if h.kind == "request" and h.receiver == "globex"]
    assert hop.verdict == "failed" and hop.into is not None and hop.into["kind"] == "refusal"
    assert any(f.what == "refused by globex: bad_signature" for f in report.findings)
