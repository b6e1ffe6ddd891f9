"""A2A errors for refused callers and cross-organization messages, and their wire codes.

The A2A specification (3.3.2) names gRPC UNAUTHENTICATED / PERMISSION_DENIED and leaves
JSON-RPC to a custom error; Consortium uses -32040 and -32041 (the implementation-defined
server-error range), and -32042 for a caller over its limits or a node refusing for load
(gRPC RESOURCE_EXHAUSTED), registered in a2a-sdk's error tables at import. Each carries a
`google.rpc.ErrorInfo` (domain a2a-protocol.org, as a2a-sdk's own errors) whose `reason`
names the error — UNAUTHENTICATED, PERMISSION_DENIED, RATE_LIMIT_EXCEEDED (a caller over
its `[limits]`), RESOURCE_EXHAUSTED (the node refusing for load: errors.NodeOverloaded) —
rather than a2a-sdk's UNKNOWN_ERROR for a class it does not know, and whose metadata is
the error's `data` (strings): the refusal's reason (`invalid_key`, `no_credentials`,
`tls_mismatch`, `bad_signature`..., or for load `overloaded` / `busy` / `queue_full` /
`queue_timeout`), the limit, and the seconds
to wait (`retryAfterSeconds`, also sent as a RetryInfo over gRPC).

A node that cannot write its data (`StorageUnavailable`: disk full, read-only) answers
gRPC UNAVAILABLE / JSON-RPC -32050 with the reason STORAGE_UNAVAILABLE, so a client (a
peer's node too) can tell "try another node" from a refusal.

A refusal tells the sender only what `Rejected` lets out (`external_*`): a non-member, an
unknown key and a bad signature all read "signature not accepted", so the error does not
reveal who belongs to the federation.
"""

from __future__ import annotations

import math

from a2a.server.jsonrpc_models import JSONRPCError
from a2a.server.request_handlers.response_helpers import EXCEPTION_MAP
from a2a.utils.errors import (
    A2A_ERROR_MAPPING,
    A2A_ERROR_REASONS,
    A2A_REASON_TO_ERROR,
    JSON_RPC_ERROR_CODE_MAP,
    A2AError,
    ErrorMapping,
)

from consortium.errors import NodeOverloaded, RateLimited, StorageUnavailable
from consortium.trust.refusals import Rejected

JSONRPC_UNAUTHENTICATED = -32040
JSONRPC_PERMISSION_DENIED = -32041
JSONRPC_RATE_LIMITED = -32042
JSONRPC_RESOURCE_EXHAUSTED = -32042
JSONRPC_STORAGE_UNAVAILABLE = -32050
STORAGE_UNAVAILABLE_REASON = "STORAGE_UNAVAILABLE"


class UnauthenticatedError(A2AError):
    message = "Unauthenticated"


class PermissionDeniedError(A2AError):
    message = "Permission denied"


class RateLimitedError(A2AError):
    """A caller over one of its limits; `data`: {"limit", "retryAfterSeconds"}."""

    message = "Rate limit exceeded"


class ResourceExhaustedError(A2AError):
    """Refused for load, before any work; `data`: {"reason", "retryAfterSeconds"}."""

    message = "Resource exhausted"


class StorageUnavailableError(A2AError):
    """This node cannot write its data now; another node, or this one later, can serve."""

    message = "this node cannot write"


_MAPPINGS: tuple[tuple[type[A2AError], int, ErrorMapping], ...] = (
    (
        UnauthenticatedError,
        JSONRPC_UNAUTHENTICATED,
        ErrorMapping(401, "UNAUTHENTICATED", "UNAUTHENTICATED"),
    ),
    (
        PermissionDeniedError,
        JSONRPC_PERMISSION_DENIED,
        ErrorMapping(403, "PERMISSION_DENIED", "PERMISSION_DENIED"),
    ),
    (
        RateLimitedError,
        JSONRPC_RATE_LIMITED,
        ErrorMapping(429, "RESOURCE_EXHAUSTED", "RATE_LIMIT_EXCEEDED"),
    ),
    (
        ResourceExhaustedError,
        JSONRPC_RESOURCE_EXHAUSTED,
        ErrorMapping(429, "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED"),
    ),
    (
        StorageUnavailableError,
        JSONRPC_STORAGE_UNAVAILABLE,
        ErrorMapping(503, "UNAVAILABLE", STORAGE_UNAVAILABLE_REASON),
    ),
)
for _error, _code, _mapping in _MAPPINGS:
    JSON_RPC_ERROR_CODE_MAP.setdefault(_error, _code)
    EXCEPTION_MAP.setdefault(_error, JSONRPCError)
    A2A_ERROR_MAPPING.setdefault(_error, _mapping)
    # Built from A2A_ERROR_MAPPING at a2a-sdk's import: both bindings read the reason here.
    A2A_ERROR_REASONS.setdefault(_error, _mapping.reason)
# An origin's a2a client raises it for a peer's storage fault (the peer's words kept).
A2A_REASON_TO_ERROR.setdefault(STORAGE_UNAVAILABLE_REASON, StorageUnavailableError)


def from_rate_limited(limited: RateLimited) -> RateLimitedError:
    """The A2A error for a caller over one of its limits: the limit and when to retry."""
    seconds = max(1, math.ceil(limited.retry_after_s))
    return RateLimitedError(
        message=f"{limited}; try again in {seconds} s",
        data={"limit": limited.kind, "retryAfterSeconds": str(seconds)},
    )


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


def overloaded(error: NodeOverloaded) -> ResourceExhaustedError:
    """The A2A error for a request the node refused for load."""
    return ResourceExhaustedError(
        message=str(error),
        data={
            "reason": error.reason,
            "retryAfterSeconds": str(max(1, math.ceil(error.retry_after_s))),
        },
    )
