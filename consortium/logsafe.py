"""Logging that cannot be forged and never carries message bodies.

`safe()` escapes an untrusted identifier (a message id, a claimed sender, a task id) before
it goes into a log line: control characters, newlines and ANSI escapes become visible
escapes, and long values are cut, so a caller cannot write a fake log line.

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
SDK_LOGGERS = ("a2a", "presidio-analyzer", "presidio-anonymizer")
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
