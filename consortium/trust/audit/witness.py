"""A witness's judgement of another member's checkpoint (C2SP tlog-witness, over signed
A2A messages instead of HTTP): cosign it only when it is signed by the log's owner and
consistent with the last checkpoint this witness cosigned of that log.

The submitter sends its checkpoint note, the size of the last checkpoint it believes the
witness cosigned (`old_size`) and the consistency proof from that size. The witness:
- refuses a note that is not a checkpoint of the submitter's own log, or not signed by a
  key the submitter holds ("bad_checkpoint", "bad_signature");
- answers "old_size_mismatch" with the size it knows when `old_size` is not it (the
  submitter retries from there; this is not misbehaviour);
- refuses a checkpoint smaller than the one it cosigned ("rollback"), one of the same
  size with another root, or one the proof does not show to extend it ("fork"): those
  are evidence against the submitter;
- otherwise remembers the new checkpoint (the first one it sees of a log is taken on
  trust) and cosigns it.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from nacl.signing import SigningKey, VerifyKey

from consortium.trust.audit.merkle import ProofError, verify_consistency
from consortium.trust.audit.notes import (
    Checkpoint,
    NoteError,
    NoteSignature,
    cosign,
    ed25519_key_hash,
    parse_note,
    verify_note,
)

MAX_PROOF_HASHES = 128
Verdict = Literal[
    "cosigned", "bad_checkpoint", "bad_signature", "old_size_mismatch", "rollback", "fork"
]
# Refusals that are evidence against the submitter: its log was rewritten or rolled back.
MISBEHAVIOUR: frozenset[str] = frozenset({"rollback", "fork"})


@dataclass(frozen=True)
class Seen:
    """The last checkpoint a witness cosigned of one log."""

    size: int
    root: bytes


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    detail: str = ""
    checkpoint: Checkpoint | None = None
    cosignature: NoteSignature | None = None
    known_size: int = 0  # the size the witness knows (for old_size_mismatch)

    @property
    def cosigned(self) -> bool:
        return self.verdict == "cosigned"


def encode_proof(proof: Sequence[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in proof]


def decode_proof(items: object) -> list[bytes]:
    """A proof as sent: a list of at most MAX_PROOF_HASHES base64 SHA-256 hashes; raises
    ValueError."""
    if not isinstance(items, list) or len(items) > MAX_PROOF_HASHES:
        raise ValueError(f"the proof is not a list of at most {MAX_PROOF_HASHES} hashes")
    out = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError("a proof hash is not a string")
        raw = base64.b64decode(item, validate=True)
        if len(raw) != 32:
            raise ValueError("a proof hash is not 32 bytes")
        out.append(raw)
    return out


def judge(
    *,
    origin: str,
    note: str,
    old_size: int,
    proof: Sequence[bytes],
    keys: Sequence[VerifyKey],
    seen: Seen | None,
    witness_name: str,
    witness_key: SigningKey,
    now: int,
) -> Judgement:
    """The witness's verdict on `note`, submitted by the owner of the log `origin`
    (authenticated by its message's signature), whose keys are `keys`; `seen` is what
    this witness last cosigned of that log."""
    try:
        body, signatures = parse_note(note)
        checkpoint = Checkpoint.parse(body)
    except NoteError as e:
        return Judgement("bad_checkpoint", str(e))
    if checkpoint.origin != origin:
        return Judgement("bad_checkpoint", f"a checkpoint of {checkpoint.origin}, not {origin}")
    if not signed_by(body, signatures, origin, keys):
        return Judgement("bad_signature", f"not signed by a key of {origin}")
    known = seen.size if seen is not None else 0
    if seen is not None and checkpoint.size < seen.size:
        return Judgement(
            "rollback",
            f"size {checkpoint.size} after {seen.size} was cosigned",
            checkpoint,
            known_size=known,
        )
    if old_size != known:
        return Judgement(
            "old_size_mismatch", f"the last size cosigned is {known}", known_size=known
        )
    if seen is not None:
        try:
            verify_consistency(seen.size, checkpoint.size, proof, seen.root, checkpoint.root)
        except (ProofError, ValueError) as e:
            return Judgement("fork", f"not consistent with size {seen.size}: {e}", checkpoint)
    elif proof:
        return Judgement("bad_checkpoint", "a first checkpoint comes with no proof")
    signature = cosign(checkpoint, witness_name, witness_key, now)
    return Judgement("cosigned", "", checkpoint, signature, known_size=checkpoint.size)


def signed_by(
    body: str, signatures: Sequence[NoteSignature], origin: str, keys: Sequence[VerifyKey]
) -> bool:
    """Whether one of `signatures` is the log `origin`'s signature of `body` by one of
    `keys`."""
    for key in keys:
        expected = ed25519_key_hash(origin, bytes(key))
        for sig in signatures:
            if sig.name == origin and sig.key_hash == expected:
                try:
                    verify_note(body, sig, origin, key)
                except NoteError:
                    continue
                return True
    return False
