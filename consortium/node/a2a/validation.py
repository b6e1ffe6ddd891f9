"""Checks on an incoming message that a2a-sdk does not make, run before anything acts on it.

a2a-sdk validates the fields the A2A proto marks required; it accepts content it later
fails to handle, which a client then sees as an internal error (gRPC UNKNOWN, JSON-RPC
-32603), and which, once stored in a task, breaks every later read of that task. This
module refuses such a request up front as invalid parameters (INVALID_ARGUMENT on gRPC,
-32602 on JSON-RPC), naming the field:

- a role other than ROLE_USER (a client speaks as the user; agents answer);
- a part without content: no text, raw, url or data set, or set but empty;
- a non-finite number (NaN, +-Infinity) in a Struct (message or request metadata, a
  part's metadata or data). protobuf's JSON form has no spelling for them, so the task
  could never be sent over JSON-RPC; the binary encoding carries them fine;
- a Struct or list nested deeper than MAX_STRUCT_DEPTH. protobuf's binary parser refuses
  messages nested more than 100 levels, and each level of a Struct costs three (Struct,
  map entry, Value): a message accepted deeper than about 30 levels is stored in a task
  that can no longer be read back or sent to a gRPC client, and upb fails to copy it;
- a negative `configuration.history_length`;
- a trust report (`metadata.consortium.mode` "trust_report") that names a task or asks
  for push notifications: it is a message-only exchange and never becomes a task.

It walks only the Structs and the parts, not the whole message, so it stays cheap on the
path of every message (benchmarks/messaging.py).
"""

from __future__ import annotations

import math

from a2a.types import a2a_pb2
from a2a.utils.errors import InvalidParamsError
from google.protobuf import struct_pb2

# Levels of nested objects and lists in a Struct or Value (a flat object is 1). The
# deepest place a client's Struct ends up is a task's history inside a StreamResponse,
# at message depth 6 + 3 per level: 20 levels stay well inside protobuf's 100.
MAX_STRUCT_DEPTH = 20


class _Invalid(Exception):
    """A bad value somewhere in a Struct; `path` is filled in while unwinding."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path: list[str] = []


def validate_send_request(params: a2a_pb2.SendMessageRequest) -> None:
    """Raises InvalidParamsError, naming the field, if the request carries anything the
    node would refuse later or could not store and serve; returns None otherwise."""
    if not params.HasField("message"):
        raise InvalidParamsError(message="message is required")
    message = params.message
    if message.role != a2a_pb2.ROLE_USER:
        role = a2a_pb2.Role.Name(message.role) if message.role in a2a_pb2.Role.values() else ""
        raise InvalidParamsError(
            message=f"message.role must be ROLE_USER, not {role or int(message.role)}"
        )
    if not message.parts:
        raise InvalidParamsError(message="message.parts must not be empty")
    for i, part in enumerate(message.parts):
        _check_part(part, f"message.parts[{i}]")
    if message.HasField("metadata"):
        _check_struct_field(message.metadata, "message.metadata")
    if params.HasField("metadata"):
        _check_struct_field(params.metadata, "metadata")
    if params.HasField("configuration") and params.configuration.history_length < 0:
        raise InvalidParamsError(message="configuration.history_length must not be negative")
    mode = requested_mode(message)
    if mode in MESSAGE_ONLY_MODES and (
        message.task_id or params.configuration.HasField("task_push_notification_config")
    ):
        what = {"trust_report": "a trust report", "cosign": "a checkpoint to cosign"}.get(
            mode, "a proof request"
        )
        raise InvalidParamsError(
            message=f"{what} is a message-only exchange: no task_id, no push notification"
        )


# Members' messages answered with one Message, before any other option is read.
MESSAGE_ONLY_MODES = frozenset({"trust_report", "cosign", "proof"})


def requested_mode(message: a2a_pb2.Message) -> str:
    """metadata.consortium.mode when it is a string, else "" (cheap: no full parse)."""
    options = message.metadata.fields.get("consortium")
    if options is None or options.WhichOneof("kind") != "struct_value":
        return ""
    mode = options.struct_value.fields.get("mode")
    if mode is None or mode.WhichOneof("kind") != "string_value":
        return ""
    return str(mode.string_value)


def _check_part(part: a2a_pb2.Part, field: str) -> None:
    kind = part.WhichOneof("content")
    if kind is None:
        raise InvalidParamsError(message=f"{field} has no content (text, raw, url or data)")
    if kind == "data":
        if part.data.WhichOneof("kind") is None:
            raise InvalidParamsError(message=f"{field}.data is empty")
        try:
            _check_value(part.data, 0)
        except _Invalid as e:
            raise _params_error(e, f"{field}.data") from None
    elif not getattr(part, kind):
        raise InvalidParamsError(message=f"{field}.{kind} is empty")
    if part.HasField("metadata"):
        _check_struct_field(part.metadata, f"{field}.metadata")


def _check_struct_field(struct: struct_pb2.Struct, field: str) -> None:
    try:
        _check_struct(struct, 1)
    except _Invalid as e:
        raise _params_error(e, field) from None


def _params_error(e: _Invalid, field: str) -> InvalidParamsError:
    return InvalidParamsError(message=f"{field}{''.join(reversed(e.path))}: {e.problem}")


# Recursion is bounded by MAX_STRUCT_DEPTH: the walk stops at the first level beyond it.
def _check_struct(struct: struct_pb2.Struct, depth: int) -> None:
    if depth > MAX_STRUCT_DEPTH:
        raise _Invalid(f"nested deeper than {MAX_STRUCT_DEPTH} levels")
    for key, value in struct.fields.items():
        try:
            _check_value(value, depth)
        except _Invalid as e:
            e.path.append(f".{key}")
            raise


def _check_value(value: struct_pb2.Value, depth: int) -> None:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        if not math.isfinite(value.number_value):
            raise _Invalid(f"{value.number_value} is not a finite number (no JSON form)")
    elif kind == "struct_value":
        _check_struct(value.struct_value, depth + 1)
    elif kind == "list_value":
        if depth + 1 > MAX_STRUCT_DEPTH:
            raise _Invalid(f"nested deeper than {MAX_STRUCT_DEPTH} levels")
        for i, item in enumerate(value.list_value.values):
            try:
                _check_value(item, depth + 1)
            except _Invalid as e:
                e.path.append(f"[{i}]")
                raise
