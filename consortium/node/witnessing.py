"""Witnessing: members cosign each other's audit-log checkpoints (C2SP tlog-cosignature),
over signed message-only A2A exchanges, so that no organization can rewrite or roll back
its history unnoticed.

Submitting (this node's log): every `[audit] witness_interval_s`, the latest checkpoint
goes to each witness (`[audit] witnesses`, by default every other active member) in one
data part `{"checkpoint": NOTE, "oldSize": N, "proof": [...]}` whose
`metadata["consortium"]` says `{"mode": "cosign"}`, through the one exchange (signed,
audited, sent with a deadline; the signed answer verified). `oldSize` is the last size
that witness cosigned and `proof` the consistency proof from it; a witness that knows
another size says so and the submitter retries once from there. A stopping node submits
once more (`submit_last`, within LAST_SUBMISSION_S) after its last task is logged, so
only the records of that submission itself stay unwitnessed. A cosignature is
checked against the witness's key before it is kept with the checkpoint.

Proofs on request (`{"mode": "proof"}`, one data part): a member asks for
`{"inclusionOf": MESSAGE_ID}`, the log receipt of a request it sent this node lately
(its entry, a checkpoint signed now, the inclusion proof: trust.audit.inclusion), or
`{"consistency": [OLD, NEW]}`, the consistency proof between two checkpoints this node
signed, with the newer one and its cosignatures. A member learns of no entry but its own
requests'.

Witnessing (members' logs): the executor's direct reply hands the verified member's
message here; `trust.audit.witness.judge` decides; a cosigned checkpoint becomes the last
one seen of that log. A rollback or a fork is refused, recorded in this node's audit log
and counted against the member's reputation (protocol evidence). Nothing here reaches the
model or becomes a task.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from a2a.types import a2a_pb2
from google.protobuf import json_format, struct_pb2
from jwcrypto import jwk

from consortium.errors import RequestRejected, UntrustedAnswer
from consortium.federation.watcher import RosterWatcher
from consortium.logsafe import safe
from consortium.node.audit import keys_of
from consortium.node.peers import Call, PeerClient, PeerError
from consortium.node.periodic import every
from consortium.protocols.replies import CosignReply, ProofReply
from consortium.protocols.request_options import METADATA_KEY
from consortium.trust.audit import log_origin
from consortium.trust.audit.log import Signed, SqliteAuditLog
from consortium.trust.audit.notes import (
    Checkpoint,
    NoteError,
    cosignature_key_hash,
    parse_signature_line,
    verify_cosignature,
)
from consortium.trust.audit.witness import (
    MISBEHAVIOUR,
    decode_proof,
    encode_proof,
    judge,
)
from consortium.trust.jws import signing_key_of
from consortium.trust.reputation import Evidence

log = logging.getLogger(__name__)

MODE = "cosign"
# A quarantined member still witnesses: its cosignature is verified, not believed. A
# checkpoint holds no user's text: not redacted.
COSIGN = Call(
    MODE,
    streaming=False,
    no_reply="{org} did not answer the checkpoint",
    refused="the answer to the checkpoint from {org} was refused: {error}",
    gated=False,
    redacted=False,
)
MAX_NOTE_CHARS = 8192
# How long a stopping node waits for its witnesses to cosign its last checkpoint.
LAST_SUBMISSION_S = 3.0


def cosign_message(note: str, old_size: int, proof: Sequence[bytes]) -> a2a_pb2.Message:
    """The request that submits a checkpoint (unsigned: the exchange signs it)."""
    value = struct_pb2.Value()
    json_format.ParseDict(
        {"checkpoint": note, "oldSize": old_size, "proof": encode_proof(proof)}, value
    )
    message = a2a_pb2.Message(
        message_id=str(uuid.uuid4()), role=a2a_pb2.ROLE_USER, parts=[a2a_pb2.Part(data=value)]
    )
    message.metadata.update({METADATA_KEY: {"mode": MODE}})
    return message


def submission(message: a2a_pb2.Message) -> tuple[str, int, list[bytes]]:
    """The checkpoint note, old size and proof a message submits; raises ValueError."""
    if len(message.parts) != 1 or message.parts[0].WhichOneof("content") != "data":
        raise ValueError("a checkpoint to cosign is one data part")
    data = message.parts[0].data
    if data.WhichOneof("kind") != "struct_value":
        raise ValueError("a checkpoint to cosign is a JSON object")
    content: dict[str, Any] = json_format.MessageToDict(data.struct_value)
    note, old = content.get("checkpoint"), content.get("oldSize")
    if not isinstance(note, str) or not 0 < len(note) <= MAX_NOTE_CHARS:
        raise ValueError(f"checkpoint is not a note of at most {MAX_NOTE_CHARS} characters")
    if isinstance(old, bool) or not isinstance(old, int | float) or old != int(old) or old < 0:
        raise ValueError("oldSize is not a non-negative integer")
    return note, int(old), decode_proof(content.get("proof", []))


def proof_request(message: a2a_pb2.Message) -> dict[str, Any]:
    """The JSON object of a proof request's one data part; raises ValueError."""
    if len(message.parts) != 1 or message.parts[0].WhichOneof("content") != "data":
        raise ValueError("a proof request is one data part")
    data = message.parts[0].data
    if data.WhichOneof("kind") != "struct_value":
        raise ValueError("a proof request is a JSON object")
    content: dict[str, Any] = json_format.MessageToDict(data.struct_value)
    return content


def reply_of(message: a2a_pb2.Message) -> CosignReply | None:
    raw = json_format.MessageToDict(message.metadata).get(METADATA_KEY)
    try:
        return CosignReply.model_validate(raw)
    except ValueError:
        return None


class Witnessing:
    """One node's side of witnessing, over its audit log. Counters for /healthz:
    checkpoints `cosigned` for members and `refused` per verdict; cosignatures
    `collected` and submissions `failed` per outcome."""

    def __init__(
        self,
        *,
        org_id: str,
        federation_id: str,
        audit: SqliteAuditLog,
        roster: RosterWatcher,
        peers: PeerClient,
        key: Callable[[], jwk.JWK],
        witnesses: Sequence[str] = (),
        interval_s: float = 30.0,
        evidence: Callable[[Evidence], object] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.org_id = org_id
        self.federation_id = federation_id
        self.name = log_origin(federation_id, org_id)
        self._audit = audit
        self._roster = roster
        self._peers = peers
        self._key = key
        self._witnesses = tuple(witnesses)
        self._interval = interval_s
        self._evidence = evidence
        self._clock = clock
        self.cosigned = 0
        self.collected = 0
        self.refused: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()

    def counts(self) -> dict[str, Any]:
        return {
            "cosigned": self.cosigned,
            "refused": dict(self.refused),
            "collected": self.collected,
            "failed": dict(self.failed),
        }

    # -- this node's checkpoints -------------------------------------------------------

    def witnesses(self) -> list[str]:
        """The members asked to cosign: `[audit] witnesses`, else every other active one."""
        roster = self._roster.current()
        active = {m.org_id for m in roster.members if m.status == "active"}
        wanted = self._witnesses or tuple(sorted(active))
        return [w for w in wanted if w in active and w != self.org_id]

    async def submit_all(self) -> dict[str, str]:
        """The log's checkpoint as it is now, to every witness; per witness "ok" (its
        cosignature kept) or why not (nothing while another replica's round is under
        way). Never raises for a witness that fails."""
        # One replica's round at a time (trust.audit.log): another's under way, this one
        # skips (the next round sends what this replica added since).
        turn = self._audit.witnessing_turn()
        if not await self._audit.run(turn.take):
            return {}
        try:
            signed = await self._audit.run(self._audit.checkpoint)
            orgs = self.witnesses()
            outcomes = await asyncio.gather(*(self._submit(org, signed) for org in orgs))
        finally:
            await self._audit.run(turn.release)
        return dict(zip(orgs, outcomes, strict=True))

    async def _submit(self, org: str, signed: Signed) -> str:
        size = signed.checkpoint.size
        # The log's calls off the event loop: on PostgreSQL each is a round trip.
        old = await self._audit.run(partial(self._audit.cosigned_size, org))
        outcome = "no_reply"
        for _ in range(2):
            if old > size:
                outcome = "witness_ahead"  # it cosigned more of this log than the log has
                break
            if old == size:
                return "ok"
            proof = (
                await self._audit.run(partial(self._audit.consistency_proof, old, size))
                if old
                else []
            )
            try:
                reply = await self._peers.exchange(
                    org, cosign_message(signed.note, old, proof), COSIGN
                )
            except PeerError as e:
                outcome = e.failure or "not_sent"
                break
            except UntrustedAnswer:
                outcome = "untrusted_answer"
                break
            except RequestRejected:
                outcome = "rejected"
                break
            answer = reply_of(reply.message)
            if answer is None:
                outcome = "no_answer"
                break
            if answer.verdict == "old_size_mismatch":
                old = answer.known_size
                outcome = "old_size_mismatch"
                continue
            if answer.verdict != "cosigned":
                outcome = answer.verdict
                break
            keep = partial(self._keep, org, signed.checkpoint, answer.cosignature or "")
            outcome = await self._audit.run(keep)
            if outcome == "ok":
                return outcome
            break
        self.failed[outcome] += 1
        log.warning("checkpoint %d not cosigned by %s: %s", size, safe(org), safe(outcome, 64))
        return outcome

    def _keep(self, org: str, checkpoint: Checkpoint, line: str) -> str:
        """Checks a witness's cosignature line and keeps it; "ok" or why not."""
        name = log_origin(self.federation_id, org)
        try:
            sig = parse_signature_line(line)
        except NoteError:
            return "bad_cosignature"
        roster = self._roster.current()
        for key in keys_of(roster, org, self._clock()):
            if sig.name != name or sig.key_hash != cosignature_key_hash(name, bytes(key)):
                continue
            try:
                verify_cosignature(checkpoint, sig, name, key)
            except NoteError:
                continue
            self._audit.add_cosignature(checkpoint.size, org, sig)
            self.collected += 1
            return "ok"
        return "bad_cosignature"

    async def submit_last(self, timeout_s: float = LAST_SUBMISSION_S) -> dict[str, str]:
        """At shutdown, once the last task is logged: the log's checkpoint to every
        witness, within `timeout_s` (not at all when submitting is off). Without it the
        entries since the last round would never be witnessed, and could be rewritten
        unnoticed."""
        if self._interval <= 0:
            return {}
        # Not wait_for: it would wait on for a call that does not end when cancelled.
        submitting = asyncio.ensure_future(self.submit_all())
        done, _ = await asyncio.wait({submitting}, timeout=timeout_s)
        if not done:
            submitting.cancel()
            self.failed["timeout"] += 1
            log.warning("the last checkpoint was not cosigned within %.1f s", timeout_s)
            return {}
        return submitting.result()

    async def run(self) -> None:
        """Submits every witness_interval_s (never, when it is 0), until cancelled."""
        await every(self._interval, self.submit_all, "witnessing round")

    # -- proofs for members --------------------------------------------------------------

    def prove(self, sender: str, message: a2a_pb2.Message) -> ProofReply:
        """A verified member's proof request answered (see the module docstring)."""
        try:
            content = proof_request(message)
        except ValueError as e:
            return ProofReply(org=self.org_id, error=str(e))
        wanted = content.get("inclusionOf")
        if isinstance(wanted, str) and wanted and len(wanted) <= 256:
            receipt = self._audit.receipt(wanted, peer=sender)
            if receipt is None:
                return ProofReply(org=self.org_id, error="no recent request with this id from you")
            return ProofReply(org=self.org_id, receipt=receipt)
        sizes = content.get("consistency")
        if (
            isinstance(sizes, list)
            and len(sizes) == 2
            and all(isinstance(n, int | float) and not isinstance(n, bool) for n in sizes)
        ):
            old, new = (int(n) for n in sizes)
            try:
                note = self._audit.cosigned_note(new)
                proof = self._audit.consistency_proof(old, new) if old else []
            except (KeyError, ValueError):
                return ProofReply(
                    org=self.org_id, error=f"no checkpoint of size {new}, or {old} > {new}"
                )
            return ProofReply(org=self.org_id, checkpoint=note, proof=encode_proof(proof))
        return ProofReply(
            org=self.org_id, error="ask for inclusionOf: MESSAGE_ID or consistency: [OLD, NEW]"
        )

    # -- members' checkpoints ------------------------------------------------------------

    def receive(self, sender: str, message: a2a_pb2.Message) -> CosignReply:
        """A verified member's checkpoint, judged; the answer to send back."""
        origin = log_origin(self.federation_id, sender)
        try:
            note, old, proof = submission(message)
        except ValueError as e:
            self.refused["malformed"] += 1
            return CosignReply(org=self.org_id, verdict="malformed", detail=str(e))
        roster = self._roster.current()
        judgement = judge(
            origin=origin,
            note=note,
            old_size=old,
            proof=proof,
            keys=keys_of(roster, sender, self._clock()),
            seen=self._audit.seen(origin),
            witness_name=self.name,
            witness_key=signing_key_of(self._key()),
            now=int(self._clock()),
        )
        checkpoint = judgement.checkpoint
        detail: dict[str, str | int] = {"origin": origin, "verdict": judgement.verdict}
        if checkpoint is not None:
            detail["size"] = checkpoint.size
        seen = self._audit.seen(origin)
        # The checkpoint cosigned last time, again: nothing new to record or remember
        # (the exchange's own messages are in the log all the same).
        again = (
            judgement.cosigned
            and checkpoint is not None
            and seen is not None
            and (seen.size, seen.root) == (checkpoint.size, checkpoint.root)
        )
        if not again:
            self._audit.record("witness", peer=sender, detail=detail)
        if judgement.cosigned and checkpoint is not None and judgement.cosignature is not None:
            if not again:
                self._audit.remember_cosigned(checkpoint, note)
            self.cosigned += 1
            return CosignReply(
                org=self.org_id,
                verdict="cosigned",
                cosignature=judgement.cosignature.line().rstrip("\n"),
                known_size=checkpoint.size,
            )
        self.refused[judgement.verdict] += 1
        if judgement.verdict in MISBEHAVIOUR:
            log.warning("refused checkpoint of %s: %s", safe(sender), judgement.verdict)
            if self._evidence is not None:
                self._evidence(Evidence(sender, "protocol", False, f"log_{judgement.verdict}"))
        return CosignReply(
            org=self.org_id,
            verdict=judgement.verdict,
            detail=judgement.detail or None,
            known_size=judgement.known_size,
        )
