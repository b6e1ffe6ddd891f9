"""Detached JWS (RFC 7515, appendix F) with EdDSA over RFC 8785 canonical JSON.

A signature travels apart from what it signs: `header..signature`. The signer and the
verifier canonicalise the same JSON value with JCS (the `rfc8785` package), so any
party that holds the value and the key can check it, whatever its JSON formatting.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import rfc8785
from jwcrypto import jwk, jws
from jwcrypto.common import JWException, base64url_encode, json_encode

from consortium.errors import ConsortiumError
from consortium.trust.keys import key_id

ALGORITHM = "EdDSA"


class SignatureError(ConsortiumError):
    """A signature is missing, malformed, made with an unknown key, or does not verify."""

    exit_code = 6


def canonical(value: Any) -> bytes:
    """RFC 8785 (JCS) canonical JSON bytes of a JSON-compatible value."""
    try:
        return bytes(rfc8785.dumps(value))
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as e:
        raise SignatureError(f"value cannot be canonicalised: {e}") from None


def sign_detached(value: Any, key: jwk.JWK, header: Mapping[str, Any] | None = None) -> str:
    """Signs the canonical JSON of `value`; returns the compact JWS without its payload."""
    protected = {"alg": ALGORITHM, "kid": key_id(key), **(header or {})}
    token = jws.JWS(canonical(value))
    token.add_signature(key, alg=ALGORITHM, protected=json_encode(protected))
    head, _, signature = str(token.serialize(compact=True)).split(".")
    return f"{head}..{signature}"


def protected_header(token: str) -> dict[str, Any]:
    """The protected header of a detached JWS, unverified (to find the key id)."""
    parts = token.split(".")
    if len(parts) != 3 or parts[1] != "":
        raise SignatureError("not a detached compact JWS (expected 'header..signature')")
    try:
        from jwcrypto.common import base64url_decode

        header = json.loads(base64url_decode(parts[0]))
    except (ValueError, TypeError) as e:
        raise SignatureError(f"malformed JWS header: {e}") from None
    if not isinstance(header, dict):
        raise SignatureError("malformed JWS header: not an object")
    return header


def verify_detached(
    token: str, value: Any, resolve_key: Callable[[str], jwk.JWK | None]
) -> dict[str, Any]:
    """Checks a detached JWS over the canonical JSON of `value`.

    `resolve_key` maps the header's key id to a trusted public key (or None). Returns the
    protected header. Raises SignatureError for every failure.
    """
    header = protected_header(token)
    if header.get("alg") != ALGORITHM:
        raise SignatureError(f"unexpected JWS algorithm {header.get('alg')!r}; expected EdDSA")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise SignatureError("JWS header has no key id")
    key = resolve_key(kid)
    if key is None:
        raise SignatureError(f"unknown signing key {kid}")
    head, _, signature = token.split(".")
    attached = f"{head}.{base64url_encode(canonical(value))}.{signature}"
    try:
        verifier = jws.JWS()
        verifier.deserialize(attached)
        verifier.verify(key, alg=ALGORITHM)
    except (JWException, ValueError, TypeError) as e:
        raise SignatureError(
            f"signature does not verify under key {kid}: {type(e).__name__}"
        ) from None
    return header
