"""Detached JWS (RFC 7515, appendix F) with EdDSA over RFC 8785 canonical JSON.

A signature travels apart from what it signs: `header..signature`. The signer and the
verifier canonicalise the same JSON value with JCS (the `rfc8785` package), so any
party that holds the value and the key can check it, whatever its JSON formatting.

Keys are jwcrypto JWKs. The compact form itself (base64url header, the signing input
`header.payload`, the Ed25519 signature) is assembled here over `cryptography`'s Ed25519,
because it sits on every message's path and jwcrypto's JWS object cost more than the
signature operation itself (benchmarks/messaging.py prints the per-message costs). Tokens
are standard: tests check that jwcrypto verifies ours and we verify jwcrypto's.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Callable, Mapping
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from jwcrypto import jwk

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


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _private_key(key: jwk.JWK) -> Ed25519PrivateKey:
    op = key.get_op_key("sign")
    if not isinstance(op, Ed25519PrivateKey):
        raise SignatureError("signing needs an Ed25519 private key")
    return op


@functools.lru_cache(maxsize=1024)
def _ed25519_public(x: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(_unb64(x))


def _public_key(key: jwk.JWK) -> Ed25519PublicKey:
    if key.get("kty") != "OKP" or key.get("crv") != "Ed25519":
        raise SignatureError("verification needs an Ed25519 key")
    try:
        return _ed25519_public(str(key.get("x")))
    except ValueError:
        raise SignatureError("malformed Ed25519 public key") from None


def sign_detached(value: Any, key: jwk.JWK, header: Mapping[str, Any] | None = None) -> str:
    """Signs the canonical JSON of `value`; returns the compact JWS without its payload."""
    protected = {"alg": ALGORITHM, "kid": key_id(key), **(header or {})}
    head = _b64(json.dumps(protected, separators=(",", ":"), sort_keys=True).encode())
    signing_input = f"{head}.{_b64(canonical(value))}".encode()
    return f"{head}..{_b64(_private_key(key).sign(signing_input))}"


def protected_header(token: str) -> dict[str, Any]:
    """The protected header of a detached JWS, unverified (to find the key id)."""
    parts = token.split(".")
    if len(parts) != 3 or parts[1] != "":
        raise SignatureError("not a detached compact JWS (expected 'header..signature')")
    try:
        header = json.loads(_unb64(parts[0]))
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
    try:
        raw_signature = _unb64(signature)
    except (ValueError, TypeError):
        raise SignatureError("malformed JWS signature") from None
    signing_input = f"{head}.{_b64(canonical(value))}".encode()
    try:
        _public_key(key).verify(raw_signature, signing_input)
    except InvalidSignature:
        raise SignatureError(f"signature does not verify under key {kid}") from None
    return header
