"""Logging that cannot be forged and never carries message bodies.

`safe()` escapes an untrusted identifier (a message id, a claimed sender, a task id) before
it goes into a log line: control characters, newlines and ANSI escapes become visible
escapes, and long values are cut, so a caller cannot write a fake log line.

`JsonRpcClientErrors` (on a2a-sdk's JSON-RPC dispatcher's logger, installed with the
HTTP binding) keeps a client's mistake out of the errors: one WARNING line with the
request id and error code, never the body.

`install()` sets up the process's logging: Consortium's own loggers at the configured
level; third-party loggers never below INFO; a2a-sdk's at WARNING with their arguments
withheld, because the SDK writes whole request bodies (DEBUG) and parse errors quoting
them (WARNING) — Consortium logs identifiers, never text.
"""

from __future__ import annotations

import json
import logging
import sys

# Presidio logs the words around each match at DEBUG: capped at WARNING like the SDKs.
# Alembic logs each store's migration context at INFO on every start (the node says in
# one line which stores it brought up to date).
SDK_LOGGERS = ("a2a", "presidio-analyzer", "presidio-anonymizer", "alembic")
LIMIT = 96


def safe(value: object, limit: int = LIMIT) -> str:
    """`value` as printable ASCII with every control character escaped, at most `limit`
    characters (plus a marker when cut)."""
    text = str(value)
    cut = len(text) > limit
    escaped = json.dumps(text[:limit])[1:-1]
    return escaped + ("...[cut]" if cut else "")


class WithholdArguments(logging.Filter):
    """Keeps a record's fixed message, drops its arguments and exception text."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] in SDK_LOGGERS:
            if record.args:
                record.msg = f"{record.msg} [arguments withheld]"
                record.args = None
            if record.exc_info and record.exc_info[0] is not None:
                record.msg = f"{record.msg} ({record.exc_info[0].__name__}; details withheld)"
            record.exc_info = None
            record.exc_text = None
        return True


def install(level: str) -> None:
    """Logging for a Consortium process, on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(WithholdArguments())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    numeric = getattr(logging, level)
    root.setLevel(max(numeric, logging.INFO))
    logging.getLogger("consortium").setLevel(numeric)
    for name in SDK_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))


JSONRPC_DISPATCHER = "a2a.server.routes.jsonrpc_dispatcher"
_INTERNAL_ERROR = -32603
# The dispatcher's records of a request it refuses, each followed by REQUEST_ERROR.
_CLIENT_MISTAKES = frozenset(
    {
        "Failed to validate base JSON-RPC request",
        "Failed to parse request params",
        "Unhandled method: %s",
    }
)
_REQUEST_BODY = "Request body: %s"
_REQUEST_ERROR = "Request Error (ID: %s): Code=%s, Message='%s'%s"


class JsonRpcClientErrors(logging.Filter):
    """a2a-sdk's JSON-RPC dispatcher logs a request it cannot parse at ERROR, with a
    traceback and a parse error that can quote the body, then its error response: here
    the first goes to DEBUG without its details, the second becomes one line with the
    request id and the error code only, at WARNING (ERROR for an internal error). The
    body it logs at DEBUG is never logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == _REQUEST_BODY:
            return False  # at any level
        if record.msg in _CLIENT_MISTAKES:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.args, record.exc_info, record.exc_text = None, None, None
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        if record.msg == _REQUEST_ERROR and isinstance(record.args, tuple) and record.args:
            request_id, code = record.args[0], record.args[1] if len(record.args) > 1 else None
            level = logging.ERROR if code == _INTERNAL_ERROR else logging.WARNING
            record.levelno, record.levelname = level, logging.getLevelName(level)
            record.msg = f"JSON-RPC request {safe(request_id)} answered with error {safe(code)}"
            record.args = None
        return True


_CLIENT_ERRORS = JsonRpcClientErrors()


def quiet_jsonrpc_client_errors() -> None:
    """Installs JsonRpcClientErrors on the dispatcher's logger (once)."""
    logging.getLogger(JSONRPC_DISPATCHER).addFilter(_CLIENT_ERRORS)
