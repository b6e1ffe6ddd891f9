"""The project's one error hierarchy.

Every error a user can cause or meet derives from `ConsortiumError`. The edges map
them: the CLI to an exit code and one clear line, the servers to gRPC status codes
and A2A / JSON-RPC errors.
"""

from __future__ import annotations


class ConsortiumError(Exception):
    """Base class of every error Consortium raises on purpose."""

    exit_code: int = 1


class ConfigError(ConsortiumError):
    """A configuration file, CLI argument or key file is missing or invalid."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None):
        self.path = path
        self.key = key
        where = ""
        if path:
            where = f"{path}: "
        if key:
            where += f"{key}: "
        super().__init__(f"{where}{message}")


class ModelError(ConsortiumError):
    """A model file is missing or corrupt, or the model failed while generating."""

    exit_code = 3


class NodeUnavailableError(ConsortiumError):
    """A node could not be reached, or did not answer in time."""

    exit_code = 4


class NodeOverloaded(NodeUnavailableError):
    """A node refuses new work for now, before doing any: it holds as many requests as it
    may (`reason` "overloaded"), its model's queue is longer than the caller can wait
    (`reason` "busy": the estimated wait exceeds the caller's deadline or the node's
    bound), its model's queue is full (`reason` "queue_full": [model] max_queue), or the
    request waited for the model past [model] queue_timeout_s (`reason` "queue_timeout").
    Nothing was done, so the request may go elsewhere at once, or come back after
    `retry_after_s`. Over the wire: gRPC RESOURCE_EXHAUSTED, HTTP 429 with Retry-After,
    JSON-RPC -32042."""

    def __init__(
        self, message: str, *, retry_after_s: float = 1.0, reason: str = "overloaded"
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.reason = reason


class QuorumError(NodeUnavailableError):
    """Too few of a group's members answered (the others could not be asked, refused, or
    answered what failed verification) to make the group's quorum."""


class TaskError(ConsortiumError):
    """A task ended in a state other than completed (what a client sees: `consortium ask`
    and the A2A client raise it)."""

    exit_code = 5


class RequestRejected(ConsortiumError):
    """A node refuses to act on a request as given: a route, router, group or member it
    cannot serve, a budget that allows nothing, a caller it cannot admit. The task fails
    with this message; the node keeps serving."""

    exit_code = 6


class UnsupportedByModel(RequestRejected):
    """A request asks the model for something its backend cannot do (JSON-constrained
    generation without a grammar, token log-probabilities the server does not return)."""


class InvalidResponseFormat(RequestRejected):
    """A request's response_format cannot be honoured as given: a json_schema that is not
    JSON, or that cannot be turned into a grammar."""


class BudgetError(RequestRejected):
    """A request's budget (tokens, calls, cost) allows no call to any member."""


class RateLimited(ConsortiumError):
    """A caller has spent one of its limits (node.limits): `kind` is "requests",
    "tokens" or "concurrency"; it may try again after `retry_after_s` seconds."""

    exit_code = 8

    def __init__(self, message: str, *, kind: str, retry_after_s: float) -> None:
        self.kind = kind
        self.retry_after_s = retry_after_s
        super().__init__(message)


class UntrustedAnswer(ConsortiumError):
    """A peer's answer (or a message in it) failed verification: a bad or missing
    signature, the wrong sender, a digest that does not bind it to the request. Unlike
    NodeUnavailableError, the peer answered; what it said cannot be believed."""

    exit_code = 7


class PromptTooLongError(ModelError):
    """The prompt does not fit the model's context window."""


STORAGE_PROBLEMS = {
    "disk_full": "disk full",
    "read_only": "its storage is read-only",
    "io_error": "a storage I/O error",
    "no_permission": "its data directory is not writable by this user",
    "database_unavailable": "its database is unreachable",
    "database_busy": "its database has no free connection",
    "database_auth": "its database refused its credentials (user or password)",
    "database_missing": "its database does not exist",
}


class StorageUnavailable(ConsortiumError):
    """This node cannot write its data: the disk or quota is full (`problem` "disk_full"),
    the file system is read-only ("read_only"), or it fails ("io_error"). Nothing is
    acknowledged that was not stored: the request fails with this error (gRPC UNAVAILABLE,
    HTTP 503) and the node keeps serving; it recovers by itself once a write succeeds.
    `where`: the directory, when a node refuses to start; `node`: the node's name, in
    what is told to other nodes ("node globex cannot write: disk full")."""

    exit_code = 8

    def __init__(self, problem: str, *, where: str = "", node: str = "") -> None:
        self.problem = problem
        self.where = where
        what = STORAGE_PROBLEMS.get(problem, problem.replace("_", " "))
        prefix = f"{where}: " if where else ""
        who = f"node {node}" if node else "this node"
        super().__init__(f"{prefix}{who} cannot write: {what}")
