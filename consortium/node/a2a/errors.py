"""A2A errors for refused cross-organization messages, and their wire codes.

The A2A specification (3.3.2) names gRPC UNAUTHENTICATED / PERMISSION_DENIED and leaves
JSON-RPC to a custom error; Consortium uses -32040 and -32041 (the implementation-defined
server-error range), registered in a2a-sdk's JSON-RPC error tables at import.

A node that cannot write its data (`StorageUnavailable`: disk full, read-only) answers
gRPC UNAVAILABLE / JSON-RPC -32050 with the reason STORAGE_UNAVAILABLE, so a client (a
peer's node too) can tell "try another node" from a refusal.

A refusal tells the sender only what `Rejected` lets out (`external_*`): a non-member, an
unknown key and a bad signature all read "signature not accepted", so the error does not
reveal who belongs to the federation.
"""

from __future__ import annotations

from a2a.server.jsonrpc_models import JSONRPCError
from a2a.server.request_handlers.response_helpers import EXCEPTION_MAP
from a2a.utils.errors import (
    A2A_ERROR_REASONS,
    A2A_REASON_TO_ERROR,
    JSON_RPC_ERROR_CODE_MAP,
    A2AError,
)

from consortium.errors import StorageUnavailable
from consortium.trust.refusals import Rejected

JSONRPC_UNAUTHENTICATED = -32040
JSONRPC_PERMISSION_DENIED = -32041
JSONRPC_STORAGE_UNAVAILABLE = -32050
STORAGE_UNAVAILABLE_REASON = "STORAGE_UNAVAILABLE"


class UnauthenticatedError(A2AError):
    message = "Unauthenticated"


class PermissionDeniedError(A2AError):
    message = "Permission denied"


class StorageUnavailableError(A2AError):
    """This node cannot write its data now; another node, or this one later, can serve."""

    message = "this node cannot write"


for _error, _code in (
    (UnauthenticatedError, JSONRPC_UNAUTHENTICATED),
    (PermissionDeniedError, JSONRPC_PERMISSION_DENIED),
    (StorageUnavailableError, JSONRPC_STORAGE_UNAVAILABLE),
):
    JSON_RPC_ERROR_CODE_MAP.setdefault(_error, _code)
    EXCEPTION_MAP.setdefault(_error, JSONRPCError)
A2A_ERROR_REASONS.setdefault(StorageUnavailableError, STORAGE_UNAVAILABLE_REASON)
A2A_REASON_TO_ERROR.setdefault(STORAGE_UNAVAILABLE_REASON, StorageUnavailableError)


def from_storage(error: StorageUnavailable, node: str = "") -> StorageUnavailableError:
    """The A2A error for a storage fault, naming `node` (a peer's user reads it too)."""
    named = StorageUnavailable(error.problem, node=node)
    return StorageUnavailableError(message=str(named), data={"reason": error.problem})


def from_rejection(rejected: Rejected) -> A2AError:
    """The A2A error for a refused message or call: its external reason, never the
    payload."""
    code = rejected.external_code
    cls = UnauthenticatedError if code == "UNAUTHENTICATED" else PermissionDeniedError
    return cls(
        message=f"message refused: {rejected.external_message}",
        data={"reason": rejected.external_reason},
    )
