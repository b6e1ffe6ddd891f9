"""Redaction on a node: the `Redactor` every message to a peer passes (node/peers.py), and
the task scope that holds one task's pseudonyms.

`TaskRedaction` is one task's state: its `Vault` (the placeholders and the values behind
them), the spans detected in its texts (each text is analysed once per task, whichever
peers it goes to), what each peer was sent in place of what, and the receipts kept. The
service opens one per task and makes it current (`active`) around the calls that may reach
a peer, so the exchange, several calls deep, redacts with the task's vault: every member
of a group sees the same pseudonyms, and the answer is restored with them. Closing the
scope drops the vault. A call made outside any task (a background canary) gets a scope of
its own, dropped with the call.

`PolicyRedactor` applies node.toml's `[redaction]` policy for the recipient (its overrides
by peer and by roster attributes) to the message's text parts and the task options that
carry text (`choices`, `context`). Detection runs on one worker thread, off the event
loop, with the detector built once at start. A span whose action is `block` stops the
message: `RedactionBlocked` (a RequestRejected), nothing sent; the caller answers locally
or refuses. Any other failure while redacting also stops the message (`RedactionFailed`).
Each replaced span gets a salted digest in the signed message (`redaction.receipts`) and
its disclosure is kept in the node's `DisclosureStore` with the signed message as sent.

Nothing here logs or records a value: provenance gets entity types and counts, and so
does the exchange's `consortium.redact` span (`consortium.redaction.spans`,
`consortium.redaction.entities` as TYPE=N, `consortium.redaction.blocked`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from a2a.types import a2a_pb2
from google.protobuf.json_format import MessageToDict
from opentelemetry import trace

from consortium.errors import RequestRejected
from consortium.federation.roster import Member
from consortium.federation.watcher import RosterWatcher
from consortium.protocols.provenance import RedactionReport
from consortium.protocols.request_options import METADATA_KEY
from consortium.redaction.policy import PeerActions, RedactionPolicy
from consortium.redaction.pseudonyms import StreamRestorer, Vault
from consortium.redaction.receipts import (
    REDACTION_KEY,
    Disclosure,
    DisclosureStore,
    make_disclosure,
    redaction_metadata,
)
from consortium.redaction.rewrite import rewrite
from consortium.trust.audit import AuditLog, NoOpAuditLog

if TYPE_CHECKING:  # the detector imports spaCy and Presidio (and torch): only where built
    from consortium.redaction.detector import Detector, Span

log = logging.getLogger(__name__)
MAX_PENDING = 1024


class RedactionBlocked(RequestRejected):
    """The policy for `org` blocks a type found in the message: it was not sent."""

    def __init__(self, org: str, types: tuple[str, ...]) -> None:
        super().__init__(
            f"the redaction policy for {org} blocks {', '.join(types)} found in the task: not sent"
        )
        self.org = org
        self.types = types


class RedactionFailed(RequestRejected):
    """Redacting a message for `org` failed: it was not sent."""

    def __init__(self, org: str, why: str) -> None:
        super().__init__(f"redacting the message for {org} failed ({why}): not sent")
        self.org = org


@dataclass
class TaskRedaction:
    """One task's pseudonyms, detections and what each peer was sent."""

    task_id: str = ""
    vault: Vault = field(default_factory=Vault)
    detected: dict[str, list[Span]] = field(default_factory=dict)
    # A message's text parts (more than one) -> the spans of each, found across them.
    detected_parts: dict[tuple[str, ...], list[list[Span]]] = field(default_factory=dict)
    sent: dict[str, dict[str, int]] = field(default_factory=dict)  # peer -> type -> spans
    blocked: dict[str, tuple[str, ...]] = field(default_factory=dict)
    receipts: list[str] = field(default_factory=list)  # ids of messages with disclosures

    @contextlib.contextmanager
    def active(self) -> Iterator[TaskRedaction]:
        """This scope is the current task's while the block runs (and in the asyncio
        tasks started in it)."""
        token = _current.set(self)
        try:
            yield self
        finally:
            _current.reset(token)

    def restore(self, text: str) -> str:
        """`text` with the task's pseudonyms replaced by their values."""
        return self.vault.restore(text)

    def stream(self) -> StreamRestorer:
        return StreamRestorer(self.vault)

    def report(self) -> RedactionReport | None:
        """What provenance says of it: types and counts per peer, blocked types, receipts
        (None when nothing was redacted or blocked)."""
        peers = {org: dict(c) for org, c in self.sent.items() if c}
        if not peers and not self.blocked:
            return None
        return RedactionReport(
            peers=peers or None,
            blocked={org: list(t) for org, t in self.blocked.items()} or None,
            receipts=list(self.receipts) or None,
        )

    def close(self) -> None:
        """Drops the vault and everything detected: the task is over."""
        self.vault = Vault()
        self.detected.clear()
        self.detected_parts.clear()


_current: ContextVar[TaskRedaction | None] = ContextVar("consortium_redaction", default=None)


def attributes_of(member: Member | None) -> dict[str, str]:
    """The roster attributes `[[redaction.rules]]` match (none for a non-member)."""
    if member is None:
        return {}
    return {"jurisdiction": member.capabilities.jurisdiction, "region": member.capabilities.region}


class PolicyRedactor:
    """node.toml's `[redaction]` policy applied to every message to a peer."""

    def __init__(
        self,
        policy: RedactionPolicy,
        detector: Detector,
        roster: RosterWatcher,
        store: DisclosureStore,
        audit: AuditLog | None = None,
    ) -> None:
        self._policy = policy
        # Told of every receipt kept: its digests, never the values (trust.audit).
        self._audit: AuditLog = audit or NoOpAuditLog()
        self._detector = detector
        self._roster = roster
        self._store = store
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="redaction")
        # Redacted, not yet signed: message id -> (task id, recipient, disclosures).
        self._pending: OrderedDict[str, tuple[str, str, tuple[Disclosure, ...]]] = OrderedDict()

    def actions_for(self, org: str) -> PeerActions:
        return self._policy.for_peer(org, attributes_of(self._roster.current().member(org)))

    @property
    def may_block(self) -> bool:
        p = self._policy
        tables: list[tuple[str | None, dict[str, str]]] = [(p.default, dict(p.actions))]
        tables += [(o.default, dict(o.actions)) for o in (*p.peers.values(), *p.rules)]
        return any(default == "block" or "block" in a.values() for default, a in tables)

    async def blocks(self, recipient: str, texts: Sequence[str]) -> tuple[str, ...]:
        scope = _current.get() or TaskRedaction()
        actions = self.actions_for(recipient)
        await self._detect(scope, texts)
        found = {
            s.entity_type
            for t in texts
            for s in scope.detected[t]
            if actions.action(s.entity_type) == "block"
        }
        if found:
            scope.blocked[recipient] = tuple(sorted(found | set(scope.blocked.get(recipient, ()))))
        return tuple(sorted(found))

    async def _detect(self, scope: TaskRedaction, texts: Sequence[str]) -> None:
        """Detects the spans of each text the task has not analysed yet, off the loop."""
        loop = asyncio.get_running_loop()
        for text in texts:
            if text not in scope.detected:
                scope.detected[text] = await loop.run_in_executor(
                    self._pool, self._detector.detect, text
                )

    async def _detect_parts(self, scope: TaskRedaction, parts: Sequence[str]) -> list[list[Span]]:
        """The spans of each of a message's text parts, found across the parts (a value
        split over two parts is found in both), off the loop, once per task."""
        if len(parts) <= 1:
            await self._detect(scope, parts)
            return [scope.detected[p] for p in parts]
        key = tuple(parts)
        if key not in scope.detected_parts:
            loop = asyncio.get_running_loop()
            scope.detected_parts[key] = await loop.run_in_executor(
                self._pool, self._detector.detect_parts, key
            )
        return scope.detected_parts[key]

    async def redact(self, message: a2a_pb2.Message, recipient: str) -> a2a_pb2.Message:
        scope = _current.get() or TaskRedaction()
        try:
            return await self._redact(scope, message, recipient)
        except RequestRejected:
            raise
        except Exception as e:  # anything else: the message does not leave
            log.error("redaction for %s failed: %s", recipient, type(e).__name__)
            raise RedactionFailed(recipient, type(e).__name__) from None

    async def _redact(
        self, scope: TaskRedaction, message: a2a_pb2.Message, org: str
    ) -> a2a_pb2.Message:
        actions = self.actions_for(org)
        if not actions.changes_anything:
            return message
        if any(not p.HasField("text") for p in message.parts):
            # Only text is analysed: a file or data part could carry anything.
            raise RedactionFailed(org, "a part that is not text")
        meta: dict[str, Any] = MessageToDict(message.metadata)
        options = meta.get(METADATA_KEY)
        options = dict(options) if isinstance(options, dict) else None
        parts = [p.text for p in message.parts]
        texts: list[str] = []  # the options' texts, each detected on its own
        choices = options.get("choices") if options is not None else None
        if isinstance(choices, list) and all(isinstance(c, str) for c in choices):
            texts += choices
        context = options.get("context") if options is not None else None
        if isinstance(context, str):
            texts.append(context)
        part_spans = await self._detect_parts(scope, parts)
        await self._detect(scope, texts)
        for text in (*parts, *texts):
            scope.vault.reserve(text)
        withheld: list[tuple[str, str]] = []
        blocked: set[str] = set()

        def apply(text: str, spans: Sequence[Span]) -> str:
            done = rewrite(text, spans, actions, scope.vault)
            blocked.update(done.blocked)
            withheld.extend((entity, value) for entity, _, value in done.withheld)
            return done.text

        sent_parts = [apply(p, spans) for p, spans in zip(parts, part_spans, strict=True)]
        found = {text: apply(text, scope.detected[text]) for text in dict.fromkeys(texts)}
        span = trace.get_current_span()  # the exchange's consortium.redact span
        if blocked:
            scope.blocked[org] = tuple(sorted(blocked))
            span.set_attribute("consortium.redaction.blocked", list(scope.blocked[org]))
            raise RedactionBlocked(org, scope.blocked[org])
        span.set_attribute("consortium.redaction.spans", len(withheld))
        if not withheld:
            return message
        out = a2a_pb2.Message()
        out.CopyFrom(message)
        for part, text in zip(out.parts, sent_parts, strict=True):
            part.text = text
        counts: dict[str, int] = {}
        for entity, _ in withheld:
            counts[entity] = counts.get(entity, 0) + 1
        if options is not None:
            if isinstance(choices, list) and all(isinstance(c, str) for c in choices):
                options["choices"] = [found[c] for c in choices]
            if isinstance(context, str):
                options["context"] = found[context]
            meta[METADATA_KEY] = options
        span.set_attribute(
            "consortium.redaction.entities", [f"{t}={n}" for t, n in sorted(counts.items())]
        )
        disclosures = tuple(make_disclosure(entity, value) for entity, value in withheld)
        meta[REDACTION_KEY] = redaction_metadata(disclosures, counts)
        out.metadata.Clear()
        out.metadata.update(meta)
        sent = scope.sent.setdefault(org, {})
        for entity, n in counts.items():
            sent[entity] = sent.get(entity, 0) + n
        scope.receipts.append(out.message_id)
        self._pending[out.message_id] = (scope.task_id, org, disclosures)
        while len(self._pending) > MAX_PENDING:  # redacted but never signed (an error)
            self._pending.popitem(last=False)
        return out

    async def signed_async(self, recipient: str, request: a2a_pb2.Message) -> None:
        """`signed`, off the event loop when the receipts are on PostgreSQL."""
        if self._store.remote:
            await self._store.db.run(lambda: self.signed(recipient, request))
        else:
            self.signed(recipient, request)

    def signed(self, recipient: str, request: a2a_pb2.Message) -> None:
        """The signed request as it left: its disclosures are kept with it."""
        pending = self._pending.pop(request.message_id, None)
        if pending is not None:
            task_id, _, disclosures = pending
            self._store.record(request.message_id, task_id, recipient, request, disclosures)
            if disclosures:
                self._audit.record(
                    "receipt",
                    peer=recipient,
                    task_id=task_id,
                    detail={
                        "msg": request.message_id,
                        "digests": " ".join(sorted(d.digest for d in disclosures)),
                    },
                )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
