"""The audit hooks: what a node records of every message it exchanges with another
organization, of every admission refusal, and of its own decisions, so that an auditor
can later rebuild and check every hop.

The two choke points every cross-organization message passes call these hooks, so no
path can forget them: the `Signer` (trust.signing) tells `sent` of every message it signs
for another organization, before it is sent; the `MessageVerifier` (trust.admission)
tells `received` of every message that passed admission, before anything acts on it,
and `refused` of every one it refused. The node tells `record` of its routing
decisions, trust state changes, and the roster and policy versions it loads.

`AuditLog` is that interface; `NoOpAuditLog` records nothing, and is what a node without
an audit log is wired with, so nothing asks whether auditing is on. The log itself
(Merkle-tree leaves with signed checkpoints, in the node's storage: an SQLite file, or
the PostgreSQL database its replicas share) is `trust.audit.log`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Scalar = str | int | float | bool
HopKind = Literal["request", "answer", "event", "call"]


@dataclass(frozen=True)
class Hop:
    """One signed message (or call proof) between two organizations, as the log keeps
    it: identifiers and digests, never content. `digest` is the RFC 8785 digest of the
    signed form (what an answer binds to), `jws` its detached signature."""

    kind: HopKind
    peer: str
    message_id: str
    kid: str
    digest: str
    jws: str
    request_digest: str = ""
    task_id: str = ""
    method: str = ""  # a call proof's A2A method
    # An answer's log receipt (trust.audit.inclusion) as it came, and what its check
    # found ("included", or why not); empty when the answer carried none.
    inclusion: str = ""
    receipt: Mapping[str, Any] | None = None


def log_origin(federation_id: str, org_id: str) -> str:
    """The name of an organization's log (a checkpoint's origin line and its signed-note
    key name)."""
    return f"consortium/{federation_id}/{org_id}"


class AuditLog(Protocol):
    """Where a node records its exchanges with other organizations and its decisions."""

    def sent(self, hop: Hop) -> None:
        """A message this organization signed for `hop.peer`: recorded before it leaves."""
        ...

    def received(self, hop: Hop) -> None:
        """A message from `hop.peer` that passed admission: recorded before anything acts
        on it."""
        ...

    def refused(self, *, sender: str, message_id: str, reason: str, what: str) -> None:
        """A message or call refused at admission. `sender` is what it claimed (not
        authenticated; '' when unreadable), `what` "message" or "call"."""
        ...

    def record(
        self,
        kind: str,
        *,
        peer: str = "",
        task_id: str = "",
        detail: Mapping[str, Scalar] | None = None,
    ) -> None:
        """A decision or state change of this node: "route", "trust", "roster",
        "policy", "witness". `detail` holds identifiers and numbers, never text a user
        wrote."""
        ...


class NoOpAuditLog:
    """Records nothing."""

    def sent(self, hop: Hop) -> None:
        pass

    def received(self, hop: Hop) -> None:
        pass

    def refused(self, *, sender: str, message_id: str, reason: str, what: str) -> None:
        pass

    def record(
        self,
        kind: str,
        *,
        peer: str = "",
        task_id: str = "",
        detail: Mapping[str, Scalar] | None = None,
    ) -> None:
        pass
