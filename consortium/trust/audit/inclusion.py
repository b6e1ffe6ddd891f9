"""Log receipts: a peer's signed reply carries the proof that the peer's audit log holds
its entry of the request, so the organization that asked keeps proof the peer logged it.

The receipt, in the reply's `metadata["consortium.audit"]` (inside the signature):
`{"index": I, "entry": ENTRY, "checkpoint": NOTE, "proof": [...]}` — the peer's entry of
the request as it is in its log (canonical JSON: identifiers and digests only), a
checkpoint of the peer's log signed by the peer, and the inclusion proof of the entry in
that checkpoint. `check_receipt` is the asker's check (the verifier makes it as it admits
the answer): the entry is the one of this request (its digest, and message id when
known, received from this node), the checkpoint is a
checkpoint of the peer's log signed by a key the peer holds, and the proof includes the
entry's leaf in it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nacl.signing import VerifyKey

from consortium.trust.audit.merkle import ProofError, leaf_hash, verify_inclusion
from consortium.trust.audit.notes import Checkpoint, NoteError, parse_note
from consortium.trust.audit.witness import decode_proof, encode_proof, signed_by
from consortium.trust.jws import canonical

RECEIPT_KEY = "consortium.audit"


@dataclass(frozen=True)
class Inclusion:
    """What `check_receipt` found: "included", or why not."""

    verdict: str
    index: int = -1
    size: int = 0


def receipt(index: int, entry: str, note: str, proof: Sequence[bytes]) -> dict[str, Any]:
    return {"index": index, "entry": entry, "checkpoint": note, "proof": encode_proof(proof)}


def check_receipt(
    raw: object,
    *,
    origin: str,
    keys: Sequence[VerifyKey],
    request_digest: str,
    request_id: str = "",
    asker: str,
) -> Inclusion:
    """The asker's check of a receipt (see the module docstring)."""
    if not isinstance(raw, Mapping):
        return Inclusion("malformed")
    index, entry, note = raw.get("index"), raw.get("entry"), raw.get("checkpoint")
    if isinstance(index, float) and index == int(index):
        index = int(index)  # a protobuf Struct number
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        return Inclusion("malformed")
    if not isinstance(entry, str) or not isinstance(note, str):
        return Inclusion("malformed")
    try:
        proof = decode_proof(raw.get("proof", []))
        body, signatures = parse_note(note)
        checkpoint = Checkpoint.parse(body)
        fields = json.loads(entry)
    except (ValueError, NoteError):
        return Inclusion("malformed", index)
    if not isinstance(fields, dict) or canonical(fields) != entry.encode():
        return Inclusion("malformed", index)
    if (
        fields.get("seq") != index
        or (request_id and fields.get("msg") != request_id)
        or fields.get("digest") != request_digest
        or fields.get("peer") != asker
        or fields.get("dir") != "in"
        or fields.get("kind") != "request"
    ):
        return Inclusion("wrong_entry", index, checkpoint.size)
    if checkpoint.origin != origin:
        return Inclusion("wrong_log", index, checkpoint.size)
    if not signed_by(body, signatures, origin, keys):
        return Inclusion("bad_signature", index, checkpoint.size)
    if index >= checkpoint.size:
        return Inclusion("not_included", index, checkpoint.size)
    try:
        verify_inclusion(index, checkpoint.size, leaf_hash(entry.encode()), proof, checkpoint.root)
    except (ProofError, ValueError):
        return Inclusion("not_included", index, checkpoint.size)
    return Inclusion("included", index, checkpoint.size)
