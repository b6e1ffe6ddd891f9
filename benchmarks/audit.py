"""What does the tamper-evident audit log (consortium/trust/audit) cost? In one run:

  1. logging one message: SqliteAuditLog.sent(Hop) per call, on a file in a temp dir,
     with durable_against "crash" (WAL, synchronous=OFF: a committed transaction survives
     a process crash) and "power" (synchronous=FULL: an fsync per entry); baseline: the
     same Hop construction without logging; for scale,
     Signer.sign_request of a realistic ~500-character request (target: < 1 ms/message);
  2. a signed round trip through the exchange (PeerClient.answer_of, i.e. `ask` without
     the canary mixer, and PeerClient.scores_of) between two in-process echo nodes on
     loopback, in a federation with the default [audit] settings, one with
     enabled = false and one with receipts = true; the federations run side by side and
     the calls rotate among them, so drift on a shared machine hits all alike (target:
     audit on within 10% of audit off);
  3. at each log size (default 10k and 100k entries): signing a checkpoint, a witness's
     judgement of a new checkpoint with its consistency proof (witness.judge: verify and
     cosign), and a log receipt (SqliteAuditLog.receipt) of a recently received request;
  4. `consortium audit verify` (trust.audit.verify.verify_log) of those logs, built once
     with realistic entries (hops both ways with real JWS, refusals, routing records),
     checkpoint_every=256 and two witnesses' cosignatures of every checkpoint; the build
     time is reported too;
  5. sizes: inclusion and consistency proofs (hashes, raw bytes, base64 JSON bytes), a
     checkpoint note, a cosignature line, a receipt's JSON;
  6. `consortium audit trace` at each size: two organizations' directories (acme and
     globex of one federation: node.toml, roster, keys) whose logs hold that many
     entries each, of tasks asked both ways (a routing record, a request out and in,
     three events and an answer back: 11 entries with real JWS under the sender's key),
     each log's checkpoints cosigned by the other, and each organization's
     DATA_DIR/traces.jsonl of the spans the node exports (the asker's server and
     invoke_agent spans, the answerer's a2a.receive and chat spans, written by the
     OTLP JSON file exporter); timed: read_orgs, find_traces by task id and trace_report
     of a task in the middle (its report must be ok: every hop both sides, every span
     its entry). These logs are built apart from those of 3-4 (whose hops have no
     counterpart in another log); the build time is reported.

Prints one JSON object. Latencies in microseconds (us) or milliseconds (ms) as named.

    .venv/bin/python benchmarks/audit.py [--hops 2000] [--round-trips 300] \\
        [--sizes 10000,100000] [--samples 200]
"""

from __future__ import annotations

import os

# As in a node process (consortium/__init__.py): before a2a is imported.
os.environ.setdefault("OTEL_INSTRUMENTATION_A2A_SDK_ENABLED", "false")

import argparse
import asyncio
import json
import logging
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
from jwcrypto import jwk
from opentelemetry.exporter.otlp.json.file import FileSpanExporter
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import func, select

from consortium.federation.admin import add_member, create_federation, member_from_card
from consortium.federation.roster import Member, MemberKey, Roster
from consortium.llm.backends import backend_factory
from consortium.node.app import Node
from consortium.node.audit import RosterHistory
from consortium.node.audit_records import read_orgs
from consortium.node.audit_trace import find_traces, trace_report
from consortium.node.client import text_message
from consortium.node.config import load_config, parse_config
from consortium.node.setup import init_node
from consortium.node.telemetry import TRACER_NAME, context_from, make_provider, traceparent
from consortium.protocols.multiple_choice import Question
from consortium.protocols.request_options import METADATA_KEY
from consortium.trust.admission import hop_of
from consortium.trust.audit import Hop, log_origin
from consortium.trust.audit.log import CHECKPOINTS, MAX_RECENT_REQUESTS, SqliteAuditLog
from consortium.trust.audit.notes import Checkpoint, parse_note
from consortium.trust.audit.verify import verify_log
from consortium.trust.audit.witness import Seen, encode_proof, judge
from consortium.trust.jws import signing_key_of, verify_key_of
from consortium.trust.keys import generate_key, key_id, load_private_key
from consortium.trust.signing import Signer, SigningIdentity

FEDERATION = "bench-audit"
ORG, PEERS = "acme", ("globex", "initech")
ORIGIN = log_origin(FEDERATION, ORG)
TEXT = ("The quick brown fox jumps over the lazy dog. " * 12)[:500]
OPTIONS = {"max_tokens": 64, "temperature": 0.0}
QUESTION = Question(
    stem="Which gas do plants take in from the air to make food?",
    choices=("oxygen", "carbon dioxide", "nitrogen", "helium"),
)


# -- statistics ------------------------------------------------------------------------


def pct(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, max(int(len(sorted_values) * q) - 1, 0))]


def stats_us(seconds: list[float]) -> dict[str, float]:
    s = sorted(x * 1e6 for x in seconds)
    return {
        "n": len(s),
        "p50_us": round(statistics.median(s), 1),
        "p99_us": round(pct(s, 0.99), 1),
        "mean_us": round(statistics.fmean(s), 1),
    }


def stats_ms(seconds: list[float]) -> dict[str, float]:
    s = sorted(x * 1e3 for x in seconds)
    return {
        "n": len(s),
        "p50_ms": round(statistics.median(s), 3),
        "p90_ms": round(pct(s, 0.90), 3),
        "mean_ms": round(statistics.fmean(s), 3),
    }


def timed(call: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        call()
        out.append(time.perf_counter() - t)
    return out


# -- realistic entries -----------------------------------------------------------------


class Hops:
    """Hops as the signer and the verifier make them: real signed requests, answers and
    events' claims, digests and detached JWS; a fresh message id per hop."""

    def __init__(self, signer: Signer, count: int = 32) -> None:
        self.templates: list[Hop] = []
        for i in range(count):
            message = text_message(f"{TEXT} #{i}", {METADATA_KEY: dict(OPTIONS)})
            signed, digest = signer.sign_request(message, PEERS[i % 2], traceparent="")
            hop = hop_of("request", signed, digest)
            if i % 3 == 1:  # an answer or an event bound to a request
                hop = replace(hop, kind="answer" if i % 2 else "event", request_digest=digest)
            self.templates.append(replace(hop, task_id=str(uuid.uuid4())))
        self.i = 0

    def next(self) -> Hop:
        """The Hop construction both the baseline and the logged loop pay."""
        self.i += 1
        t = self.templates[self.i % len(self.templates)]
        return Hop(
            kind=t.kind,
            peer=t.peer,
            message_id=str(uuid.uuid4()),
            kid=t.kid,
            digest=t.digest,
            jws=t.jws,
            request_digest=t.request_digest,
            task_id=t.task_id,
        )


def realistic_append(log: SqliteAuditLog, hops: Hops, i: int) -> str:
    """One entry of a node's mix: hops out and in, refusals, routing and trust records;
    returns the message id of a received request ("" otherwise)."""
    hop = hops.next()
    r = i % 20
    if r == 7:
        log.refused(
            sender="mallory", message_id=str(uuid.uuid4()), reason="non_member", what="message"
        )
    elif r == 13:
        log.record("route", task_id=hop.task_id, detail={"route": "peer", "peer": hop.peer})
    elif r == 17:
        log.record("trust", peer=hop.peer, detail={"score": 0.93, "state": "healthy"})
    elif r % 2:
        log.sent(hop)
    else:
        incoming = replace(hop, kind="request", request_digest="")
        log.received(incoming)
        return incoming.message_id
    return ""


# -- 1. logging one message --------------------------------------------------------------


def per_message(signer: Signer, hops: Hops, n: int, tmp: Path, rounds: int = 10) -> dict[str, Any]:
    logs = {
        d: SqliteAuditLog(
            tmp / d / "audit.sqlite3",
            federation_id=FEDERATION,
            org_id=ORG,
            key=lambda: signer.identity.key,
            durable_against=d,  # type: ignore[arg-type]
        )
        for d in ("crash", "power")
    }
    message = text_message(TEXT, {METADATA_KEY: dict(OPTIONS)})
    samples: dict[str, list[float]] = {"hop_only": [], "crash": [], "power": [], "sign": []}
    per_round = max(n // rounds, 1)
    # Warm: first pages, first statements.
    for log in logs.values():
        for _ in range(20):
            log.sent(hops.next())
    for _ in range(rounds):  # interleaved blocks: drift hits every figure alike
        samples["hop_only"] += timed(hops.next, per_round)
        for d, log in logs.items():
            samples[d] += timed(lambda log=log: log.sent(hops.next()), per_round)  # type: ignore[misc]
        samples["sign"] += timed(lambda: signer.sign_request(message, PEERS[0]), per_round)
    for log in logs.values():
        log.close()
    s = {k: stats_us(v) for k, v in samples.items()}
    out: dict[str, Any] = {
        "baseline_hop_construction": s["hop_only"],
        "sign_request_500_chars": s["sign"],
    }
    for d in ("crash", "power"):
        cost_mean = s[d]["mean_us"] - s["hop_only"]["mean_us"]
        out[f"sent_{d}"] = {
            **s[d],
            "logging_cost_mean_us": round(cost_mean, 1),
            "ratio_mean_over_sign_request": round(cost_mean / s["sign"]["mean_us"], 3),
            "ratio_p50_over_sign_request": round(s[d]["p50_us"] / s["sign"]["p50_us"], 3),
            "meets_1ms_target_mean": cost_mean < 1000,
            "meets_1ms_target_p99": s[d]["p99_us"] < 1000,
        }
    out["note"] = (
        "sent_* time Hop construction + SqliteAuditLog.sent (one committed transaction; "
        "a checkpoint signed every 256 entries is inside the p99/mean); logging_cost = "
        "mean minus the baseline's mean"
    )
    return out


# -- 2. round trips through the exchange -------------------------------------------------


class Fed:
    """Two in-process echo nodes (acme, globex) of one federation on loopback."""

    def __init__(self, tmp: Path, audit: dict[str, Any], stream_interval_s: float | None) -> None:
        self.tmp, self.audit, self.stream_interval_s = tmp, audit, stream_interval_s
        self.events: list[int] = []
        paths = create_federation(f"Bench Audit {tmp.name}", tmp / "fed")
        self.roster, self.admin_key, self.admin_pub = (
            paths.roster,
            paths.admin_private,
            paths.admin_public,
        )
        self.nodes: dict[str, Node] = {}

    def config(self, org: str) -> Any:
        d = self.tmp / org
        init_node(org, d, grpc_port=0, http_port=0)
        data: dict[str, Any] = {
            "node": {"org_id": org},
            "server": {
                "grpc_port": 0,
                "http_port": 0,
                "shutdown_grace_s": 1.0,
            },
            "model": {"backend": "echo", "name": f"echo-{org}"},
            "federation": {"roster": str(self.roster), "admin_key": str(self.admin_pub)},
            "audit": self.audit,
        }
        if self.stream_interval_s is not None:
            data["server"]["stream_interval_s"] = self.stream_interval_s
        return parse_config(data, path=d / "node.toml")

    async def start(self) -> None:
        for org in (ORG, PEERS[0]):
            cfg = self.config(org)
            node = Node(cfg, backend_factory(cfg.model, cfg.base_dir))
            await node.start()
            self.nodes[org] = node
        async with httpx.AsyncClient() as http:
            for node in self.nodes.values():
                assert node.endpoints is not None
                url = node.endpoints.http_url + "/.well-known/agent-card.json"
                card = (await http.get(url)).json()
                add_member(self.roster, self.admin_key, member_from_card(card, url))
        deadline = time.monotonic() + 30
        while not all(
            len(n.federation.roster.current().members) == 2  # type: ignore[union-attr]
            for n in self.nodes.values()
        ):
            if time.monotonic() > deadline:
                raise TimeoutError("the nodes did not pick up the roster")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        for node in self.nodes.values():
            await node.stop()

    @property
    def peers(self) -> Any:
        return self.nodes[ORG].federation.peers  # type: ignore[union-attr]

    def entries(self) -> int:
        """Entries in both nodes' audit logs (0 with auditing off)."""
        total = 0
        for n in self.nodes.values():
            log = n.federation.audit_log  # type: ignore[union-attr]
            total += log.size if log is not None else 0
        return total

    async def ask(self) -> float:
        started = time.perf_counter()
        answer = await self.peers.answer_of(PEERS[0], TEXT, dict(OPTIONS))
        elapsed = time.perf_counter() - started
        if answer.state != "completed" or not answer.text:
            raise RuntimeError(f"ask: {answer.state}")
        self.events.append(answer.verified_events)
        return elapsed

    async def score(self) -> float:
        started = time.perf_counter()
        scores = await self.peers.scores_of(PEERS[0], QUESTION)
        elapsed = time.perf_counter() - started
        if len(scores.scores.logprobs) != len(QUESTION.choices):
            raise RuntimeError("score: no scores")
        return elapsed


async def round_trips(
    n: int, warmup: int, stream_interval_s: float | None, tmp: Path
) -> dict[str, Any]:
    feds = {
        "audit_on": Fed(tmp / "on", {}, stream_interval_s),  # the defaults
        "audit_off": Fed(tmp / "off", {"enabled": False}, stream_interval_s),
        # What log receipts in replies add (off by default).
        "audit_on_receipts": Fed(tmp / "receipts", {"receipts": True}, stream_interval_s),
    }
    out: dict[str, Any] = {}
    async with AsyncExitStack() as stack:
        for fed in feds.values():
            await fed.start()
            stack.push_async_callback(fed.stop)
        for call in ("ask", "score"):
            samples: dict[str, list[float]] = {k: [] for k in feds}
            before = feds["audit_on"].entries()
            for i in range(warmup + n):
                order = list(feds)[i % 3 :] + list(feds)[: i % 3]  # rotate who goes first
                for name in order:
                    elapsed = await getattr(feds[name], call)()
                    if i >= warmup:
                        samples[name].append(elapsed)
            entries = (feds["audit_on"].entries() - before) / (warmup + n)
            on, off = stats_ms(samples["audit_on"]), stats_ms(samples["audit_off"])
            receipts = stats_ms(samples["audit_on_receipts"])
            out[call] = {
                "audit_on": on,
                "audit_off": off,
                "audit_on_receipts": receipts,
                "ratio_p50_on_receipts_over_off": round(receipts["p50_ms"] / off["p50_ms"], 3),
                "ratio_p50_on_over_off": round(on["p50_ms"] / off["p50_ms"], 3),
                "ratio_mean_on_over_off": round(on["mean_ms"] / off["mean_ms"], 3),
                "audit_entries_per_round_trip_both_nodes": round(entries, 2),
                "meets_10pct_target_p50": on["p50_ms"] / off["p50_ms"] <= 1.10,
            }
            if call == "ask":
                events = feds["audit_on"].events
                out[call]["signed_events_per_answer"] = round(statistics.fmean(events), 2)
    out["stream_interval_s"] = (
        "node default (0.05)" if stream_interval_s is None else stream_interval_s
    )
    out["what"] = (
        "ask: PeerClient.answer_of (acme -> globex, streamed task: signed request, "
        "signed status and artifact events and final answer, each verified and logged on "
        "both sides); score: PeerClient.scores_of (message-only exchange). Three "
        "federations of two echo nodes in one process, calls rotated among them: default "
        "[audit] settings (checkpoints, witnessing), enabled = false, and receipts = true "
        "(the reply carries a log receipt, checked into the answer's entry)"
    )
    return out


# -- 3-5. logs of 10k and 100k entries ---------------------------------------------------


class Witness:
    def __init__(self, org: str) -> None:
        self.org = org
        self.key = generate_key()
        self.name = log_origin(FEDERATION, org)
        self.seen: Seen | None = None


def member_of(org: str, key: jwk.JWK) -> Member:
    return Member(org_id=org, keys=[MemberKey(kid=key_id(key), x=str(key.get("x")))])


def cosign_all(log: SqliteAuditLog, witnesses: list[Witness], key: jwk.JWK) -> list[float]:
    """Every checkpoint of the log judged and cosigned by each witness in order, as the
    witnessing loop would (proof from the last size each witness cosigned); judge times."""
    keys = [verify_key_of(key)]
    times = []
    with log._db.connect() as conn:
        query = select(CHECKPOINTS.c.size, CHECKPOINTS.c.note).order_by(CHECKPOINTS.c.size)
        notes = [(int(size), str(note)) for size, note in conn.execute(query)]
    for size, note in notes:
        for w in witnesses:
            old = w.seen.size if w.seen is not None else 0
            proof = log.consistency_proof(old, size) if old else []
            t = time.perf_counter()
            j = judge(
                origin=log.origin,
                note=note,
                old_size=old,
                proof=proof,
                keys=keys,
                seen=w.seen,
                witness_name=w.name,
                witness_key=signing_key_of(w.key),
                now=int(time.time()),
            )
            times.append(time.perf_counter() - t)
            if not j.cosigned or j.checkpoint is None or j.cosignature is None:
                raise RuntimeError(f"witness refused checkpoint {size}: {j.verdict} {j.detail}")
            w.seen = Seen(j.checkpoint.size, j.checkpoint.root)
            log.add_cosignature(size, w.org, j.cosignature)
    return times


def at_size(size: int, signer: Signer, hops: Hops, samples: int, tmp: Path) -> dict[str, Any]:
    key = signer.identity.key
    witnesses = [Witness(p) for p in PEERS]
    history = RosterHistory(
        [
            Roster(
                federation_id=FEDERATION,
                name="bench",
                members=[member_of(ORG, key), *(member_of(w.org, w.key) for w in witnesses)],
            )
        ]
    )
    path = tmp / f"audit-{size}.sqlite3"
    log = SqliteAuditLog(
        path, federation_id=FEDERATION, org_id=ORG, key=lambda: key, checkpoint_every=256
    )
    received: list[str] = []
    t = time.perf_counter()
    for i in range(size):
        mid = realistic_append(log, hops, i)
        if mid:
            received.append(mid)
    build_entries_s = time.perf_counter() - t
    t = time.perf_counter()
    judged = cosign_all(log, witnesses, key)
    build_cosign_s = time.perf_counter() - t
    with log._db.connect() as conn:
        checkpoints = conn.execute(select(func.count()).select_from(CHECKPOINTS)).scalar()
    result: dict[str, Any] = {
        "entries": size,
        "build": {
            "entries_s": round(build_entries_s, 2),
            "entries_per_s": round(size / build_entries_s, 1),
            "checkpoints": checkpoints,
            "cosign_every_checkpoint_by_2_witnesses_s": round(build_cosign_s, 2),
            "judge_during_build": stats_us(judged),
        },
    }

    # 3. checkpoint: one new entry (untimed), then a checkpoint of the log as it is.
    sign_times = []
    for i in range(samples):
        realistic_append(log, hops, size + i)
        t = time.perf_counter()
        log.checkpoint()
        sign_times.append(time.perf_counter() - t)
    result["checkpoint_sign"] = stats_us(sign_times)

    # A witness's judgement of the newest checkpoint, from the previous one it cosigned
    # (the last full checkpoint_every interval): verify the log's signature, check
    # the consistency proof, cosign. judge is pure: the same inputs each time.
    latest = log.latest()
    assert latest is not None
    w = witnesses[0]
    assert w.seen is not None
    proof = log.consistency_proof(w.seen.size, latest.checkpoint.size)
    proof_times = timed(lambda: log.consistency_proof(w.seen.size, latest.checkpoint.size), samples)  # type: ignore[union-attr]

    def one_judgement() -> Any:
        return judge(
            origin=log.origin,
            note=latest.note,
            old_size=w.seen.size,  # type: ignore[union-attr]
            proof=proof,
            keys=[verify_key_of(key)],
            seen=w.seen,
            witness_name=w.name,
            witness_key=signing_key_of(w.key),
            now=int(time.time()),
        )

    j = one_judgement()
    assert j.cosigned and j.cosignature is not None, j.verdict
    result["cosign_judge"] = {
        **stats_us(timed(one_judgement, samples)),
        "from_size": w.seen.size,
        "to_size": latest.checkpoint.size,
    }
    result["consistency_proof_build"] = stats_us(proof_times)

    # Receipts of requests this node received, among those a receipt can still find
    # (the log keeps the positions of the last MAX_RECENT_REQUESTS received requests:
    # receipts go out with replies, soon after the request).
    rng = random.Random(size)
    recent = received[-MAX_RECENT_REQUESTS:]
    picks = [rng.choice(recent) for _ in range(samples)]
    it = iter(picks)
    result["receipt"] = stats_us(timed(lambda: log.receipt(next(it)), samples))
    one_receipt = log.receipt(picks[0])
    assert one_receipt is not None

    # 5. sizes.
    n = log.size
    inclusion = {
        where: len(log.inclusion_proof(index, n))
        for where, index in (("first", 0), ("middle", n // 2), ("last", n - 1))
    }
    inclusion_max = max(len(log.inclusion_proof(rng.randrange(n), n)) for _ in range(256))
    consistency = {
        "from_previous_checkpoint": proof,
        "from_half": log.consistency_proof(n // 2, n),
        "from_256": log.consistency_proof(256, n),
    }
    body, sigs = parse_note(latest.note)
    cosigned_note = log.cosigned_note(w.seen.size)  # the last build checkpoint: 2 cosigned
    result["sizes"] = {
        "inclusion_proof": {
            **{f"{k}_hashes": v for k, v in inclusion.items()},
            "max_hashes_of_256_random": inclusion_max,
            "max_bytes_raw": 32 * inclusion_max,
            "max_bytes_base64_json": len(
                json.dumps(encode_proof([b"\0" * 32] * inclusion_max), separators=(",", ":"))
            ),
        },
        "consistency_proof": {
            k: {
                "hashes": len(v),
                "bytes_raw": 32 * len(v),
                "bytes_base64_json": len(json.dumps(encode_proof(v), separators=(",", ":"))),
            }
            for k, v in consistency.items()
        },
        "checkpoint_note_bytes": len(latest.note.encode()),
        "checkpoint_body_bytes": len(body.encode()),
        "signature_line_bytes": len(sigs[0].line().encode()),
        "cosignature_line_bytes": len(j.cosignature.line().encode()),
        "note_with_2_cosignatures_bytes": len(cosigned_note.encode()),
        "receipt_json_bytes": len(json.dumps(one_receipt, separators=(",", ":")).encode()),
        "receipt_entry_bytes": len(str(one_receipt["entry"]).encode()),
    }
    log.close()
    Checkpoint.parse(body)  # the note is a checkpoint
    result["build"]["file_bytes_after_close"] = path.stat().st_size
    result["build"]["bytes_per_entry"] = round(path.stat().st_size / log.size, 1)

    # 4. audit verify: the auditor's full check (copies the file first, as it does).
    t = time.perf_counter()
    report = verify_log(path, history, origin=ORIGIN, org=ORG, witnessed_by=2)
    verify_s = time.perf_counter() - t
    if not report.ok:
        raise RuntimeError(f"verify_log failed: {[str(f) for f in report.findings[:3]]}")
    result["verify_log"] = {
        "s": round(verify_s, 3),
        "entries_per_s": round(report.entries / verify_s, 1),
        "checkpoints": report.checkpoints,
        "witnessed_size": report.witnessed_size,
        "ok": report.ok,
    }
    return result


# -- 6. audit trace over two organizations -----------------------------------------------


class TraceOrg:
    """One organization's directory as `consortium audit trace --org DIR` reads it
    (node.toml from `consortium init`, with its [federation] and [audit] witnessed_by =
    1), its audit log, its tracer (the node's resource: service.name = org id) whose
    finished spans are written to DATA_DIR/traces.jsonl at the end, and signed templates
    of what it sends (real JWS under its key: the join checks the key id each names)."""

    def __init__(self, org: str, root: Path) -> None:
        self.org, self.dir = org, root / org
        init_node(org, self.dir, grpc_port=0, http_port=0)
        self.key = load_private_key(self.dir / "keys" / "private.jwk")
        self.spans = InMemorySpanExporter()
        self.provider: Any = None
        self.tracer: Any = None
        self.log: SqliteAuditLog | None = None
        self.templates: list[Hop] = []

    def open(self, federation: str, peer: str) -> None:
        self.provider = make_provider(self.org, federation, None)  # the node's resource
        self.provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.tracer = self.provider.get_tracer(TRACER_NAME)
        self.log = SqliteAuditLog(
            self.dir / "data" / "audit.sqlite3",
            federation_id=federation,
            org_id=self.org,
            key=lambda: self.key,
            checkpoint_every=256,
        )
        signer = Signer(SigningIdentity(self.key, self.org, federation))
        for i in range(16):
            message = text_message(f"{TEXT} #{i}", {METADATA_KEY: dict(OPTIONS)})
            signed, digest = signer.sign_request(message, peer, traceparent="")
            self.templates.append(hop_of("request", signed, digest))

    def hop(self, i: int, **fields: Any) -> Hop:
        return replace(
            self.templates[i % len(self.templates)], message_id=str(uuid.uuid4()), **fields
        )

    def write_spans(self) -> int:
        """The finished spans as the node's file exporter writes them (a line per export
        of at most 512 spans, the BatchSpanProcessor's batch)."""
        spans = self.spans.get_finished_spans()
        exporter = FileSpanExporter(self.dir / "data" / "traces.jsonl")
        for start in range(0, len(spans), 512):
            exporter.export(spans[start : start + 512])
        exporter.shutdown()
        return len(spans)


def one_task(asker: TraceOrg, answerer: TraceOrg, n: int, events: int) -> tuple[str, str]:
    """A task asked of `answerer` by `asker` as the nodes record it: at the asker a
    server span of the user's request (a2a.task.id) with its routing record and an
    invoke_agent span (consortium.message.id) holding the request's "out" entry and the
    "in" entries of the events and the answer; at the answerer an a2a.receive span, a
    child of the request's traceparent (consortium.sender, consortium.message.id), with
    the request's "in" entry, a chat span, and the "out" entries of the events and the
    answer. Returns the trace id and the task id."""
    assert asker.log is not None and answerer.log is not None
    task_id = str(uuid.uuid4())
    with asker.tracer.start_as_current_span(
        "a2a.receive SendStreamingMessage",
        kind=SpanKind.SERVER,
        attributes={
            "consortium.message.id": str(uuid.uuid4()),  # the user's message
            "rpc.method": "SendStreamingMessage",
            "a2a.task.id": task_id,
        },
    ) as root:
        trace_id = f"{root.get_span_context().trace_id:032x}"
        asker.log.record(
            "route",
            task_id=task_id,
            detail={"route": "escalate", "peer": answerer.org, "router": "always"},
        )
        with asker.tracer.start_as_current_span(
            f"invoke_agent {answerer.org}",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": answerer.org,
                "consortium.recipient": answerer.org,
                "consortium.mode": "ask",
            },
        ) as call:
            request = asker.hop(n, task_id=task_id)
            call.set_attribute("consortium.message.id", request.message_id)
            asker.log.sent(request)
            parent = context_from(traceparent())
            replies = []
            with answerer.tracer.start_as_current_span(
                "a2a.receive SendStreamingMessage",
                context=parent,
                kind=SpanKind.SERVER,
                attributes={
                    "consortium.message.id": request.message_id,
                    "rpc.method": "SendStreamingMessage",
                    "consortium.sender": asker.org,
                    "consortium.recipient": answerer.org,
                    "a2a.task.id": task_id,
                },
            ):
                answerer.log.received(replace(request, peer=asker.org))
                with answerer.tracer.start_as_current_span(
                    f"chat echo-{answerer.org}",
                    attributes={
                        "gen_ai.operation.name": "chat",
                        "gen_ai.request.model": f"echo-{answerer.org}",
                        "gen_ai.usage.input_tokens": 120,
                        "gen_ai.usage.output_tokens": 64,
                    },
                ):
                    pass
                for k in range(events + 1):
                    kind = "event" if k < events else "answer"
                    reply = answerer.hop(
                        n + k, kind=kind, request_digest=request.digest, task_id=task_id
                    )
                    answerer.log.sent(reply)
                    replies.append(reply)
            for reply in replies:  # verified and logged by the asker as they arrive
                asker.log.received(replace(reply, peer=answerer.org))
    return trace_id, task_id


def build_pair(
    size: int, tmp: Path, events: int = 3
) -> tuple[list[TraceOrg], list[tuple[str, str]]]:
    """acme and globex, one federation, each log of exactly `size` entries: tasks asked
    both ways (acme of globex, then globex of acme) until neither log has room for one
    more, then trust records (no trace) up to `size`; every checkpoint of each log
    cosigned by the other, which remembers the last one it cosigned (witnessing)."""
    tmp.mkdir(parents=True, exist_ok=True)
    orgs = [TraceOrg("acme", tmp), TraceOrg("globex", tmp)]
    fed = create_federation(f"Bench Trace {size}", tmp / "fed")
    roster = None
    for o in orgs:
        roster = add_member(fed.roster, fed.admin_private, member_of(o.org, o.key))
    assert roster is not None
    federation = roster.federation_id
    for o, peer in zip(orgs, reversed(orgs), strict=True):
        with (o.dir / "node.toml").open("a") as f:
            f.write(
                f'\n[federation]\nroster = "{fed.roster}"\nadmin_key = "{fed.admin_public}"\n'
                "\n[audit]\nwitnessed_by = 1\n"
            )
        o.open(federation, peer.org)
    per_task = events + 3  # the asker's entries: route, request, events, answer
    traces: list[tuple[str, str]] = []
    logs = [o.log for o in orgs]
    assert all(log is not None for log in logs)
    n = 0
    while all(log.size + per_task <= size for log in logs):  # type: ignore[union-attr]
        asker, answerer = orgs[n % 2], orgs[1 - n % 2]
        traces.append(one_task(asker, answerer, n, events))
        n += 1
    for o in orgs:
        assert o.log is not None
        while o.log.size < size:
            o.log.record("trust", peer="globex", detail={"score": 0.93, "state": "healthy"})
    for o, w in zip(orgs, reversed(orgs), strict=True):  # w cosigns o's checkpoints
        assert o.log is not None and w.log is not None
        witness = Witness(w.org)
        witness.key, witness.name = w.key, log_origin(federation, w.org)
        cosign_all(o.log, [witness], o.key)
        latest = o.log.latest()
        assert latest is not None
        w.log.remember_cosigned(latest.checkpoint, latest.note)
    for o in orgs:
        assert o.log is not None
        o.log.close()
        o.write_spans()
        o.provider.shutdown()
    return orgs, traces


def trace_at_size(size: int, tmp: Path, samples: int) -> dict[str, Any]:
    t = time.perf_counter()
    orgs, traces = build_pair(size, tmp)
    build_s = time.perf_counter() - t
    configs = [load_config(o.dir / "node.toml") for o in orgs]
    trace_id, task_id = traces[len(traces) // 2]
    spans_lines = 0
    for o in orgs:
        spans_lines += len((o.dir / "data" / "traces.jsonl").read_text().splitlines())

    repeats = max(1, min(samples, 5))  # each run reads (or joins) every entry
    read_times, records = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        records = read_orgs(configs)
        read_times.append(time.perf_counter() - t)
    assert records is not None
    entries = sum(r.log.entries for r in records)
    spans = sum(len(r.spans or []) for r in records)
    report = trace_report(records, trace_id, task_id)
    report_times = timed(lambda: trace_report(records, trace_id, task_id), repeats)
    found = find_traces(records, task_id)
    find_times = timed(lambda: find_traces(records, task_id), repeats)
    errors = [str(f) for f in report.findings if f.severity == "error"]
    read_s = statistics.median(read_times)
    report_s = statistics.median(report_times)
    find_s = statistics.median(find_times)
    return {
        "entries_per_org": size,
        "entries_both_logs": entries,
        "spans_both_orgs": spans,
        "traces_jsonl_lines": spans_lines,
        "tasks": len(traces),
        "build_s": round(build_s, 2),
        "read_orgs": {
            "n": len(read_times),
            "median_s": round(read_s, 3),
            "entries_per_s": round(entries / read_s, 1),
            "logs_ok": all(r.log.ok for r in records),
            "witnessed_sizes": {r.org: r.log.witnessed_size for r in records},
            "problems": sum(len(r.problems) for r in records),
        },
        "trace_report": {
            "n": len(report_times),
            "median_s": round(report_s, 4),
            "entries_per_s": round(entries / report_s, 1),
            "hops": len(report.hops),
            "hops_both_sides": sum(
                1 for h in report.hops if h.out is not None and h.into is not None
            ),
            "verdicts": dict(sorted(Counter(h.verdict for h in report.hops).items())),
            "spans_of_trace": report.spans,
            "ok": report.ok,
            "errors": len(errors),
            "warnings": len(report.findings) - len(errors),
            "first_errors": errors[:3],
        },
        "find_traces_by_task": {
            "n": len(find_times),
            "median_s": round(find_s, 4),
            "entries_per_s": round(entries / find_s, 1),
            "found_the_trace_first": bool(found) and found[0] == trace_id,
        },
        "audit_trace_total_s": round(read_s + find_s + report_s, 3),
        "what": (
            "`consortium audit trace --task` minus printing: read_orgs (roster history, "
            "each log verified with the other's cosignatures, traces.jsonl parsed, no task "
            "store), find_traces by the task id and trace_report of the task in the middle "
            "of the logs (its hops joined to both logs' entries and both organizations' "
            "spans); medians; entries_per_s counts the entries of both logs"
        ),
    }


# -- main --------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hops", type=int, default=2000, help="sent() calls per durability")
    parser.add_argument("--round-trips", type=int, default=300, help="per call and mode")
    parser.add_argument("--warmup", type=int, default=20, help="round trips not counted")
    parser.add_argument("--sizes", default="10000,100000", help="log sizes, comma-separated")
    parser.add_argument("--samples", type=int, default=200, help="per latency at each size")
    parser.add_argument(
        "--stream-interval",
        type=float,
        default=None,
        help="server.stream_interval_s of the nodes (default: the node's; 0: an event per token)",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if any(s < 600 for s in sizes):
        parser.error("--sizes: each size must be at least 600 (two checkpoints and more)")
    logging.basicConfig(level=logging.WARNING)

    signer = Signer(SigningIdentity(generate_key(), ORG, FEDERATION))
    hops = Hops(signer)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "audit",
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "temp_dir": tempfile.gettempdir(),  # where the logs are written (and fsynced)
        },
        "settings": {
            "hops": args.hops,
            "round_trips": args.round_trips,
            "warmup": args.warmup,
            "sizes": sizes,
            "samples": args.samples,
            "stream_interval_s": args.stream_interval,
        },
    }
    work = tempfile.TemporaryDirectory(prefix="consortium-auditbench-")
    tmp = Path(work.name)
    result["per_message"] = per_message(signer, hops, args.hops, tmp / "per-message")
    result["round_trip"] = asyncio.run(
        round_trips(args.round_trips, args.warmup, args.stream_interval, tmp / "federations")
    )
    (tmp / "logs").mkdir()
    result["logs"] = {
        str(size): at_size(size, signer, hops, args.samples, tmp / "logs") for size in sizes
    }
    (tmp / "trace").mkdir()
    result["trace"] = {
        str(size): trace_at_size(size, tmp / "trace" / str(size), args.samples) for size in sizes
    }
    work.cleanup()
    crash = result["per_message"]["sent_crash"]
    result["targets"] = {
        "per_message_under_1ms_crash_mean": crash["meets_1ms_target_mean"],
        "per_message_under_1ms_power_mean": result["per_message"]["sent_power"][
            "meets_1ms_target_mean"
        ],
        "round_trip_ask_within_10pct": result["round_trip"]["ask"]["meets_10pct_target_p50"],
        "round_trip_score_within_10pct": result["round_trip"]["score"]["meets_10pct_target_p50"],
    }
    result["total_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
