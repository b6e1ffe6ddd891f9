"""Detached JWS (RFC 7515, appendix F) with EdDSA over RFC 8785 canonical JSON.

A signature travels apart from what it signs: `header..signature`. The signer and the
verifier canonicalise the same JSON value with JCS (the `rfc8785` package), so any
party that holds the value and the key can check it, whatever its JSON formatting.

Keys are jwcrypto JWKs. The compact form itself (base64url header, the signing input
`header.payload`, the Ed25519 signature) is assembled here over libsodium's Ed25519
(PyNaCl), because it sits on every message's path: jwcrypto's JWS object cost more than
the signature operation itself, and libsodium verifies about three times faster than
OpenSSL (benchmarks/messaging.py prints the per-message costs). Tokens are standard: tests
check that jwcrypto verifies ours and we verify jwcrypto's.

`sign_payload`/`verify_payload` take bytes that are already canonical, for callers that
also need the bytes for something else (the digest a response binds to).
`sign_compact`/`verify_compact` are the attached form, `header.payload.signature`, for a
token that carries its own claims (a call proof).

Every segment must be canonical unpadded base64url: the text a decoder accepts is exactly
the text the encoder writes for those bytes. Lenient decoders accept several spellings of
one signature (the last character's unused bits, padding, stray characters), which would
let anyone who sees a token make a different token that still verifies.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Callable, Mapping
from typing import Any

import rfc8785
from jwcrypto import jwk
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from consortium import b64url
from consortium.errors import ConsortiumError
from consortium.trust.keys import key_id

ALGORITHM = "EdDSA"


class SignatureError(ConsortiumError):
    """A signature is missing, malformed, made with an unknown key, or does not verify."""

    exit_code = 6


def canonical(value: Any) -> bytes:
    """RFC 8785 (JCS) canonical JSON bytes of a JSON-compatible value.

    `rfc8785` defines the bytes. For the values messages are made of (string keys inside
    the Basic Multilingual Plane, integers and floats whose shortest form JCS and Python
    write alike), the standard library's C encoder with sorted keys writes the same bytes
    several times faster: JCS escapes exactly the characters `json` escapes, and sorts
    keys by UTF-16 code units, which for such keys is code-point order. Anything else goes
    to `rfc8785`; tests/trust/test_jws.py checks the two agree on generated values.
    """
    try:
        return json.dumps(
            _plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    except (_NotPlain, UnicodeEncodeError):
        pass
    try:
        return bytes(rfc8785.dumps(value))
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as e:
        raise SignatureError(f"value cannot be canonicalised: {e}") from None


class _NotPlain(Exception):
    """A value outside the subset `json` writes as JCS does."""


_SAFE_INTEGER = 2**53 - 1  # the range rfc8785 accepts for integers


def _plain(value: Any) -> Any:
    """`value` with integral floats as integers (JCS writes 5.0 as 5), or _NotPlain."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        if -_SAFE_INTEGER <= value <= _SAFE_INTEGER:
            return value
        raise _NotPlain
    if isinstance(value, float):
        if value.is_integer():
            if abs(value) <= _SAFE_INTEGER:
                return int(value)
            raise _NotPlain
        # Both write fixed-point shortest round-trip digits here (NaN and inf fail).
        if 1e-4 <= abs(value) < 1e16:
            return value
        raise _NotPlain
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str) or not (key.isascii() or max(key) <= "\uffff"):
                raise _NotPlain
            out[key] = _plain(item)
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    raise _NotPlain


_b64 = b64url.encode


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _segment(text: str, what: str) -> bytes:
    """The bytes of one JWS segment, which must be canonical unpadded base64url."""
    try:
        return b64url.decode(text)
    except b64url.NotBase64url as e:
        raise SignatureError(f"malformed JWS {what}: {e}") from None


@functools.lru_cache(maxsize=64)
def _signing_key(d: str) -> SigningKey:
    return SigningKey(_unb64(d))


def signing_key_of(key: jwk.JWK) -> SigningKey:
    """The libsodium signing key of an Ed25519 private JWK; SignatureError otherwise."""
    if key.get("kty") != "OKP" or key.get("crv") != "Ed25519" or not key.get("d"):
        raise SignatureError("signing needs an Ed25519 private key")
    try:
        return _signing_key(str(key.get("d")))
    except (ValueError, TypeError):
        raise SignatureError("malformed Ed25519 private key") from None


@functools.lru_cache(maxsize=1024)
def _verify_key(x: str) -> VerifyKey:
    return VerifyKey(_unb64(x))


def verify_key_of(key: jwk.JWK) -> VerifyKey:
    """The libsodium verify key of an Ed25519 JWK; SignatureError otherwise."""
    if key.get("kty") != "OKP" or key.get("crv") != "Ed25519":
        raise SignatureError("verification needs an Ed25519 key")
    try:
        return _verify_key(str(key.get("x")))
    except (ValueError, TypeError):
        raise SignatureError("malformed Ed25519 public key") from None


def sign_detached(value: Any, key: jwk.JWK, header: Mapping[str, Any] | None = None) -> str:
    """Signs the canonical JSON of `value`; returns the compact JWS without its payload."""
    return sign_payload(canonical(value), key, header)


def sign_payload(payload: bytes, key: jwk.JWK, header: Mapping[str, Any] | None = None) -> str:
    """`sign_detached` over bytes the caller already canonicalised."""
    head, _, signature = sign_compact(payload, key, header).split(".")
    return f"{head}..{signature}"


def sign_compact(payload: bytes, key: jwk.JWK, header: Mapping[str, Any] | None = None) -> str:
    """A compact JWS that carries its payload: `header.payload.signature`."""
    protected = {"alg": ALGORITHM, "kid": key_id(key), **(header or {})}
    head = _b64(json.dumps(protected, separators=(",", ":"), sort_keys=True).encode())
    signing_input = f"{head}.{_b64(payload)}"
    signature = _b64(signing_key_of(key).sign(signing_input.encode()).signature)
    return f"{signing_input}.{signature}"


def _split(token: str, *, detached: bool) -> tuple[list[str], dict[str, Any]]:
    """The three segments of a compact JWS and its protected header, unverified."""
    parts = token.split(".")
    if detached and (len(parts) != 3 or parts[1] != ""):
        raise SignatureError("not a detached compact JWS (expected 'header..signature')")
    if not detached and (len(parts) != 3 or parts[1] == ""):
        raise SignatureError("not a compact JWS (expected 'header.payload.signature')")
    try:
        header = json.loads(_segment(parts[0], "header"))
    except (ValueError, TypeError) as e:
        raise SignatureError(f"malformed JWS header: {e}") from None
    if not isinstance(header, dict):
        raise SignatureError("malformed JWS header: not an object")
    return parts, header


def protected_header(token: str) -> dict[str, Any]:
    """The protected header of a detached JWS, unverified (to find the key id)."""
    return _split(token, detached=True)[1]


def read_compact(token: str) -> tuple[dict[str, Any], bytes]:
    """The protected header and payload of a compact JWS, unverified (to find the claimed
    signer before looking up its key)."""
    parts, header = _split(token, detached=False)
    return header, _segment(parts[1], "payload")


def verify_detached(
    token: str, value: Any, resolve_key: Callable[[str], jwk.JWK | None]
) -> dict[str, Any]:
    """Checks a detached JWS over the canonical JSON of `value`.

    `resolve_key` maps the header's key id to a trusted public key (or None). Returns the
    protected header. Raises SignatureError for every failure.
    """
    return verify_payload(token, canonical(value), resolve_key)


def verify_payload(
    token: str, payload: bytes, resolve_key: Callable[[str], jwk.JWK | None]
) -> dict[str, Any]:
    """`verify_detached` over bytes the caller already canonicalised."""
    parts, header = _split(token, detached=True)
    _verify(parts[0], _b64(payload), parts[2], header, resolve_key)
    return header


def verify_compact(
    token: str, resolve_key: Callable[[str], jwk.JWK | None]
) -> tuple[dict[str, Any], bytes]:
    """Checks a compact JWS that carries its payload; returns its protected header and
    payload. Raises SignatureError for every failure."""
    parts, header = _split(token, detached=False)
    payload = _segment(parts[1], "payload")
    _verify(parts[0], parts[1], parts[2], header, resolve_key)
    return header, payload


def _verify(
    head: str,
    encoded_payload: str,
    signature: str,
    header: dict[str, Any],
    resolve_key: Callable[[str], jwk.JWK | None],
) -> None:
    if header.get("alg") != ALGORITHM:
        raise SignatureError(f"unexpected JWS algorithm {header.get('alg')!r}; expected EdDSA")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise SignatureError("JWS header has no key id")
    key = resolve_key(kid)
    if key is None:
        raise SignatureError(f"unknown signing key {kid}")
    raw_signature = _segment(signature, "signature")
    try:
        verify_key_of(key).verify(f"{head}.{encoded_payload}".encode(), raw_signature)
    except (BadSignatureError, ValueError):
        raise SignatureError(f"signature does not verify under key {kid}") from None
