"""A2A errors for refused cross-organization messages, and their wire codes.

The A2A specification (3.3.2) names gRPC UNAUTHENTICATED / PERMISSION_DENIED and leaves
JSON-RPC to a custom error; Consortium uses -32040 and -32041 (the implementation-defined
server-error range), registered in a2a-sdk's JSON-RPC error tables at import. A request
refused for load (`overloaded`: errors.NodeOverloaded) is gRPC RESOURCE_EXHAUSTED and
JSON-RPC -32042, with a google.rpc.ErrorInfo (reason RESOURCE_EXHAUSTED) whose metadata
name why ("overloaded" or "busy") and the seconds to wait (`retry_after_s`).

A refusal tells the sender only what `Rejected` lets out (`external_*`): a non-member, an
unknown key and a bad signature all read "signature not accepted", so the error does not
reveal who belongs to the federation.
"""

from __future__ import annotations

import math

from a2a.server.jsonrpc_models import JSONRPCError
from a2a.server.request_handlers.response_helpers import EXCEPTION_MAP
from a2a.utils.errors import A2A_ERROR_REASONS, JSON_RPC_ERROR_CODE_MAP, A2AError

from consortium.errors import NodeOverloaded
from consortium.trust.refusals import Rejected

JSONRPC_UNAUTHENTICATED = -32040
JSONRPC_PERMISSION_DENIED = -32041
JSONRPC_RESOURCE_EXHAUSTED = -32042


class UnauthenticatedError(A2AError):
    message = "Unauthenticated"


class PermissionDeniedError(A2AError):
    message = "Permission denied"


class ResourceExhaustedError(A2AError):
    """Refused for load, before any work; `data` (ErrorInfo metadata, strings):
    {"reason", "retry_after_s"}."""

    message = "Resource exhausted"


A2A_ERROR_REASONS.setdefault(ResourceExhaustedError, "RESOURCE_EXHAUSTED")


for _error, _code in (
    (UnauthenticatedError, JSONRPC_UNAUTHENTICATED),
    (PermissionDeniedError, JSONRPC_PERMISSION_DENIED),
    (ResourceExhaustedError, JSONRPC_RESOURCE_EXHAUSTED),
):
    JSON_RPC_ERROR_CODE_MAP.setdefault(_error, _code)
    EXCEPTION_MAP.setdefault(_error, JSONRPCError)


def from_rejection(rejected: Rejected) -> A2AError:
    """The A2A error for a refused message or call: its external reason, never the
    payload."""
    code = rejected.external_code
    cls = UnauthenticatedError if code == "UNAUTHENTICATED" else PermissionDeniedError
    return cls(
        message=f"message refused: {rejected.external_message}",
        data={"reason": rejected.external_reason},
    )


def overloaded(error: NodeOverloaded) -> ResourceExhaustedError:
    """The A2A error for a request the node refused for load."""
    return ResourceExhaustedError(
        message=str(error),
        data={
            "reason": error.reason,
            "retry_after_s": str(max(1, math.ceil(error.retry_after_s))),
        },
    )
