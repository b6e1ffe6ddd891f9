"""Per-request options a client puts in a message's metadata["consortium"]."""

from __future__ import annotations

from typing import Annotated

from a2a.types import a2a_pb2
from google.protobuf.json_format import MessageToDict
from pydantic import BaseModel, ConfigDict, Field, ValidationError

METADATA_KEY = "consortium"


class RequestOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_tokens: int | None = Field(default=None, ge=1, le=32768)
    temperature: float | None = Field(default=None, ge=0.0, le=5.0)
    # Ask this member of the federation instead of the local model.
    peer: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")] | None = None


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
        loc = ".".join(str(p) for p in err["loc"])
        raise ValueError(f"metadata.{METADATA_KEY}.{loc}: {err['msg']}") from None
