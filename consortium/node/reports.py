"""Members' trust reports on a node: sending this node's report to every active member
every `[trust] report_interval_s`, and taking theirs.

Sending: the report (trust/reports.py: per peer this node has local evidence about, its
local score and evidence count) goes in one data part of a message whose
`metadata["consortium"]` says `{"mode": "trust_report"}`, through the one exchange
(node/peers.py: signed, audited, sent with a deadline; the peer's signed
acknowledgement verified and assessed like any reply). A quarantined peer is not sent
one. A report that cannot be delivered is logged with the peer's id and a code only, and
counted; serving goes on.

Receiving (the executor's direct reply, node/a2a/executor.py): the request handler has
already admitted the sender by its signature as an active member (trust/admission.py),
so nothing unverifiable gets here. `receive` checks the content (one data part holding a
valid report, filed by the member that signed it, neither stale nor from the future, not
older than the one kept) and refuses anything else with a reason code, counted per
reason, changing no score. Entries about this node, the reporter itself or non-members
are dropped and counted. The latest report per reporter is kept in the trust store
(trust.sqlite3, or PostgreSQL's consortium_trust), the opinions are folded again, and the
acknowledgement says what was used. A report never reaches the model and never becomes a
task.

Replicas: each folds the reports kept in the shared store (whichever replica received
them), so all hand their assessor the same opinions; each sends its own report (of the
shared reputations) every interval, the receiver keeping the latest. On PostgreSQL the
store is read and written off the event loop (`receive_async`, `send_all`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from a2a.types import a2a_pb2
from google.protobuf import json_format, struct_pb2

from consortium.errors import RequestRejected, UntrustedAnswer
from consortium.federation.roster import Roster
from consortium.federation.watcher import RosterWatcher
from consortium.logsafe import safe
from consortium.node.peers import Call, PeerClient, PeerError, PeerQuarantined
from consortium.node.periodic import every
from consortium.protocols.replies import ReportAck
from consortium.protocols.request_options import METADATA_KEY, request_options
from consortium.trust.reports import (
    Fold,
    ReportEntry,
    ReportError,
    ReportSettings,
    TrustReport,
    fold,
    parse_report,
    usable,
)
from consortium.trust.reputation_engine import ReputationAssessor

log = logging.getLogger(__name__)

MODE = "trust_report"
# The node's own scores of its peers, no user's text: not redacted.
REPORT = Call(
    MODE,
    streaming=False,
    no_reply="{org} did not acknowledge the trust report",
    refused="the acknowledgement from {org} was refused: {error}",
    redacted=False,
)


def report_message(report: TrustReport) -> a2a_pb2.Message:
    """The request that carries `report` (unsigned: the exchange signs it)."""
    value = struct_pb2.Value()
    json_format.ParseDict(report.wire(), value)
    message = a2a_pb2.Message(
        message_id=str(uuid.uuid4()), role=a2a_pb2.ROLE_USER, parts=[a2a_pb2.Part(data=value)]
    )
    message.metadata.update({METADATA_KEY: {"mode": MODE}})
    return message


def report_content(message: a2a_pb2.Message) -> dict[str, Any]:
    """The JSON object of a trust report's one data part; raises ReportError."""
    if len(message.parts) != 1 or message.parts[0].WhichOneof("content") != "data":
        raise ReportError("malformed_report", "a trust report is one data part")
    data = message.parts[0].data
    if data.WhichOneof("kind") != "struct_value":
        raise ReportError("malformed_report", "a trust report's data is a JSON object")
    content: dict[str, Any] = json_format.MessageToDict(data.struct_value)
    return content


def ack_of(message: a2a_pb2.Message) -> ReportAck | None:
    """The acknowledgement in a verified reply, or None if it carries none."""
    raw = json_format.MessageToDict(message.metadata).get(METADATA_KEY)
    try:
        return ReportAck.model_validate(raw)
    except ValueError:
        return None


class TrustReports:
    """One node's side of the report exchange, over its ReputationAssessor (whose
    trust.sqlite3 keeps the reports and the opinions). Counters for /healthz: reports
    `received` (kept), `refused` and entries `dropped` per reason; reports `sent`
    (acknowledged as accepted) and `send_failed` per code."""

    def __init__(
        self,
        *,
        org_id: str,
        roster: RosterWatcher,
        assessor: ReputationAssessor,
        peers: PeerClient,
        settings: ReportSettings,
        skew_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.org_id = org_id
        self.settings = settings
        self._roster = roster
        self._assessor = assessor
        self._peers = peers
        self._skew = skew_s
        self._clock = clock
        self._lock = threading.Lock()
        self.received = 0
        self.sent = 0
        self.refused: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.send_failed: Counter[str] = Counter()
        self._reports: dict[str, TrustReport] = {}
        self._bodies: dict[str, str] = {}
        roster.subscribe(self._roster_changed)
        self.refold()

    # -- this node's report ------------------------------------------------------------

    def own_report(self) -> TrustReport:
        """Each active member's local score (this node's own evidence only) and the
        pieces of evidence behind it, for the members it has local evidence about."""
        members = self._others(self._roster.current())
        entries = []
        for rep in self._assessor.reputations():
            if rep.model or rep.peer not in members:
                continue
            local = sum(n for (kind, _), n in rep.counts.items() if kind != "report")
            if local <= 0:
                continue
            score = rep.alpha / (rep.alpha + rep.beta)
            entries.append(ReportEntry(org=rep.peer, score=score, evidence=local))
        return TrustReport(reporter=self.org_id, issued_at=self._clock(), entries=entries)

    async def send_all(self) -> dict[str, str]:
        """Sends this node's report to every active member but itself; per member, "ok"
        (accepted) or why not. Never raises for a member that fails."""
        # Stale reports age out even when none arrive (off the event loop on PostgreSQL).
        await self._assessor.off_loop(self.refold)
        report = await self._assessor.off_loop(self.own_report)
        orgs = sorted(self._others(self._roster.current()))
        outcomes = await asyncio.gather(*(self._send(org, report) for org in orgs))
        return dict(zip(orgs, outcomes, strict=True))

    async def _send(self, org: str, report: TrustReport) -> str:
        try:
            reply = await self._peers.exchange(org, report_message(report), REPORT)
        except PeerQuarantined:
            return "quarantined"
        except PeerError as e:
            outcome = e.failure or "not_sent"
        except UntrustedAnswer:
            outcome = "untrusted_ack"
        except RequestRejected:
            outcome = "rejected"
        else:
            ack = ack_of(reply.message)
            if ack is not None and ack.accepted:
                self.sent += 1
                return "ok"
            outcome = (ack.reason if ack is not None else None) or "no_ack"
        self.send_failed[outcome] += 1
        log.info("trust report to %s not accepted: %s", safe(org), safe(outcome, 64))
        return outcome

    async def run(self) -> None:
        """Sends the report every report_interval_s (never, when it is 0), until
        cancelled; a failed round is logged and the next one comes as planned."""
        await every(self.settings.report_interval_s, self.send_all, "trust report round")

    # -- members' reports --------------------------------------------------------------

    async def receive_async(self, sender: str, message: a2a_pb2.Message) -> ReportAck:
        """`receive`, off the event loop when the trust store is PostgreSQL's."""
        return await self._assessor.off_loop(lambda: self.receive(sender, message))

    def receive(self, sender: str, message: a2a_pb2.Message) -> ReportAck:
        """Takes `sender`'s report (`sender`: the member whose signature the handler
        verified). Refusals change nothing and are counted per reason."""
        try:
            report = self._check(sender, message)
        except ReportError as e:
            self.refused[e.reason] += 1
            log.warning(
                "refused trust report %s from %s: %s",
                safe(message.message_id or "-"),
                safe(sender),
                e.reason,
            )
            return ReportAck(org=self.org_id, accepted=False, reason=e.reason, error=str(e))
        members = self._others(self._roster.current())
        kept, dropped = usable(report, self.org_id, members)
        body = json.dumps(report.wire(), separators=(",", ":"))
        if not self._assessor.store.save_report(sender, report.issued_at, self._clock(), body):
            self.refused["superseded"] += 1
            return ReportAck(
                org=self.org_id,
                accepted=False,
                reason="superseded",
                error="superseded: a newer report from this member is kept",
            )
        with self._lock:
            self.received += 1
            self.dropped.update(dropped)
        self.refold()
        log.info(
            "trust report %s from %s: %d entries used, %d dropped",
            safe(message.message_id or "-"),
            safe(sender),
            len(kept),
            sum(dropped.values()),
        )
        return ReportAck(
            org=self.org_id, accepted=True, used=len(kept), dropped=dict(dropped) or None
        )

    def _check(self, sender: str, message: a2a_pb2.Message) -> TrustReport:
        member = self._roster.current().member(sender)
        if sender == self.org_id or member is None or member.status != "active":
            raise ReportError("not_member", "trust reports are taken from other members only")
        try:
            request_options(message)  # the rest of metadata.consortium must be valid too
        except ValueError as e:
            raise ReportError("malformed_report", str(e)) from None
        report = parse_report(report_content(message))
        if report.reporter != sender:
            raise ReportError("reporter_mismatch", "the report names another reporter")
        now = self._clock()
        if now - report.issued_at > self.settings.report_max_age_s:
            raise ReportError("stale_report", "the report is older than report_max_age_s")
        if report.issued_at - now > self._skew:
            raise ReportError("future_report", "the report is issued in the future")
        return report

    def _roster_changed(self, roster: Roster) -> None:
        # Called by the watcher while it holds its lock: use the roster handed in, and
        # never let a failed fold stop the roster from being taken.
        try:
            self.refold(roster)
        except Exception as e:
            log.error("trust reports not folded after a roster change: %s", type(e).__name__)

    def refold(self, roster: Roster | None = None) -> Fold:
        """Folds the kept reports again (after a report, a roster change, at start) and
        hands the assessor the opinions."""
        current = roster or self._roster.current()
        members = self._others(current)
        trust: dict[str, float] = {}
        for org in members:
            rep = self._assessor.model_reputation(org, "")
            local = rep.alpha / (rep.alpha + rep.beta)
            trust[org] = 0.0 if rep.state == "quarantined" else local
        reports = self._kept_reports()
        result = fold(
            me=self.org_id,
            trust=trust,
            founders=current.founders(),
            reports=reports,
            now=self._clock(),
            settings=self.settings,
        )
        weight = self.settings.report_weight
        self._assessor.set_opinions(
            {org: op.pseudo_counts(weight) for org, op in result.opinions.items()}
        )
        return result

    def _kept_reports(self) -> dict[str, TrustReport]:
        """The latest report of each member, as kept in the trust store by whichever
        replica received it (so every replica folds the same reports)."""
        bodies = self._assessor.store.load_reports()
        with self._lock:
            for reporter, body in bodies.items():
                if self._bodies.get(reporter) == body:
                    continue
                self._bodies[reporter] = body
                try:
                    self._reports[reporter] = parse_report(json.loads(body))
                except (ValueError, ReportError):
                    self._reports.pop(reporter, None)
                    log.warning("trust report kept from %s is unreadable; ignored", safe(reporter))
            return {r: self._reports[r] for r in bodies if r in self._reports}

    def counts(self) -> dict[str, Any]:
        """What /healthz shows."""
        return {
            "received": self.received,
            "refused": dict(self.refused),
            "dropped": dict(self.dropped),
            "sent": self.sent,
            "send_failed": dict(self.send_failed),
        }

    def _others(self, roster: Roster) -> set[str]:
        return {
            m.org_id for m in roster.members if m.org_id != self.org_id and m.status == "active"
        }
