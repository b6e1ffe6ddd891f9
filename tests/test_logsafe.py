"""Log hygiene: untrusted identifiers cannot forge log lines; a2a-sdk's records keep their
fixed text but never their arguments (request bodies) or exception details."""

from __future__ import annotations

import logging

from consortium.logsafe import WithholdArguments, safe


def test_safe_escapes_controls_and_cuts_long_values() -> None:
    forged = "m-1\n2026-01-01 00:00:00 CRITICAL root: \x1b[31mpwned\r"
    out = safe(forged)
    assert "\n" not in out and "\x1b" not in out and "\r" not in out
    assert "\\n2026" in out and "\\u001b" in out
    assert safe("x" * 500).endswith("...[cut]") and len(safe("x" * 500)) < 120
    assert safe("plain-id_123") == "plain-id_123"


def test_sdk_records_lose_their_arguments_and_exception_text() -> None:
    body = {"message": {"parts": [{"text": "jane.doe@example.com"}]}}
    record = logging.LogRecord(
        "a2a.server.x", logging.WARNING, __file__, 1, "Body: %s", (body,), None
    )
    try:
        raise ValueError("parse error near 'jane.doe@example.com'")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    assert WithholdArguments().filter(record)
    text = logging.Formatter().format(record)
    assert "jane.doe" not in text and "ValueError" in text and "withheld" in text
    ours = logging.LogRecord(
        "consortium.node", logging.INFO, __file__, 1, "task %s", ("t-1",), None
    )
    WithholdArguments().filter(ours)
    assert ours.getMessage() == "task t-1"
