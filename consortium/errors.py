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


class UntrustedAnswer(ConsortiumError):
    """A peer's answer (or a message in it) failed verification: a bad or missing
    signature, the wrong sender, a digest that does not bind it to the request. Unlike
    NodeUnavailableError, the peer answered; what it said cannot be believed."""

    exit_code = 7


class PromptTooLongError(ModelError):
    """The prompt does not fit the model's context window."""
