"""What a node's direct replies carry in `metadata["consortium"]`: a scoring request's
scores, the outcome of feedback on a routed task, the acknowledgement of a member's
trust report, and a witness's answer to a member's audit-log checkpoint. Each carries
`error` instead when the request was refused (a witness: its verdict)."""

from __future__ import annotations

from typing import Any

from consortium.protocols.multiple_choice import OptionScores
from consortium.protocols.provenance import WireModel


class ScoresOfOptions(WireModel):
    """Per option: the log-likelihood of its continuation, and the continuation's length
    in tokens and characters (for normalising)."""

    logprobs: list[float]
    tokens: list[int]
    chars: list[int]

    @classmethod
    def of(cls, scores: OptionScores) -> ScoresOfOptions:
        return cls(
            logprobs=list(scores.logprobs), tokens=list(scores.tokens), chars=list(scores.chars)
        )


class ScoresReply(WireModel):
    org: str
    model: str | None = None
    # Prompt and continuation tokens the scoring took.
    tokens: int | None = None
    scores: ScoresOfOptions | None = None
    error: str | None = None


class FeedbackReply(WireModel):
    org: str
    task_id: str
    error: str | None = None
    local_adequate: bool | None = None
    label_source: str | None = None


class ReportAck(WireModel):
    """A trust report received: `accepted` (kept and folded in), with the entries used
    and those dropped per reason; or refused, with `reason` (a code) and `error`."""

    org: str
    accepted: bool
    used: int | None = None
    dropped: dict[str, int] | None = None
    reason: str | None = None
    error: str | None = None


class CosignReply(WireModel):
    """A witness's answer to a checkpoint (trust/audit/witness.py): its `verdict`
    ("cosigned", or why not), the cosignature line when cosigned, and the size it knows
    of the log (what a retry after "old_size_mismatch" starts from)."""

    org: str
    verdict: str
    detail: str | None = None
    cosignature: str | None = None
    known_size: int = 0


class ProofReply(WireModel):
    """Proofs from a member's audit log (node/witnessing.py): a log receipt of one of the
    asker's requests, or a consistency proof with the newer checkpoint's note; or
    `error`."""

    org: str
    receipt: dict[str, Any] | None = None
    checkpoint: str | None = None
    proof: list[str] | None = None
    error: str | None = None
