"""An auditor's rebuild of one task's path across organizations (`consortium audit trace`):
the OpenTelemetry spans each organization exported, joined with their audit logs and
the signed copies in their task stores, and every hop checked.

Pure data in (`OrgRecords`: what was read of each organization; node/audit_records.py
reads it without writing anything), a typed `TraceReport` out. What is checked:

- each organization's log (trust.audit.verify.verify_log) with what the other given
  organizations cosigned of it (a fork, a rollback, an unwitnessed log);
- every hop (a signed request, answer, event or call proof between two organizations):
  the sender's "out" entry and the receiver's "in" entry both exist when both
  organizations were given, with the same digest, JWS and key id; the key id in the JWS
  protected header is the logged one and a key the sender held at that time by every
  roster version the auditors have; a signed copy of the message in a task store is
  verified (trust.admission.verify_authentic) and its digest and signature are the logged
  ones ("signature verified"), otherwise the hop says "digests agree";
- spans against entries: every `invoke_agent` span has its "out" request entry and every
  "out" request entry its span; every `a2a.receive` span from another member has its
  "in" request entry (or the refusal) and every "in" request entry its span;
- log receipts (an answer's entry at the asker holds the receipt the answer carried and
  the verifier's verdict): the verdict is "included", the receipt checks again, and its
  entry is the one the peer's log holds at that position.

Nothing here reads message text: hops, routes and findings hold identifiers, digests,
counts and times only.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from a2a.types import a2a_pb2
from google.protobuf.json_format import MessageToDict

from consortium.federation.roster import Roster
from consortium.node.audit import RosterHistory
from consortium.node.audit_records import OrgRecords, SignedCopy, Span
from consortium.protocols.request_options import METADATA_KEY
from consortium.trust.admission import Verified, verify_authentic
from consortium.trust.audit import log_origin
from consortium.trust.audit.inclusion import check_receipt
from consortium.trust.audit.verify import LogReport
from consortium.trust.claims import SIGNATURE_KEY, read_signed
from consortium.trust.jws import canonical
from consortium.trust.refusals import Rejected

HOP_KINDS = ("request", "answer", "event", "call")
LOCAL_KINDS = ("route", "trust", "receipt", "witness", "policy")


@dataclass(frozen=True)
class TraceFinding:
    severity: str  # "error" | "warning"
    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.where}: {self.what}"


@dataclass
class TraceHop:
    """One signed message between two organizations as both sides recorded it."""

    kind: str
    message_id: str
    sender: str
    receiver: str
    out: dict[str, Any] | None = None  # the sender's entry
    into: dict[str, Any] | None = None  # the receiver's entry (or its refusal)
    mode: str = ""  # the call's purpose (ask, score, report, cosign, ...)
    parent: str = ""  # the message id of the request this hop answers or serves
    start: float = 0.0
    end: float = 0.0
    latency_ms: float | None = None
    model: str = ""
    tokens: int | None = None
    cost: float | None = None
    answers: int = 0
    events: int = 0
    inclusion: str = ""
    verdict: str = ""  # "signature verified" | "digests agree" | "one side" | "failed"
    marks: list[str] = field(default_factory=list)  # checks that held

    @property
    def digest(self) -> str:
        side = self.out or self.into or {}
        return str(side.get("digest", ""))


@dataclass
class TraceReport:
    trace_id: str
    task_id: str
    orgs: list[str]
    hops: list[TraceHop] = field(default_factory=list)
    routes: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    findings: list[TraceFinding] = field(default_factory=list)
    logs: dict[str, LogReport] = field(default_factory=dict)
    spans: dict[str, int] = field(default_factory=dict)  # org -> spans of the trace

    @property
    def ok(self) -> bool:
        return all(log.ok for log in self.logs.values()) and not any(
            f.severity == "error" for f in self.findings
        )

    def error(self, where: str, what: str) -> None:
        self.findings.append(TraceFinding("error", where, what))

    def warn(self, where: str, what: str) -> None:
        self.findings.append(TraceFinding("warning", where, what))


# -- joining -------------------------------------------------------------------------


def find_traces(orgs: Sequence[OrgRecords], task_id: str) -> list[str]:
    """The traces whose spans or entries carry `task_id`, most often seen first."""
    seen: Counter[str] = Counter()
    for o in orgs:
        for s in o.spans or []:
            if task_id in (s.attrs.get("a2a.task.id"), s.attrs.get("consortium.task.id")):
                seen[s.trace_id] += 1
        for e in entries_of(o.log):
            if e.get("task") == task_id and e.get("trace"):
                seen[str(e["trace"])] += 1
    return [t for t, _ in seen.most_common() if t]


def _kid_of(jws: str) -> str:
    head = jws.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, binascii.Error):
        return ""
    return str(header.get("kid", "")) if isinstance(header, dict) else ""


TEXT_FIELDS = (
    *("kind", "dir", "peer", "msg", "task", "trace", "span"),
    *("kid", "digest", "jws", "req", "verdict", "what", "method"),
)


def entries_of(log: LogReport) -> list[dict[str, Any]]:
    """The log's entries with every field the join reads of the type it reads it as (an
    edited entry may hold anything: the log's own check reports that; the join must not
    fail on it)."""
    clean = []
    for e in log.bodies:
        if not isinstance(e, dict):
            continue
        c = dict(e)
        for name in TEXT_FIELDS:
            if name in c and not isinstance(c[name], str):
                c[name] = json.dumps(c[name], sort_keys=True, default=str)
        c["time"] = _number(c.get("time"))
        seq = c.get("seq")
        c["seq"] = seq if isinstance(seq, int) and not isinstance(seq, bool) else -1
        if not isinstance(c.get("detail", {}), dict):
            c["detail"] = {}
        clean.append(c)
    return clean


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    f = float(value)
    return f if 0.0 <= f < 253_402_300_799 else 0.0  # a time a datetime can hold


def _held(rosters: Sequence[Roster], org: str, kid: str, when: float) -> bool:
    at = datetime.fromtimestamp(_number(when), UTC)
    for roster in rosters:
        member = roster.member(org)
        for k in member.keys if member is not None else []:
            if k.kid == kid and k.valid_at(at):
                return True
    return False


def _as_sent(message: a2a_pb2.Message) -> Iterator[a2a_pb2.Message]:
    """The stored message, then without the ids a receiver sets when it stores a task."""
    yield message
    for fields in (("task_id",), ("context_id",), ("task_id", "context_id")):
        if not all(getattr(message, f) for f in fields):
            continue
        variant = a2a_pb2.Message()
        variant.CopyFrom(message)
        for f in fields:
            variant.ClearField(f)
        yield variant


def _short(message_id: str) -> str:
    return message_id[:8]


class _Join:
    """The state of one `trace_report` run."""

    def __init__(self, orgs: Sequence[OrgRecords], trace_id: str, task_id: str) -> None:
        self.orgs = {o.org: o for o in orgs}
        self.trace = trace_id
        self.report = TraceReport(trace_id, task_id, [o.org for o in orgs])
        self.rosters = [r for o in orgs for r in o.history.rosters]
        self.members = frozenset(m for o in orgs for m in o.history.members())
        self.spans = {o.org: [s for s in o.spans or [] if s.trace_id == trace_id] for o in orgs}
        self.hops: dict[tuple[str, str], TraceHop] = {}
        self.bodies = {o.org: entries_of(o.log) for o in orgs}
        self._by_id: dict[str, list[SignedCopy]] | None = None

    def run(self) -> TraceReport:
        r = self.report
        for o in self.orgs.values():
            r.logs[o.org] = o.log
            r.spans[o.org] = len(self.spans[o.org])
            for problem in o.problems:
                r.error(o.org, problem)
            if o.spans is None:
                r.warn(o.org, "exports no spans to a file: its spans are not checked")
        self._collect()
        if not self.hops and not any(self.spans.values()) and not r.routes:
            r.error("trace", f"no span and no log entry of trace {self.trace} in any given log")
            return r
        for hop in self.hops.values():
            self._check_hop(hop)
        self._check_spans()
        self._nest()
        r.hops = sorted(self.hops.values(), key=lambda h: (h.start, h.kind != "request"))
        if r.task_id and r.task_id not in self._task_ids():
            r.warn("trace", f"no span or entry of this trace names task {r.task_id}")
        return r

    def _task_ids(self) -> set[str]:
        ids = {str(h.out.get("task", "")) for h in self.hops.values() if h.out}
        ids |= {str(h.into.get("task", "")) for h in self.hops.values() if h.into}
        ids |= {str(s.attrs.get("a2a.task.id", "")) for ss in self.spans.values() for s in ss}
        return ids

    # -- collecting ------------------------------------------------------------------

    def _collect(self) -> None:
        ids = {
            str(s.attrs["consortium.message.id"])
            for ss in self.spans.values()
            for s in ss
            if s.attrs.get("consortium.message.id")
        }
        for o in self.orgs.values():
            ids |= {
                str(e["msg"])
                for e in self.bodies[o.org]
                if e.get("trace") == self.trace and e.get("msg")
            }
        refusals: list[tuple[str, dict[str, Any]]] = []
        for o in self.orgs.values():
            for e in self.bodies[o.org]:
                kind = e.get("kind")
                in_trace = e.get("trace") == self.trace
                if kind in HOP_KINDS and (in_trace or e.get("msg") in ids):
                    self._side(o.org, e)
                elif kind == "refusal" and e.get("msg") in ids:
                    refusals.append((o.org, e))
                elif kind == "route" and in_trace:
                    self.report.routes.append(self._route(o.org, e))
                elif kind in LOCAL_KINDS and in_trace:
                    self.report.decisions.append(self._decision(o.org, e))
        for org, e in refusals:  # the receiver's side of the message it refused
            kinds = [k for k, m in self.hops if m == e.get("msg")]
            self._side(org, e, kind=kinds[0] if kinds else "request")
        for org, spans in self.spans.items():
            for s in spans:
                if s.name == "consortium.route" and s.attrs.get("consortium.route"):
                    self.report.routes.append(
                        {
                            "org": org,
                            "source": "span",
                            "time": s.start,
                            "route": s.attrs.get("consortium.route", ""),
                            "router": s.attrs.get("consortium.router", ""),
                        }
                    )

    @staticmethod
    def _route(org: str, e: Mapping[str, Any]) -> dict[str, Any]:
        d = e.get("detail", {}) if isinstance(e.get("detail"), Mapping) else {}
        return {
            "org": org,
            "source": f"entry {e.get('seq')}",
            "time": e.get("time", 0.0),
            "peer": e.get("peer", ""),
            "router": d.get("router", ""),
            "route": d.get("route", ""),
            "reason": d.get("reason", ""),
            "score": d.get("score", ""),
        }

    @staticmethod
    def _decision(org: str, e: Mapping[str, Any]) -> dict[str, Any]:
        d = e.get("detail", {}) if isinstance(e.get("detail"), Mapping) else {}
        detail = {k: v for k, v in d.items() if k != "receipt"}
        return {
            "org": org,
            "kind": e.get("kind", ""),
            "entry": e.get("seq"),
            "time": e.get("time", 0.0),
            "peer": e.get("peer", ""),
            "detail": detail,
        }

    def _side(self, org: str, e: Mapping[str, Any], kind: str = "") -> None:
        kind, msg = kind or str(e.get("kind")), str(e.get("msg", ""))
        peer = str(e.get("peer", ""))
        if not peer or not msg or e.get("dir") not in ("in", "out"):
            self.report.error(
                f"{org} entry {e.get('seq')}",
                f"a {kind} entry without a peer, a message id or a direction",
            )
            return
        outgoing = e.get("dir") == "out"
        sender, receiver = (org, peer) if outgoing else (peer, org)
        hop = self.hops.setdefault((kind, msg), TraceHop(kind, msg, sender, receiver))
        slot = "out" if outgoing else "into"
        if getattr(hop, slot) is not None:
            self.report.error(
                f"{org} entry {e.get('seq')}", f"a second entry of {kind} {_short(msg)}"
            )
            return
        if (hop.sender, hop.receiver) != (sender, receiver):
            self.report.error(
                f"{org} entry {e.get('seq')}",
                f"{kind} {_short(msg)} is logged as {sender}->{receiver}, "
                f"the other side logged {hop.sender}->{hop.receiver}",
            )
        setattr(hop, slot, dict(e))

    # -- hops ------------------------------------------------------------------------

    def _check_hop(self, hop: TraceHop) -> None:
        r = self.report
        where = f"{hop.kind} {_short(hop.message_id)} {hop.sender}->{hop.receiver}"
        errors = len([f for f in r.findings if f.severity == "error"])
        times = [t for s in (hop.out, hop.into) if s and (t := _number(s.get("time"))) > 0]
        hop.start = hop.end = min(times, default=0.0)
        refused = hop.into is not None and hop.into.get("kind") == "refusal"
        if refused and hop.into is not None:
            r.error(where, f"refused by {hop.receiver}: {hop.into.get('verdict')}")
        both = hop.sender in self.orgs and hop.receiver in self.orgs
        if hop.out is None or hop.into is None:
            have, lack = (hop.sender, hop.receiver) if hop.out else (hop.receiver, hop.sender)
            if both:
                r.error(where, f"{have} logged it; {lack}'s log has no entry of it")
            else:
                r.warn(where, f"only {have}'s side is checked ({lack} was not given)")
        elif not refused:
            self._compare(hop, where)
        self._check_kid(hop, where)
        self._check_copy(hop, where)
        failed = len([f for f in r.findings if f.severity == "error"]) > errors
        if failed:
            hop.verdict = "failed"
        elif "signature verified" in hop.marks:
            hop.verdict = "signature verified"
        elif hop.out is not None and hop.into is not None:
            hop.verdict = "digests agree"
        else:
            hop.verdict = "one side"

    def _compare(self, hop: TraceHop, where: str) -> None:
        assert hop.out is not None and hop.into is not None
        ok = True
        for name in ("digest", "jws", "kid", "req"):
            a, b = hop.out.get(name, ""), hop.into.get(name, "")
            if a != b:
                ok = False
                self.report.error(
                    where,
                    f"the {name} differs: {hop.sender} entry {hop.out.get('seq')} has "
                    f"{str(a)[:16]!r}, {hop.receiver} entry {hop.into.get('seq')} has "
                    f"{str(b)[:16]!r}",
                )
        if ok:
            hop.marks.append("both sides logged, same digest and signature")

    def _check_kid(self, hop: TraceHop, where: str) -> None:
        for side in (hop.out, hop.into):
            if side is None or side.get("kind") == "refusal":
                continue
            jws, kid = str(side.get("jws", "")), str(side.get("kid", ""))
            header_kid = _kid_of(jws)
            if header_kid != kid:
                self.report.error(
                    where, f"the JWS header names key {header_kid!r}, the entry {kid!r}"
                )
                return
            if not _held(self.rosters, hop.sender, kid, _number(side.get("time"))):
                self.report.error(where, f"{hop.sender} held no key {kid} at that time")
                return
        hop.marks.append("key held by the sender at the time")

    def _check_copy(self, hop: TraceHop, where: str) -> None:
        logged = {str(s.get("digest")) for s in (hop.out, hop.into) if s and s.get("digest")}
        jwss = {str(s.get("jws")) for s in (hop.out, hop.into) if s and s.get("jws")}
        for copy in self._copies(hop.message_id):
            verified, reason = self._authentic(copy.message)
            if verified is None:
                self.report.error(
                    where, f"the signed copy in {copy.org}'s task store fails: {reason}"
                )
                continue
            digest = verified.digest
            if logged and logged != {digest}:
                self.report.error(
                    where,
                    f"the signed copy in {copy.org}'s task store has another digest than the log",
                )
            elif jwss and jwss != {copy.message.metadata[SIGNATURE_KEY]}:
                self.report.error(
                    where,
                    f"the signed copy in {copy.org}'s task store has another signature",
                )
            elif "signature verified" not in hop.marks:
                hop.marks.append("signature verified")
                self._provenance(hop, copy.message)

    def _authentic(self, message: a2a_pb2.Message) -> tuple[Verified | None, str]:
        """The message verified under a roster version, as stored or with the task and
        context ids the receiving node set on it when it stored the task cleared (they
        are not part of what the sender signed); or why not."""
        reason = ""
        for variant in _as_sent(message):
            for roster in reversed(self.rosters):
                try:
                    return verify_authentic(variant, roster), ""
                except Rejected as e:
                    reason = reason or f"{e.reason}: {e}"
        return None, reason

    def _copies(self, message_id: str) -> list[SignedCopy]:
        """The signed copies of a message in the given task stores (by its claimed id)."""
        if self._by_id is None:
            self._by_id = {}
            for o in self.orgs.values():
                for c in o.copies:
                    parts = None
                    with contextlib.suppress(Rejected):
                        parts = read_signed(c.message)
                    if parts is not None:
                        self._by_id.setdefault(parts.claims.message_id, []).append(c)
        return self._by_id.get(message_id, [])

    @staticmethod
    def _provenance(hop: TraceHop, message: a2a_pb2.Message) -> None:
        meta = MessageToDict(message.metadata).get(METADATA_KEY, {})
        if not isinstance(meta, dict):
            return
        if isinstance(meta.get("model"), str) and not hop.model:
            hop.model = meta["model"]
        if isinstance(meta.get("tokens"), int | float) and hop.tokens is None:
            hop.tokens = int(meta["tokens"])
        if isinstance(meta.get("cost"), int | float):
            hop.cost = float(meta["cost"])

    # -- spans -----------------------------------------------------------------------

    def _check_spans(self) -> None:
        r = self.report
        for org, spans in self.spans.items():
            if self.orgs[org].spans is None:
                continue
            calls = {
                str(s.attrs.get("consortium.message.id")): s
                for s in spans
                if s.attrs.get("gen_ai.operation.name") == "invoke_agent"
                and s.attrs.get("consortium.message.id")
            }
            receives = {
                str(s.attrs.get("consortium.message.id")): s
                for s in spans
                if s.name.startswith("a2a.receive")
                and s.attrs.get("consortium.sender") not in (None, "", org)
                and s.attrs.get("consortium.sender") in self.members
            }
            for msg, s in calls.items():
                hop = self.hops.get(("request", msg))
                if hop is None or hop.out is None or hop.sender != org:
                    r.error(
                        f"{org} span {s.span_id}",
                        f"{s.name} has no out entry of request {_short(msg)} in {org}'s log",
                    )
                    continue
                hop.mode = str(s.attrs.get("consortium.mode", ""))
                hop.start = min(hop.start, s.start) if hop.start else s.start
                hop.end = max(hop.end, s.end)
                hop.latency_ms = round((s.end - s.start) * 1000, 3)
                if s.attrs.get("consortium.verdict"):
                    hop.marks.append(f"{org} span verdict {s.attrs['consortium.verdict']}")
            for msg, s in receives.items():
                hop = self.hops.get(("request", msg))
                if hop is None or hop.into is None or hop.receiver != org:
                    r.error(
                        f"{org} span {s.span_id}",
                        f"{s.name} has no in entry of request {_short(msg)} in {org}'s log",
                    )
                    continue
                self._usage(hop, org, s)
            for hop in self.hops.values():
                if hop.kind != "request":
                    continue
                if hop.sender == org and hop.out is not None and hop.message_id not in calls:
                    r.error(
                        f"{org} entry {hop.out.get('seq')}",
                        f"request {_short(hop.message_id)} to {hop.receiver}: no invoke_agent span",
                    )
                if hop.receiver == org and hop.into is not None and hop.message_id not in receives:
                    r.error(
                        f"{org} entry {hop.into.get('seq')}",
                        f"request {_short(hop.message_id)} from {hop.sender}: no a2a.receive span",
                    )

    def _usage(self, hop: TraceHop, org: str, receive: Span) -> None:
        """Model and tokens of the chat spans under the receiver's span of the request."""
        children: dict[str, list[Span]] = {}
        for s in self.spans[org]:
            children.setdefault(s.parent_id, []).append(s)
        stack, tokens, model = [receive], 0, ""
        while stack:
            s = stack.pop()
            stack.extend(children.get(s.span_id, []))
            if s.attrs.get("gen_ai.operation.name") == "chat":
                model = model or str(
                    s.attrs.get("gen_ai.response.model") or s.attrs.get("gen_ai.request.model", "")
                )
                for k in ("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"):
                    v = s.attrs.get(k)
                    tokens += int(v) if isinstance(v, int) else 0
        if model and not hop.model:
            hop.model = model
        if tokens and hop.tokens is None:
            hop.tokens = tokens

    # -- the tree --------------------------------------------------------------------

    def _nest(self) -> None:
        by_digest = {h.digest: h for h in self.hops.values() if h.kind == "request" and h.digest}
        for hop in self.hops.values():
            if hop.kind in ("answer", "event"):
                side = hop.out or hop.into or {}
                request = by_digest.get(str(side.get("req", "")))
                if request is None:
                    self.report.warn(
                        f"{hop.kind} {_short(hop.message_id)}",
                        "answers a request that is not in this trace",
                    )
                    continue
                hop.parent = request.message_id
                request.end = max(request.end, hop.start)
                if hop.kind == "answer":
                    request.answers += 1
                else:
                    request.events += 1
        index = {(o, s.span_id): s for o, ss in self.spans.items() for s in ss}
        for hop in self.hops.values():
            if hop.kind != "request" or hop.out is None:
                continue
            span = index.get((hop.sender, str(hop.out.get("span", ""))))
            while span is not None:
                if (
                    span.name.startswith("a2a.receive")
                    and span.attrs.get("consortium.sender") != hop.sender
                ):
                    parent = self.hops.get(
                        ("request", str(span.attrs.get("consortium.message.id")))
                    )
                    if parent is not None:
                        hop.parent = parent.message_id
                    break
                span = index.get((hop.sender, span.parent_id))
        for hop in list(self.hops.values()):
            if hop.kind == "answer" and hop.into is not None and hop.into.get("inclusion"):
                self._inclusion(hop, hop.into)

    def _inclusion(self, answer: TraceHop, entry: dict[str, Any]) -> None:
        """The log receipt `answer` carried, as its asker recorded it."""
        asker, peer = answer.receiver, answer.sender
        digest = str(entry.get("req", ""))
        request = next(
            (h for h in self.hops.values() if h.kind == "request" and h.digest == digest), None
        )
        where = f"{asker} entry {entry.get('seq')}"
        verdict = str(entry.get("inclusion", ""))
        if request is not None:
            request.inclusion = verdict
        if verdict != "included":
            self.report.error(where, f"the log receipt from {peer} is {verdict!r}, not 'included'")
            return
        raw = entry.get("receipt")
        found = check_receipt(
            raw,
            origin=log_origin(self.rosters[0].federation_id, peer),
            keys=RosterHistory(self.rosters).keys(peer, _number(entry.get("time"))),
            request_id=request.message_id if request is not None else "",
            request_digest=digest,
            asker=asker,
        )
        if found.verdict != "included":
            self.report.error(where, f"the log receipt from {peer} checks as {found.verdict!r}")
            return
        if peer in self.orgs and isinstance(raw, dict):
            held = [e for e in self.orgs[peer].log.bodies if e.get("seq") == found.index]
            if not held or canonical(held[0]) != str(raw.get("entry", "")).encode():
                self.report.error(
                    where,
                    f"the receipt's entry {found.index} is not what {peer}'s log holds there",
                )
                return
        if request is not None:
            request.marks.append(f"{peer}'s log receipt included")


def trace_report(orgs: Sequence[OrgRecords], trace_id: str, task_id: str = "") -> TraceReport:
    """Every check of the module docstring over the trace `trace_id` (hex)."""
    return _Join(orgs, trace_id.lower(), task_id).run()
