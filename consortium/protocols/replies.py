"""What a node's direct replies carry in `metadata["consortium"]`: a scoring request's
scores, and the outcome of feedback on a routed task. Either carries `error` instead when
the request was refused."""

from __future__ import annotations

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
