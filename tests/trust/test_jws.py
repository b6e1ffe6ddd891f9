"""Detached and compact JWS over RFC 8785 canonical JSON: signs, verifies, and refuses
every tampering, including another spelling of the same bytes (non-canonical base64url)."""

from __future__ import annotations

import base64
import random
from typing import Any

import pytest
import rfc8785

from consortium.trust.jws import (
    SignatureError,
    canonical,
    protected_header,
    read_compact,
    sign_compact,
    sign_detached,
    verify_compact,
    verify_detached,
)
from consortium.trust.keys import generate_key, key_id


def flip(text: str, index: int) -> str:
    c = text[index]
    return text[:index] + ("A" if c != "A" else "B") + text[index + 1 :]


def test_canonical_json_is_rfc8785() -> None:
    assert (
        canonical({"b": 1, "a": [True, None, "é"], "c": 1.0})
        == b'{"a":[true,null,"\xc3\xa9"],"b":1,"c":1}'
    )


# Characters that stress JCS: controls (escaped), quote and backslash, DEL, non-ASCII,
# the private-use block above the surrogates and supplementary-plane characters (which
# UTF-16 sorts below it), and a lone surrogate (not valid JSON text).
ALPHABET = [
    *"abcAZ09 _.-",
    *(chr(c) for c in range(0x20)),
    '"',
    "\\",
    "\x7f",
    "é",
    "\u2028",
    "\ue000",
    "\uffff",
    "\U0001f600",
    "\U00010000",
    "\ud800",
]


def random_number(rng: random.Random) -> float | int:
    kind = rng.randrange(6)
    if kind == 0:
        return rng.choice([0, 1, -1, 2**53 - 1, -(2**53) + 1, 2**53, 2**60])
    if kind == 1:
        return rng.randint(-(10**6), 10**6)
    if kind == 2:
        return float(rng.randint(-(2**54), 2**54))  # integral floats, some beyond 2**53
    if kind == 3:
        return rng.choice([0.0, -0.0, 1e-4, 9.99e-5, 1e16, 1e16 - 2, 1e21, 1e-7, 5e-324])
    if kind == 4:
        return rng.uniform(-1, 1) * 10 ** rng.randint(-10, 25)
    return round(rng.uniform(1e9, 2e9), 3)  # an issued-at


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind in (1, 2):
        return "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(6)))
    if kind in (3, 4):
        return random_number(rng)
    if kind == 5:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ("".join(rng.choice(ALPHABET) for _ in range(rng.randrange(4))) for _ in range(5))
    return {k: random_value(rng, depth + 1) for k in keys}


def test_canonical_agrees_with_rfc8785_on_generated_values() -> None:
    rng = random.Random(8785)
    for _ in range(5000):
        value = random_value(rng)
        try:
            expected: bytes | None = bytes(rfc8785.dumps(value))
        except (rfc8785.CanonicalizationError, ValueError, TypeError):
            expected = None
        if expected is None:
            with pytest.raises(SignatureError):
                canonical(value)
        else:
            assert canonical(value) == expected, value


def test_sign_and_verify_regardless_of_key_order() -> None:
    key = generate_key()
    token = sign_detached({"x": 1, "y": "two"}, key, {"typ": "test"})
    head, payload, sig = token.split(".")
    assert payload == "" and head and sig
    header = verify_detached(token, {"y": "two", "x": 1}, {key_id(key): key}.get)
    assert header["alg"] == "EdDSA" and header["kid"] == key_id(key) and header["typ"] == "test"


def test_changed_value_fails() -> None:
    key = generate_key()
    token = sign_detached({"x": 1}, key)
    with pytest.raises(SignatureError, match="does not verify"):
        verify_detached(token, {"x": 2}, {key_id(key): key}.get)


def test_flipped_byte_in_header_or_signature_fails() -> None:
    key = generate_key()
    token = sign_detached({"x": 1}, key)
    head, _, sig = token.split(".")
    for bad in (f"{flip(head, 5)}..{sig}", f"{head}..{flip(sig, 10)}"):
        with pytest.raises(SignatureError):
            verify_detached(bad, {"x": 1}, {key_id(key): key}.get)


def test_unknown_key_and_other_key_fail() -> None:
    key, other = generate_key(), generate_key()
    token = sign_detached({"x": 1}, key)
    with pytest.raises(SignatureError, match="unknown signing key"):
        verify_detached(token, {"x": 1}, {key_id(other): other}.get)
    # The right kid mapped to the wrong key (a forged header) does not verify either.
    with pytest.raises(SignatureError, match="does not verify"):
        verify_detached(token, {"x": 1}, lambda kid: other)


def test_wrong_algorithm_and_malformed_tokens() -> None:
    key = generate_key()
    none_header = base64.urlsafe_b64encode(b'{"alg":"none","kid":"k"}').rstrip(b"=").decode()
    with pytest.raises(SignatureError, match="algorithm"):
        verify_detached(f"{none_header}..", {"x": 1}, {"k": key}.get)
    for bad in ("", "a.b.c", "abc", "!!..!!"):
        with pytest.raises(SignatureError):
            protected_header(bad)


def test_tokens_interoperate_with_jwcrypto() -> None:
    from jwcrypto import jws
    from jwcrypto.common import base64url_encode, json_encode

    key = generate_key()
    value = {"claims": {"sender": "acme"}, "parts": ["é", 1, 2.5]}
    ours = sign_detached(value, key)
    head, _, sig = ours.split(".")
    attached = f"{head}.{base64url_encode(canonical(value))}.{sig}"
    checker = jws.JWS()
    checker.deserialize(attached)
    checker.verify(key, alg="EdDSA")  # raises if jwcrypto disagrees

    theirs = jws.JWS(canonical(value))
    theirs.add_signature(
        key, alg="EdDSA", protected=json_encode({"alg": "EdDSA", "kid": key_id(key)})
    )
    h, _, s = str(theirs.serialize(compact=True)).split(".")
    assert verify_detached(f"{h}..{s}", value, {key_id(key): key}.get)["kid"] == key_id(key)


B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def twin(segment: str) -> str:
    """The same bytes spelled otherwise: a set unused bit in the last character."""
    assert len(segment) % 4 in (2, 3)
    return segment[:-1] + B64URL[B64URL.index(segment[-1]) ^ 1]


def unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def test_a_signature_spelled_otherwise_is_refused() -> None:
    key = generate_key()
    token = sign_detached({"x": 1}, key)
    head, _, sig = token.split(".")
    assert len(sig) == 86  # 64 bytes: the last character carries 4 unused bits
    assert unb64(twin(sig)) == unb64(sig)  # a lenient decoder reads the same signature
    verify_detached(token, {"x": 1}, {key_id(key): key}.get)
    for bad in (
        f"{head}..{twin(sig)}",
        f"{head}..{sig}==",
        f"{head}..{sig[:-2]}+/",
        f"{head}..{sig[:40]} {sig[41:]}",
        f"{head}..{sig[:-1]}",  # a length no base64 text has
    ):
        with pytest.raises(SignatureError, match="malformed JWS signature"):
            verify_detached(bad, {"x": 1}, {key_id(key): key}.get)


def test_a_header_or_payload_spelled_otherwise_is_refused() -> None:
    key = generate_key()
    # Pad the header until its encoding has unused bits.
    header = {"typ": "t"}
    while len(sign_detached({}, key, header).split(".")[0]) % 4 == 0:
        header["typ"] += "t"
    head, _, sig = sign_detached({}, key, header).split(".")
    with pytest.raises(SignatureError, match="malformed JWS header"):
        protected_header(f"{twin(head)}..{sig}")
    with pytest.raises(SignatureError, match="malformed JWS header"):
        protected_header(f"{head}=..{sig}")
    token = sign_compact(b'{"a":1}', key)  # 7 bytes: 10 characters, 2 unused bits
    head, payload, sig = token.split(".")
    with pytest.raises(SignatureError, match="malformed JWS payload"):
        verify_compact(f"{head}.{twin(payload)}.{sig}", {key_id(key): key}.get)
    with pytest.raises(SignatureError, match="malformed JWS payload"):
        read_compact(f"{head}.{payload}=.{sig}")


def test_compact_tokens_carry_their_payload() -> None:
    key = generate_key()
    token = sign_compact(b'{"a":1}', key, {"typ": "test"})
    assert read_compact(token) == (
        {"alg": "EdDSA", "kid": key_id(key), "typ": "test"},
        b'{"a":1}',
    )
    header, payload = verify_compact(token, {key_id(key): key}.get)
    assert header["typ"] == "test" and payload == b'{"a":1}'
    head, _, sig = token.split(".")
    other = base64.urlsafe_b64encode(b'{"a":2}').rstrip(b"=").decode()
    with pytest.raises(SignatureError, match="does not verify"):
        verify_compact(f"{head}.{other}.{sig}", {key_id(key): key}.get)
    with pytest.raises(SignatureError, match="unknown signing key"):
        verify_compact(token, {}.get)
    # A compact token is not a detached one, nor the other way round.
    with pytest.raises(SignatureError, match="detached"):
        protected_header(token)
    with pytest.raises(SignatureError, match="not a compact JWS"):
        verify_compact(f"{head}..{sig}", {key_id(key): key}.get)
    with pytest.raises(SignatureError):
        verify_detached(token, {"a": 1}, {key_id(key): key}.get)


def test_compact_tokens_interoperate_with_jwcrypto() -> None:
    from jwcrypto import jws

    key = generate_key()
    checker = jws.JWS()
    checker.deserialize(sign_compact(b'{"a":1}', key))
    checker.verify(key, alg="EdDSA")
    assert checker.payload == b'{"a":1}'
