"""Unpadded base64url (RFC 7515 section 2, RFC 9901), shared by the JWS code (trust/jws.py)
and the redaction receipts (redaction/receipts.py), which sit in sibling layers.

`decode` accepts only the canonical form: the base64url alphabet, no padding, no length
that cannot be, and no non-zero unused bits in the last character, so one byte string has
exactly one text (what a digest or a signature is computed over cannot be varied).
"""

from __future__ import annotations

import base64
import binascii
import re

_ALPHABET = re.compile(r"[A-Za-z0-9_-]*")


class NotBase64url(ValueError):
    """A text that is not canonical unpadded base64url; the message says how."""


def encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def decode(text: str) -> bytes:
    """The bytes of canonical unpadded base64url `text`; NotBase64url otherwise."""
    if _ALPHABET.fullmatch(text) is None or len(text) % 4 == 1:
        raise NotBase64url("not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise NotBase64url("not base64url") from None
    if encode(data) != text:  # non-zero unused bits in the last character
        raise NotBase64url("not canonical base64url")
    return data
