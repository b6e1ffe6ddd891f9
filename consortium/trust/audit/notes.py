"""C2SP signed notes, checkpoints and cosignatures with Ed25519, for the audit log.

Implements, from the C2SP specifications:

- c2sp.org/signed-note: a text ending in a newline, a blank line, then signature lines
  ``— <key name> base64(4-byte key ID || signature)``; Ed25519 signatures (type 0x01)
  over the text, key ID = SHA-256(name || 0x0A || 0x01 || public key)[:4].
- c2sp.org/tlog-checkpoint: the note text of a log's tree head (origin, decimal size,
  base64 root hash, optional extension lines).
- c2sp.org/tlog-cosignature, cosignature/v1 (Ed25519, type 0x04): a witness's
  timestamped signature over ``"cosignature/v1\\ntime <t>\\n" + checkpoint text``,
  carried as 8-byte big-endian timestamp || Ed25519 signature.

Everything here is pure: text and bytes in, text and bytes out, `NoteError` (a
ValueError) for anything malformed or that does not verify.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from consortium.trust.audit.merkle import HASH_SIZE

SIGNATURE_TYPE_ED25519 = 0x01
SIGNATURE_TYPE_COSIGNATURE_V1 = 0x04
KEY_HASH_SIZE = 4
MAX_SIGNATURES = 100
"""More signature lines than this and a note is refused (the spec asks for at least 16)."""
MAX_TIMESTAMP = 2**63 - 1
MAX_TREE_SIZE = 2**64 - 1

_EM_DASH = "\u2014"
_SIGNATURE_PREFIX = _EM_DASH + " "
_ED25519_SIGNATURE_SIZE = 64
_COSIGNATURE_HEADER = "cosignature/v1\n"
_DECIMAL = re.compile(r"0|[1-9][0-9]*", re.ASCII)


class NoteError(ValueError):
    """A note, checkpoint or signature is malformed or does not verify."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    """Strict standard base64: valid alphabet and padding, and the canonical spelling."""
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as error:
        raise NoteError(f"{what} is not valid base64: {text!r}") from error
    if _b64(data) != text:
        raise NoteError(f"{what} is not canonical base64: {text!r}")
    return data


_CONTROL = re.compile("[\x00-\x09\x0b-\x1f]")  # control characters but newline


def _check_text(text: str, what: str) -> None:
    """Valid UTF-8 with no control characters but newline, per the signed-note spec."""
    if not isinstance(text, str):
        raise NoteError(f"{what} must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise NoteError(f"{what} is not valid UTF-8") from error
    found = _CONTROL.search(text)
    if found is not None:
        char = found.group()
        raise NoteError(f"{what} contains control character {char!r} at {found.start()}")


def _check_body(body: str) -> None:
    """A note text: non-empty, well-formed, ending in a newline."""
    _check_text(body, "note text")
    if not body.endswith("\n"):
        raise NoteError("note text must end with a newline")


def _check_key_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise NoteError(f"key name must be a non-empty str, got {name!r}")
    _check_text(name, "key name")
    if any(char.isspace() or char == "+" for char in name):
        raise NoteError(f"key name must not contain spaces or '+': {name!r}")


def _key_hash(name: str, signature_type: int, public: bytes) -> bytes:
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([signature_type]) + public).digest()[
        :KEY_HASH_SIZE
    ]


def ed25519_key_hash(name: str, public: bytes) -> bytes:
    """The key ID of an Ed25519 note key: SHA-256(name || 0x0A || 0x01 || public)[:4]."""
    return _key_hash(name, SIGNATURE_TYPE_ED25519, public)


def cosignature_key_hash(name: str, public: bytes) -> bytes:
    """The key ID of an Ed25519 cosigner key (cosignature/v1):
    SHA-256(name || 0x0A || 0x04 || public)[:4]."""
    return _key_hash(name, SIGNATURE_TYPE_COSIGNATURE_V1, public)


@dataclass(frozen=True)
class Checkpoint:
    """A transparency log checkpoint: the note text of a signed tree head."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.origin, str) or not self.origin:
            raise NoteError(f"checkpoint origin must be a non-empty str, got {self.origin!r}")
        _check_text(self.origin, "checkpoint origin")
        if "\n" in self.origin:
            raise NoteError("checkpoint origin must be a single line")
        if (
            isinstance(self.size, bool)
            or not isinstance(self.size, int)
            or not 0 <= self.size <= MAX_TREE_SIZE
        ):
            raise NoteError(f"checkpoint size must be an integer in [0, 2^64), got {self.size!r}")
        if not isinstance(self.root, bytes) or len(self.root) != HASH_SIZE:
            raise NoteError(f"checkpoint root must be {HASH_SIZE} bytes, got {self.root!r}")
        if not isinstance(self.extensions, tuple):
            raise NoteError("checkpoint extensions must be a tuple of str")
        for line in self.extensions:
            if not isinstance(line, str) or not line:
                raise NoteError(f"checkpoint extension lines must be non-empty, got {line!r}")
            _check_text(line, "checkpoint extension line")
            if "\n" in line:
                raise NoteError(f"checkpoint extension line must be a single line: {line!r}")

    def body(self) -> str:
        """The checkpoint's note text, every line ending in a newline."""
        lines = [self.origin, str(self.size), _b64(self.root), *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def parse(cls, body: str) -> Checkpoint:
        """Parse a checkpoint's note text (without signatures), strictly."""
        _check_body(body)
        lines = body[:-1].split("\n")
        if len(lines) < 3:
            raise NoteError(
                f"checkpoint must have at least 3 lines (origin, size, root), got {len(lines)}"
            )
        origin, size_line, root_line, *extensions = lines
        if not origin:
            raise NoteError("checkpoint origin line is empty")
        if not _DECIMAL.fullmatch(size_line):
            raise NoteError(f"checkpoint size is not a canonical decimal number: {size_line!r}")
        size = int(size_line)
        if size > MAX_TREE_SIZE:
            raise NoteError(f"checkpoint size {size_line} does not fit in 64 bits")
        root = _unb64(root_line, "checkpoint root")
        if len(root) != HASH_SIZE:
            raise NoteError(f"checkpoint root must be {HASH_SIZE} bytes, got {len(root)}")
        for number, line in enumerate(extensions, start=4):
            if not line:
                raise NoteError(f"checkpoint line {number} (an extension line) is empty")
        return cls(origin=origin, size=size, root=root, extensions=tuple(extensions))


@dataclass(frozen=True)
class NoteSignature:
    """One signature line of a note: key name, 4-byte key ID and signature bytes."""

    name: str
    key_hash: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_key_name(self.name)
        if not isinstance(self.key_hash, bytes) or len(self.key_hash) != KEY_HASH_SIZE:
            raise NoteError(f"key hash must be {KEY_HASH_SIZE} bytes, got {self.key_hash!r}")
        if not isinstance(self.signature, bytes) or not self.signature:
            raise NoteError("signature must be non-empty bytes")

    def line(self) -> str:
        """The signature line: em dash, space, name, space, base64(key ID || signature)."""
        return f"{_SIGNATURE_PREFIX}{self.name} {_b64(self.key_hash + self.signature)}\n"


def _public_bytes(public: VerifyKey) -> bytes:
    return bytes(public.encode())


def sign_note(body: str, name: str, key: SigningKey) -> NoteSignature:
    """An Ed25519 note signature (type 0x01) by `key` under `name` over `body`."""
    _check_body(body)
    _check_key_name(name)
    signature = key.sign(body.encode("utf-8")).signature
    key_hash = ed25519_key_hash(name, _public_bytes(key.verify_key))
    return NoteSignature(name=name, key_hash=key_hash, signature=bytes(signature))


def _verify_ed25519(public: VerifyKey, message: bytes, signature: bytes, what: str) -> None:
    if len(signature) != _ED25519_SIGNATURE_SIZE:
        raise NoteError(f"{what} must be {_ED25519_SIGNATURE_SIZE} bytes, got {len(signature)}")
    try:
        public.verify(message, signature)
    except BadSignatureError as error:
        raise NoteError(f"{what} does not verify") from error


def _check_signer(sig: NoteSignature, name: str, expected_hash: bytes) -> None:
    if sig.name != name:
        raise NoteError(f"signature is by {sig.name!r}, not {name!r}")
    if sig.key_hash != expected_hash:
        raise NoteError(
            f"signature key ID {sig.key_hash.hex()} does not match the key of {name!r} "
            f"({expected_hash.hex()})"
        )


def verify_note(body: str, sig: NoteSignature, name: str, public: VerifyKey) -> None:
    """Check that `sig` is an Ed25519 signature over `body` by `public` under `name`."""
    _check_body(body)
    _check_signer(sig, name, ed25519_key_hash(name, _public_bytes(public)))
    _verify_ed25519(public, body.encode("utf-8"), sig.signature, f"signature by {name!r}")


def format_note(body: str, signatures: Sequence[NoteSignature]) -> str:
    """A signed note: the text, a blank line, then one line per signature."""
    _check_body(body)
    if not signatures:
        raise NoteError("a signed note needs at least one signature")
    if len(signatures) > MAX_SIGNATURES:
        raise NoteError(f"too many signatures: {len(signatures)} > {MAX_SIGNATURES}")
    return body + "\n" + "".join(sig.line() for sig in signatures)


def parse_signature_line(line: str, number: int = 1) -> NoteSignature:
    """One signature line ("— NAME BASE64", with or without its newline), as kept apart
    from its note (a witness's cosignature); NoteError when malformed."""
    return _parse_signature_line(line.rstrip("\n"), number)


def _parse_signature_line(line: str, number: int) -> NoteSignature:
    if not line.startswith(_SIGNATURE_PREFIX):
        raise NoteError(f"signature line {number} does not start with an em dash and space")
    parts = line[len(_SIGNATURE_PREFIX) :].split(" ")
    if len(parts) != 2:
        raise NoteError(
            f"signature line {number} must be '— <key name> <base64 signature>': {line!r}"
        )
    name, encoded = parts
    try:
        _check_key_name(name)
    except NoteError as error:
        raise NoteError(f"signature line {number}: {error}") from error
    data = _unb64(encoded, f"signature {number}")
    if len(data) <= KEY_HASH_SIZE:
        raise NoteError(
            f"signature {number} is {len(data)} bytes: too short for a key ID and a signature"
        )
    return NoteSignature(name=name, key_hash=data[:KEY_HASH_SIZE], signature=data[KEY_HASH_SIZE:])


def parse_note(text: str) -> tuple[str, list[NoteSignature]]:
    """Split a signed note into its text and its signatures, strictly.

    Signatures of unknown types are kept: verifying them with `verify_note` simply
    fails on the key ID."""
    _check_text(text, "note")
    separator = text.rfind("\n\n")
    if separator < 0:
        raise NoteError("note has no blank line separating its text from its signatures")
    body, block = text[: separator + 1], text[separator + 2 :]
    if not block:
        raise NoteError("note has no signature lines")
    if not block.endswith("\n"):
        raise NoteError("note's last signature line does not end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"too many signatures: {len(lines)} > {MAX_SIGNATURES}")
    signatures = [_parse_signature_line(line, number) for number, line in enumerate(lines, 1)]
    return body, signatures


def _check_timestamp(timestamp: int) -> None:
    if (
        isinstance(timestamp, bool)
        or not isinstance(timestamp, int)
        or not 0 <= timestamp <= MAX_TIMESTAMP
    ):
        raise NoteError(f"timestamp must be an integer in [0, 2^63 - 1], got {timestamp!r}")


def _cosigned_message(checkpoint: Checkpoint, timestamp: int) -> bytes:
    return f"{_COSIGNATURE_HEADER}time {timestamp}\n{checkpoint.body()}".encode()


def cosign(checkpoint: Checkpoint, name: str, key: SigningKey, timestamp: int) -> NoteSignature:
    """A cosignature/v1 (Ed25519, type 0x04) by the cosigner `name` over `checkpoint`,
    stating it was the largest consistent tree seen at `timestamp` (POSIX seconds)."""
    _check_key_name(name)
    _check_timestamp(timestamp)
    signed = key.sign(_cosigned_message(checkpoint, timestamp)).signature
    return NoteSignature(
        name=name,
        key_hash=cosignature_key_hash(name, _public_bytes(key.verify_key)),
        signature=timestamp.to_bytes(8, "big") + bytes(signed),
    )


def verify_cosignature(
    checkpoint: Checkpoint, sig: NoteSignature, name: str, public: VerifyKey
) -> int:
    """Check a cosignature/v1 by `public` under `name` over `checkpoint`; returns its
    timestamp."""
    _check_signer(sig, name, cosignature_key_hash(name, _public_bytes(public)))
    expected = 8 + _ED25519_SIGNATURE_SIZE
    if len(sig.signature) != expected:
        raise NoteError(
            f"cosignature by {name!r} must be {expected} bytes, got {len(sig.signature)}"
        )
    timestamp = int.from_bytes(sig.signature[:8], "big")
    if timestamp > MAX_TIMESTAMP:
        raise NoteError(f"cosignature timestamp {timestamp} exceeds 2^63 - 1")
    _verify_ed25519(
        public,
        _cosigned_message(checkpoint, timestamp),
        sig.signature[8:],
        f"cosignature by {name!r}",
    )
    return timestamp
