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
     cosign), and a log receipt (SqliteAuditLog.receipt) of a received request;
  4. `consortium audit verify` (trust.audit.verify.verify_log) of those logs, built once
     with realistic entries (hops both ways with real JWS, refusals, routing records),
     checkpoint_every=256 and two witnesses' cosignatures of every checkpoint; the build
     time is reported too;
  5. sizes: inclusion and consistency proofs (hashes, raw bytes, base64 JSON bytes), a
     checkpoint note, a cosignature line, a receipt's JSON.

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
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
from jwcrypto import jwk

from consortium.federation.admin import add_member, create_federation, member_from_card
from consortium.federation.roster import Member, MemberKey, Roster
from consortium.llm.backends import backend_factory
from consortium.node.app import Node
from consortium.node.audit import RosterHistory
from consortium.node.client import text_message
from consortium.node.config import parse_config
from consortium.node.setup import init_node
from consortium.protocols.multiple_choice import Question
from consortium.protocols.request_options import METADATA_KEY
from consortium.trust.admission import hop_of
from consortium.trust.audit import Hop, log_origin
from consortium.trust.audit.log import SqliteAuditLog
from consortium.trust.audit.notes import Checkpoint, parse_note
from consortium.trust.audit.verify import verify_log
from consortium.trust.audit.witness import Seen, encode_proof, judge
from consortium.trust.jws import signing_key_of, verify_key_of
from consortium.trust.keys import generate_key, key_id
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
    notes = log._db.execute("SELECT size, note FROM checkpoints ORDER BY size").fetchall()
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
    checkpoints = log._db.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0]
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

    # Receipts of requests this node received, anywhere in the log.
    rng = random.Random(size)
    picks = [rng.choice(received) for _ in range(samples)]
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
