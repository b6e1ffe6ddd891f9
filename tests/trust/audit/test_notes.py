"""C2SP signed notes, checkpoints and cosignatures: the specs' own examples, sign / verify
/ parse round trips, signatures by other keys or names refused, malformed notes and
checkpoints refused with NoteError (including a fuzz test), and cosignature/v1 byte
layout and tampering."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey, VerifyKey

from consortium.trust.audit.notes import (
    MAX_SIGNATURES,
    Checkpoint,
    NoteError,
    NoteSignature,
    cosign,
    cosignature_key_hash,
    ed25519_key_hash,
    format_note,
    parse_note,
    sign_note,
    verify_cosignature,
    verify_note,
)

# From c2sp.org/signed-note (Example section).
SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_NOTE = (
    "This is an example message.\n"
    "\n"
    "— example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXm"
    "RKuwHjG1Yu72IneyaQM=\n"
)
# From c2sp.org/tlog-cosignature: a checkpoint with a log signature and a cosignature.
SPEC_COSIGNED = (
    "example.com/behind-the-sofa\n"
    "20852163\n"
    "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    "\n"
    "— example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zh"
    "cyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
    "— witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJ"
    "sX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n"
)
# From c2sp.org/signed-note: a text with an empty line inside it.
SPEC_POEM = (
    "Ognuno sta solo sul cuor della terra\n"
    "trafitto da un raggio di sole:\n"
    "\n"
    "ed è subito sera.\n"
    "\n"
    "— quasimodo.example/salvatore NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGITLlC+EhfLW9oJKONr"
    "MouFSQU0xMcXxj99ihAQwaqP3ZekRwNtIc=\n"
)

ROOT = hashlib.sha256(b"root").digest()
ROOT_B64 = base64.b64encode(ROOT).decode()
_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# The same 32 bytes with one of the unused low bits of the last character set.
NONCANONICAL_ROOT = ROOT_B64[:-2] + _B64_ALPHABET[_B64_ALPHABET.index(ROOT_B64[-2]) | 1] + "="
URLSAFE_ROOT = base64.urlsafe_b64encode(bytes([0xFF]) * 32).decode()
LOG = "example.com/audit"
WITNESS = "witness.example.com/w1"


@pytest.fixture(scope="module")
def log_key() -> SigningKey:
    return SigningKey(b"\x01" * 32)


@pytest.fixture(scope="module")
def witness_key() -> SigningKey:
    return SigningKey(b"\x02" * 32)


def spec_key() -> tuple[str, VerifyKey]:
    name, key_id, encoded = SPEC_VKEY.split("+")
    raw = base64.b64decode(encoded)
    assert raw[0] == 0x01
    assert ed25519_key_hash(name, raw[1:]).hex() == key_id
    return name, VerifyKey(raw[1:])


def test_spec_example_note_verifies() -> None:
    name, public = spec_key()
    body, sigs = parse_note(SPEC_NOTE)
    assert body == "This is an example message.\n"
    assert len(sigs) == 1
    verify_note(body, sigs[0], name, public)
    assert format_note(body, sigs) == SPEC_NOTE
    with pytest.raises(NoteError, match="does not verify"):
        verify_note("This is an example message!\n", sigs[0], name, public)


def test_spec_poem_keeps_inner_blank_line() -> None:
    body, sigs = parse_note(SPEC_POEM)
    assert body.endswith("trafitto da un raggio di sole:\n\ned è subito sera.\n")
    assert sigs[0].name == "quasimodo.example/salvatore"
    assert format_note(body, sigs) == SPEC_POEM


def test_spec_cosigned_checkpoint_layout() -> None:
    body, sigs = parse_note(SPEC_COSIGNED)
    checkpoint = Checkpoint.parse(body)
    assert checkpoint.origin == "example.com/behind-the-sofa"
    assert checkpoint.size == 20852163
    assert checkpoint.body() == body
    assert [s.name for s in sigs] == ["example.com/behind-the-sofa", WITNESS]
    cosig = sigs[1]
    # 8-byte big-endian timestamp || 64-byte Ed25519 signature; the spec's example
    # message carries "time 1679315147".
    assert len(cosig.signature) == 72
    assert int.from_bytes(cosig.signature[:8], "big") == 1679315147
    assert format_note(body, sigs) == SPEC_COSIGNED


def test_key_hashes() -> None:
    public = bytes(range(32))
    assert ed25519_key_hash("a/b", public) == hashlib.sha256(b"a/b\n\x01" + public).digest()[:4]
    assert cosignature_key_hash("a/b", public) == hashlib.sha256(b"a/b\n\x04" + public).digest()[:4]
    assert ed25519_key_hash("a/b", public) != cosignature_key_hash("a/b", public)


def test_checkpoint_body_and_parse() -> None:
    checkpoint = Checkpoint(LOG, 42, ROOT)
    assert checkpoint.body() == f"{LOG}\n42\n{ROOT_B64}\n"
    assert Checkpoint.parse(checkpoint.body()) == checkpoint
    extended = Checkpoint(LOG, 0, ROOT, ("ext one", "ext two"))
    assert extended.body() == f"{LOG}\n0\n{ROOT_B64}\next one\next two\n"
    assert Checkpoint.parse(extended.body()) == extended
    big = Checkpoint(LOG, 2**64 - 1, ROOT)
    assert Checkpoint.parse(big.body()) == big


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (f"{LOG}\n42\n{ROOT_B64}", "must end with a newline"),
        (f"{LOG}\n42\n", "at least 3 lines"),
        ("", "must end with a newline"),
        (f"\n42\n{ROOT_B64}\n", "origin line is empty"),
        (f"{LOG}\n042\n{ROOT_B64}\n", "not a canonical decimal"),
        (f"{LOG}\n00\n{ROOT_B64}\n", "not a canonical decimal"),
        (f"{LOG}\n-1\n{ROOT_B64}\n", "not a canonical decimal"),
        (f"{LOG}\n+1\n{ROOT_B64}\n", "not a canonical decimal"),
        (f"{LOG}\n 1\n{ROOT_B64}\n", "not a canonical decimal"),
        (f"{LOG}\n1_000\n{ROOT_B64}\n", "not a canonical decimal"),
        (f"{LOG}\n\u0661\n{ROOT_B64}\n", "not a canonical decimal"),
        (f"{LOG}\n\n{ROOT_B64}\n", "not a canonical decimal"),
        (f"{LOG}\n{2**64}\n{ROOT_B64}\n", "does not fit in 64 bits"),
        (f"{LOG}\n1\n{ROOT_B64[:-1]}\n", "not valid base64"),
        (f"{LOG}\n1\n{ROOT_B64.replace('=', '')}\n", "not valid base64"),
        (f"{LOG}\n1\n{base64.b64encode(ROOT[:31]).decode()}\n", "must be 32 bytes"),
        (f"{LOG}\n1\n{base64.b64encode(ROOT + b'x').decode()}\n", "must be 32 bytes"),
        (f"{LOG}\n1\n{URLSAFE_ROOT}\n", "not valid base64"),
        (f"{LOG}\n1\n{NONCANONICAL_ROOT}\n", "not canonical base64"),
        (f"{LOG}\n1\n\n", "not valid base64|must be 32"),
        (f"{LOG}\n1\n{ROOT_B64}\n\n", "extension line\\) is empty"),
        (f"{LOG}\n1\n{ROOT_B64}\next\n\n", "line 5 \\(an extension line\\) is empty"),
        (f"{LOG}\t\n1\n{ROOT_B64}\n", "control character"),
        (f"{LOG}\r\n1\n{ROOT_B64}\n", "control character"),
    ],
)
def test_malformed_checkpoints(body: str, message: str) -> None:
    with pytest.raises(NoteError, match=message):
        Checkpoint.parse(body)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"origin": ""}, "origin must be a non-empty"),
        ({"origin": "a\nb"}, "single line"),
        ({"size": -1}, "size must be an integer"),
        ({"size": 2**64}, "size must be an integer"),
        ({"size": True}, "size must be an integer"),
        ({"root": b"short"}, "root must be 32 bytes"),
        ({"extensions": ("",)}, "extension lines must be non-empty"),
        ({"extensions": ("a\nb",)}, "single line"),
    ],
)
def test_invalid_checkpoint_fields(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"origin": LOG, "size": 1, "root": ROOT, **kwargs}
    with pytest.raises(NoteError, match=message):
        Checkpoint(**fields)  # type: ignore[arg-type]


def test_sign_verify_format_parse_round_trip(log_key: SigningKey, witness_key: SigningKey) -> None:
    body = Checkpoint(LOG, 7, ROOT).body()
    sig = sign_note(body, LOG, log_key)
    assert sig.key_hash == ed25519_key_hash(LOG, bytes(log_key.verify_key))
    assert sig.line().startswith(f"\u2014 {LOG} ")
    verify_note(body, sig, LOG, log_key.verify_key)
    cosig = cosign(Checkpoint.parse(body), WITNESS, witness_key, 1_700_000_000)
    text = format_note(body, [sig, cosig])
    parsed_body, sigs = parse_note(text)
    assert parsed_body == body
    assert sigs == [sig, cosig]
    verify_note(parsed_body, sigs[0], LOG, log_key.verify_key)
    assert (
        verify_cosignature(Checkpoint.parse(parsed_body), sigs[1], WITNESS, witness_key.verify_key)
        == 1_700_000_000
    )


def test_other_key_or_name_fails(log_key: SigningKey, witness_key: SigningKey) -> None:
    body = "hello\n"
    sig = sign_note(body, LOG, log_key)
    with pytest.raises(NoteError, match="key ID"):
        verify_note(body, sig, LOG, witness_key.verify_key)
    with pytest.raises(NoteError, match=r"not 'other\.example/log'"):
        verify_note(body, sig, "other.example/log", log_key.verify_key)
    # Same name and key ID but a signature by another key: the signature check fails.
    forged = NoteSignature(LOG, sig.key_hash, sign_note(body, LOG, witness_key).signature)
    with pytest.raises(NoteError, match="does not verify"):
        verify_note(body, forged, LOG, log_key.verify_key)
    with pytest.raises(NoteError, match="does not verify"):
        verify_note("hello!\n", sig, LOG, log_key.verify_key)
    truncated = NoteSignature(LOG, sig.key_hash, sig.signature[:-1])
    with pytest.raises(NoteError, match="must be 64 bytes"):
        verify_note(body, truncated, LOG, log_key.verify_key)


def test_unknown_signature_types_are_kept(log_key: SigningKey) -> None:
    body = "hello\n"
    unknown = NoteSignature(LOG, b"\xde\xad\xbe\xef", b"\x00" * 100)
    sig = sign_note(body, LOG, log_key)
    _, sigs = parse_note(format_note(body, [unknown, sig]))
    assert sigs == [unknown, sig]
    with pytest.raises(NoteError, match="key ID"):
        verify_note(body, sigs[0], LOG, log_key.verify_key)
    verify_note(body, sigs[1], LOG, log_key.verify_key)


def test_signing_rejects_bad_input(log_key: SigningKey) -> None:
    with pytest.raises(NoteError, match="end with a newline"):
        sign_note("no newline", LOG, log_key)
    with pytest.raises(NoteError, match="spaces or"):
        sign_note("x\n", "bad name", log_key)
    with pytest.raises(NoteError, match="spaces or"):
        sign_note("x\n", "bad+name", log_key)
    with pytest.raises(NoteError, match="non-empty"):
        sign_note("x\n", "", log_key)
    with pytest.raises(NoteError, match="control character"):
        sign_note("a\x00b\n", LOG, log_key)
    with pytest.raises(NoteError, match="at least one signature"):
        format_note("x\n", [])
    sig = sign_note("x\n", LOG, log_key)
    with pytest.raises(NoteError, match="too many signatures"):
        format_note("x\n", [sig] * (MAX_SIGNATURES + 1))
    with pytest.raises(NoteError, match="key hash must be 4 bytes"):
        NoteSignature(LOG, b"abc", b"sig")


def _sig_line(name: str = LOG, data: bytes = b"\x01\x02\x03\x04" + b"s" * 64) -> str:
    return f"\u2014 {name} {base64.b64encode(data).decode()}\n"


GOOD_LINE = _sig_line()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no blank line"),
        ("hello\n", "no blank line"),
        ("hello\n" + GOOD_LINE, "no blank line"),
        ("hello\n\n", "no signature lines"),
        ("hello\n\n" + GOOD_LINE[:-1], "does not end with a newline"),
        ("hello\n\n" + GOOD_LINE + "\n", "no signature lines"),
        ("hello\n\n" + GOOD_LINE.replace("\u2014", "-"), "em dash"),
        ("hello\n\n" + GOOD_LINE.replace("\u2014 ", "\u2014"), "em dash"),
        ("hello\n\n" + GOOD_LINE + "trailing text\n", "line 2 does not start with an em dash"),
        ("hello\n\n" + _sig_line("bad\u00a0name"), "spaces or"),
        ("hello\n\n" + _sig_line("bad+name"), "spaces or"),
        ("hello\n\n" + GOOD_LINE.replace(f" {LOG} ", f"  {LOG} "), "must be '— <key name>"),
        ("hello\n\n" + GOOD_LINE.replace(f"{LOG} ", f"{LOG}  "), "must be '— <key name>"),
        ("hello\n\n" + GOOD_LINE.replace("\n", " \n"), "must be '— <key name>"),
        ("hello\n\n\u2014 \n", "must be '— <key name>"),
        ("hello\n\n" + _sig_line(data=b"\x01\x02\x03\x04"), "too short"),
        ("hello\n\n" + _sig_line(data=b""), "too short"),
        ("hello\n\n" + GOOD_LINE.replace("=", ""), "not valid base64"),
        ("hello\n\n" + GOOD_LINE.replace("=\n", "=!\n"), "not valid base64"),
        ("hello\n\n\u2014 a/b AQID/w_-\n", "not valid base64"),
        ("hello\n\n\u2014 a/b AQIDBAX=\n", "not canonical base64"),
        ("hel\rlo\n\n" + GOOD_LINE, "control character"),
        ("hello\t\n\n" + GOOD_LINE, "control character"),
        ("hello\ud800\n\n" + GOOD_LINE, "not valid UTF-8"),
        ("hello\n\n" + GOOD_LINE * (MAX_SIGNATURES + 1), "too many signatures"),
    ],
)
def test_malformed_notes(text: str, message: str) -> None:
    with pytest.raises(NoteError, match=message):
        parse_note(text)


def test_maximum_signatures_accepted() -> None:
    _, sigs = parse_note("hello\n\n" + GOOD_LINE * MAX_SIGNATURES)
    assert len(sigs) == MAX_SIGNATURES >= 16


def test_cosignature_round_trip(witness_key: SigningKey, log_key: SigningKey) -> None:
    checkpoint = Checkpoint(LOG, 1234, ROOT, ("ext",))
    timestamp = 1_679_315_147
    cosig = cosign(checkpoint, WITNESS, witness_key, timestamp)
    assert cosig.name == WITNESS
    assert cosig.key_hash == cosignature_key_hash(WITNESS, bytes(witness_key.verify_key))
    assert cosig.signature[:8] == timestamp.to_bytes(8, "big")
    message = f"cosignature/v1\ntime {timestamp}\n".encode() + checkpoint.body().encode()
    witness_key.verify_key.verify(message, cosig.signature[8:])
    public = witness_key.verify_key
    assert verify_cosignature(checkpoint, cosig, WITNESS, public) == timestamp
    assert (
        verify_cosignature(checkpoint, cosign(checkpoint, WITNESS, witness_key, 0), WITNESS, public)
        == 0
    )
    # A cosignature is not a plain note signature, and vice versa.
    with pytest.raises(NoteError, match="key ID"):
        verify_note(checkpoint.body(), cosig, WITNESS, public)
    plain = sign_note(checkpoint.body(), WITNESS, witness_key)
    with pytest.raises(NoteError, match="key ID"):
        verify_cosignature(checkpoint, plain, WITNESS, public)


def test_cosignature_tampering_fails(witness_key: SigningKey, log_key: SigningKey) -> None:
    checkpoint = Checkpoint(LOG, 1234, ROOT)
    cosig = cosign(checkpoint, WITNESS, witness_key, 1_000)
    public = witness_key.verify_key
    later = NoteSignature(WITNESS, cosig.key_hash, (1_001).to_bytes(8, "big") + cosig.signature[8:])
    with pytest.raises(NoteError, match="does not verify"):
        verify_cosignature(checkpoint, later, WITNESS, public)
    for other in (
        Checkpoint(LOG, 1235, ROOT),
        Checkpoint("example.com/other", 1234, ROOT),
        Checkpoint(LOG, 1234, hashlib.sha256(b"other").digest()),
        Checkpoint(LOG, 1234, ROOT, ("ext",)),
    ):
        with pytest.raises(NoteError, match="does not verify"):
            verify_cosignature(other, cosig, WITNESS, public)
    with pytest.raises(NoteError, match=r"not 'other\.example'"):
        verify_cosignature(checkpoint, cosig, "other.example", public)
    with pytest.raises(NoteError, match="key ID"):
        verify_cosignature(checkpoint, cosig, WITNESS, log_key.verify_key)
    short = NoteSignature(WITNESS, cosig.key_hash, cosig.signature[:-1])
    with pytest.raises(NoteError, match="must be 72 bytes"):
        verify_cosignature(checkpoint, short, WITNESS, public)
    huge = NoteSignature(WITNESS, cosig.key_hash, b"\xff" * 8 + cosig.signature[8:])
    with pytest.raises(NoteError, match="exceeds 2\\^63 - 1"):
        verify_cosignature(checkpoint, huge, WITNESS, public)
    for bad in (-1, 2**63, True):
        with pytest.raises(NoteError, match="timestamp must be"):
            cosign(checkpoint, WITNESS, witness_key, bad)


_alphabet = st.sampled_from(["a", "/", "\n", " ", "+", "=", "\u2014", "A", "0", "1", "\t", "é"])
_note_text = st.one_of(
    st.text(),
    st.lists(_alphabet).map("".join),
    st.builds(
        lambda body, line, tail: body + "\n\n" + line + tail,
        st.text(),
        st.sampled_from([GOOD_LINE, _sig_line("x"), "\u2014 a AAAAAAA=\n"]),
        st.text(),
    ),
)


@given(_note_text)
@settings(max_examples=400, deadline=None)
def test_fuzz_parse_note_raises_only_note_error(text: str) -> None:
    try:
        body, sigs = parse_note(text)
    except NoteError:
        return
    assert 1 <= len(sigs) <= MAX_SIGNATURES
    assert format_note(body, sigs) == text


@given(
    st.one_of(
        st.text(),
        st.lists(_alphabet).map("".join),
        st.builds(
            lambda origin, size, tail: f"{origin}\n{size}\n{ROOT_B64}\n{tail}",
            st.text(),
            st.text(alphabet="0123456789-+ \u0661"),
            st.text(),
        ),
    )
)
@settings(max_examples=400, deadline=None)
def test_fuzz_checkpoint_parse_raises_only_note_error(body: str) -> None:
    try:
        checkpoint = Checkpoint.parse(body)
    except NoteError:
        return
    assert checkpoint.body() == body
