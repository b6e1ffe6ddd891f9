"""Per-request options a client puts in a message's metadata["consortium"]."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from a2a.types import a2a_pb2
from google.protobuf.json_format import MessageToDict
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

METADATA_KEY = "consortium"


class Feedback(BaseModel):
    """The outcome of an earlier routed task, from its owner: whether the local answer
    was adequate, or which option was correct."""

    model_config = ConfigDict(extra="forbid")
    task_id: Annotated[str, Field(min_length=1, max_length=200)]
    adequate: bool | None = None
    correct: Annotated[int, Field(ge=0, le=9)] | None = None

    @model_validator(mode="after")
    def _one(self) -> Feedback:
        if (self.adequate is None) == (self.correct is None):
            raise ValueError("give exactly one of adequate and correct")
        return self


class RequestOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_tokens: int | None = Field(default=None, ge=1, le=32768)
    temperature: float | None = Field(default=None, ge=0.0, le=5.0)
    # Ask this member of the federation instead of the local model.
    peer: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")] | None = None
    # A multiple-choice task: the options the answer must be one of.
    choices: (
        Annotated[
            list[Annotated[str, Field(min_length=1, max_length=2000)]],
            Field(min_length=2, max_length=10),
        ]
        | None
    ) = None
    # "score": return the model's score of every option at once, as a Message (a member
    # of a vote or debate asks its peers this way); "answer": a task, routed;
    # "trust_report": a member's signed trust report in a data part (node/reports.py),
    # acknowledged with one Message, never a task and never shown to the model;
    # "cosign": a member's audit-log checkpoint for this node to witness, "proof": a
    # member's request for proofs from this node's log (node/witnessing.py), answered
    # the same way.
    mode: Literal["answer", "score", "trust_report", "cosign", "proof"] = "answer"
    # Shown before the answer when scoring (e.g. other members' answers in a debate).
    context: Annotated[str, Field(max_length=8000)] = ""
    # Overrides of the node's [routing]: a router spec, or a group from [groups].
    route: Annotated[str, Field(max_length=200)] | None = None
    # Budget of this task.
    max_cost: Annotated[float, Field(ge=0)] | None = None
    deadline_s: Annotated[float, Field(gt=0, le=3600)] | None = None
    max_peers: Annotated[int, Field(ge=0, le=64)] | None = None
    # Not a task: the outcome of an earlier one, recorded for training the routing policy.
    feedback: Feedback | None = None

    @model_validator(mode="after")
    def _one_route(self) -> RequestOptions:
        # Each names who answers; taking one silently would answer a question not asked.
        if self.peer is not None and self.route is not None:
            raise ValueError(
                "peer and route contradict each other: give peer (one member answers) "
                "or route (a router or group decides), not both"
            )
        return self


def forwarded(options: RequestOptions) -> dict[str, Any]:
    """The options a node sends with a task it passes to a peer: everything set but the
    route it took here (`peer`, `route`)."""
    return options.model_dump(exclude_none=True, exclude={"peer", "route"})


def request_options(message: a2a_pb2.Message | None) -> RequestOptions:
    if message is None or METADATA_KEY not in message.metadata:
        return RequestOptions()
    raw = MessageToDict(message.metadata).get(METADATA_KEY)
    if not isinstance(raw, dict):
        raise ValueError(f"metadata.{METADATA_KEY} must be an object")
    try:
        return RequestOptions.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join([f"metadata.{METADATA_KEY}", *(str(p) for p in err["loc"])])
        # A validator's own message, without pydantic's "Value error, " before it.
        what = str(err["ctx"]["error"]) if err["type"] == "value_error" else err["msg"]
        raise ValueError(f"{where}: {what}") from None
