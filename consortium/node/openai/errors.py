"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` with the HTTP
status OpenAI uses, raised anywhere in the endpoint as `OpenAIError` and rendered once;
also the request guard's refusals (too large, wrong content type, not JSON) in that shape.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError
from starlette.responses import Response

from consortium.errors import NodeOverloaded, StorageUnavailable
from consortium.node.a2a.http_guard import Refusal

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """JSON with every non-ASCII character escaped: a model's text that holds a lone
    surrogate still encodes."""
    return Response(
        json.dumps(body, separators=(",", ":")),
        status_code=status,
        media_type="application/json",
        headers=dict(headers or {}),
    )


class OpenAIError(Exception):
    """An error response: HTTP `status`, and OpenAI's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> Response:
        return json_response(self.body(), self.status, self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def unauthorized(message: str) -> OpenAIError:
    return OpenAIError(401, message, code="invalid_api_key")


def model_not_found(model: str) -> OpenAIError:
    return OpenAIError(
        404,
        f"The model {model!r} does not exist on this node: GET /v1/models lists the models",
        param="model",
        code="model_not_found",
    )


def rate_limited(message: str, retry_after_s: float, kind: str) -> OpenAIError:
    """429; `kind` is OpenAI's error type: "requests" or "tokens"."""
    seconds = max(1, math.ceil(retry_after_s))
    return OpenAIError(
        429,
        f"{message}; try again in {seconds} s",
        type=kind,
        code="rate_limit_exceeded",
        headers={"Retry-After": str(seconds)},
    )


def overloaded(error: NodeOverloaded) -> OpenAIError:
    """429 for a request the node refused for load (errors.NodeOverloaded), with
    Retry-After; `code` "overloaded", `type` its reason ("overloaded", "busy",
    "queue_full", "queue_timeout")."""
    seconds = max(1, math.ceil(error.retry_after_s))
    return OpenAIError(
        429,
        f"{error}; try again in {seconds} s",
        type=error.reason,
        code="overloaded",
        headers={"Retry-After": str(seconds)},
    )


def server_error(message: str, *, unavailable: bool = False) -> OpenAIError:
    if unavailable:
        return OpenAIError(503, message, type=SERVER_ERROR, code="service_unavailable")
    return OpenAIError(500, message, type=SERVER_ERROR)


def storage_unavailable(error: StorageUnavailable) -> OpenAIError:
    """503: this node cannot write (disk full, read-only); nothing was accepted."""
    return OpenAIError(503, str(error), type=SERVER_ERROR, code="storage_unavailable")


def param_of(loc: Sequence[int | str]) -> str:
    """A pydantic location as OpenAI names a parameter: `messages[0].content[1].type`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def from_validation(error: ValidationError) -> OpenAIError:
    """The first problem pydantic found, naming the field."""
    first = error.errors()[0]
    # A union's branch name (e.g. "str", "list[str]") is not part of the field's path.
    loc = [p for p in first["loc"] if isinstance(p, int) or not _branch(p)]
    param = param_of(loc) or None
    message = first["msg"].removeprefix("Value error, ")
    where = f"{param}: " if param else ""
    return bad_request(f"{where}{message}", param=param)


def _branch(part: str) -> bool:
    return "[" in part or part in {"str", "int", "float", "bool", "list", "dict", "none"}


_GUARD_STATUS = {"too_large": 413, "content_type": 415, "not_json": 400}


def guard_refusal(refusal: Refusal) -> Response:
    """The request guard's refusal of a /v1 request, in OpenAI's shape."""
    status = _GUARD_STATUS[refusal.problem]
    message = refusal.message
    if refusal.problem == "not_json":
        message = f"We could not parse the JSON body of your request: {message}"
    return OpenAIError(status, message, code=refusal.problem).response()
