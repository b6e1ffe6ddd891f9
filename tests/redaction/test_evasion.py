"""Redaction against Unicode evasion: every PII type written in every evasion style
(invisible characters inside the value, Unicode spaces and dashes between its digits,
full-width digits, spaced-out digits, look-alike letters, spelled e-mail addresses, the
value split across two text parts) goes through the node's `PolicyRedactor` under the
default policy (pseudonymize every detected type), and none of it reaches the peer:
neither the value as written nor as the base value, compared after normalisation, nor
any digit of it, nor any word of it. And the precision guard: ordinary text written with
no-break spaces, thin spaces and Unicode dashes is redacted exactly as its ASCII form is.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from a2a.types import a2a_pb2

from consortium.federation.admin import create_federation
from consortium.federation.watcher import RosterWatcher
from consortium.node.redaction import PolicyRedactor
from consortium.redaction.detector import Detector
from consortium.redaction.normalise import normalise
from consortium.redaction.policy import RedactionPolicy
from consortium.redaction.receipts import DisclosureStore
from consortium.trust.keys import load_public_key

ASYNC = pytest.mark.asyncio(loop_scope="module")

# type -> (value, a sentence carrying it: no digit, no word of any value)
VALUES: dict[str, tuple[str, str]] = {
    "CREDIT_CARD": ("4111 1111 1111 1111", "Please charge my card {} today."),
    "US_SSN": ("536-90-4399", "My social security number is {}."),
    "PHONE_NUMBER": ("(212) 555-0187", "Call me on my mobile {} tonight."),
    "IBAN_CODE": ("GB82 WEST 1234 5698 7654 32", "Wire the refund to IBAN {} please."),
    "EMAIL_ADDRESS": ("maria.gonzalez@example.com", "Write to {} about the invoice."),
    "PERSON": ("Maria Gonzalez", "Please forward the invoice to {} in accounts."),
}

SPACES = {"nbsp": "\u00a0", "thin": "\u2009", "narrow_nbsp": "\u202f", "figure": "\u2007"}
DASHES = "\u2013\u2014\u2011\u2212\u2010"  # en, em, non-breaking hyphen, minus, hyphen
# Latin -> Cyrillic look-alikes (escaped: on screen they are the same letters)
LOOK_ALIKES = str.maketrans(
    "aceopxyiABEKMHOPCTXSW",
    "\u0430\u0441\u0435\u043e\u0440\u0445\u0443\u0456\u0410\u0412"
    "\u0415\u041a\u041c\u041d\u041e\u0420\u0421\u0422\u0425\u0405\u051c",
)
_SEPARATOR = re.compile(r"(?<=[\w)])[ -](?=[\w(])")


def _between(c: str) -> Callable[[str], str]:
    return lambda v: c.join(v)


def _spaces(c: str) -> Callable[[str], str | None]:
    return lambda v: _SEPARATOR.sub(c, v) if _SEPARATOR.search(v) else None


def _fullwidth(v: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in v)


def _spaced(v: str) -> str | None:
    digits = sum(c.isdigit() for c in v)
    return " ".join(c for c in v if not c.isspace()) if digits >= 4 else None


def _dashes(v: str) -> str | None:
    if not any(c.isdigit() for c in v) or not _SEPARATOR.search(v):
        return None
    seps = iter(DASHES * 4)
    return _SEPARATOR.sub(lambda _: next(seps), v)


def _homoglyphs(v: str) -> str | None:
    out = v.translate(LOOK_ALIKES)
    return out if out != v else None


def _email(at: str, dot: str) -> Callable[[str], str | None]:
    def spell(v: str) -> str | None:
        if "@" not in v:
            return None
        local, domain = v.split("@")
        return local.replace(".", dot) + at + domain.replace(".", dot)

    return spell


# style -> the value written in that style (None: the style does not apply to it)
STYLES: dict[str, Callable[[str], str | None]] = {
    "zwsp": _between("\u200b"),
    "zwj": _between("\u200d"),
    "soft_hyphen": _between("\u00ad"),
    **{name: _spaces(c) for name, c in SPACES.items()},
    "fullwidth": _fullwidth,
    "spaced_out": _spaced,
    "unicode_dashes": _dashes,
    "homoglyphs": _homoglyphs,
    "email_parentheses": _email(" (at) ", " (dot) "),
    "email_brackets": _email("[at]", "[dot]"),
    "email_words": _email(" at ", " dot "),
}
# Split across two text parts: in the middle of the value, and at its separator nearest
# the middle (kept at the end of the first part).
SPLITS = ("split_middle", "split_at_separator")


def _split(value: str, how: str) -> tuple[str, str]:
    k = len(value) // 2
    if how == "split_at_separator":
        cuts = [i + 1 for i, c in enumerate(value) if c in " -@."]
        k = min(cuts, key=lambda i: abs(i - k))
    return value[:k], value[k:]


def _cases() -> list[tuple[str, str, str]]:
    out = []
    for entity, (value, _) in VALUES.items():
        for style, write in STYLES.items():
            written = write(value)
            if written is not None:
                out.append((entity, style, written))
    return out


CASES = _cases()
_PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*>")


def leaks(value: str, written: str, sent: str) -> list[str]:
    """What of `value` (written as `written`) the peer can read in `sent`."""
    seen = normalise(_PLACEHOLDER.sub(" ", sent)).text.casefold()
    found = [v for v in {value, written} if normalise(v).text.casefold().replace(" ", "") in seen]
    if any(c.isdigit() for c in value) and any(c.isdigit() for c in seen):
        found.append("digits " + "".join(c for c in seen if c.isdigit()))
    words = set(re.findall(r"[^\W\d_]{4,}", seen))
    found += [w for w in re.findall(r"[^\W\d_]{4,}", value.casefold()) if w in words]
    return found


POLICY = RedactionPolicy(enabled=True)


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector(POLICY)


@pytest.fixture(scope="module")
def redactor(tmp_path_factory: pytest.TempPathFactory, detector: Detector) -> PolicyRedactor:
    where = tmp_path_factory.mktemp("evasion")
    fed = create_federation("Evasion Federation", where / "fed")
    roster = RosterWatcher(fed.roster, [load_public_key(fed.admin_public)])
    return PolicyRedactor(POLICY, detector, roster, DisclosureStore(where / "r.sqlite3"))


async def _sent(redactor: PolicyRedactor, *parts: str) -> list[str]:
    message = a2a_pb2.Message(
        message_id="m-1",
        role=a2a_pb2.ROLE_USER,
        parts=[a2a_pb2.Part(text=p) for p in parts],
    )
    out = await redactor.redact(message, "globex")
    return [p.text for p in out.parts]


def test_the_corpus_covers_every_type_and_style() -> None:
    """Every style applies to every type but where it cannot: spaces, dashes and spacing
    out need separators or digits, look-alikes letters, spellings an e-mail address."""
    digits_only = {"CREDIT_CARD", "US_SSN", "PHONE_NUMBER"}
    not_applicable = {
        *(("EMAIL_ADDRESS", s) for s in (*SPACES, "spaced_out", "unicode_dashes")),
        *(("PERSON", s) for s in ("spaced_out", "unicode_dashes")),
        *((e, "homoglyphs") for e in digits_only),
        *((e, s) for e in VALUES if e != "EMAIL_ADDRESS" for s in STYLES if "email" in s),
    }
    covered = {(e, s) for e, s, _ in CASES}
    assert covered == {(e, s) for e in VALUES for s in STYLES} - not_applicable
    assert len(CASES) == 58


@ASYNC
async def test_the_plain_values_are_redacted(redactor: PolicyRedactor) -> None:
    for entity, (value, carrier) in VALUES.items():
        (sent,) = await _sent(redactor, carrier.format(value))
        assert not leaks(value, value, sent), (entity, sent)


@pytest.mark.parametrize(
    ("entity", "style", "written"), CASES, ids=[f"{e}-{s}" for e, s, _ in CASES]
)
@ASYNC
async def test_no_evasion_reaches_the_peer(
    redactor: PolicyRedactor, entity: str, style: str, written: str
) -> None:
    value, carrier = VALUES[entity]
    text = carrier.format(written)
    (sent,) = await _sent(redactor, text)
    assert not leaks(value, written, sent), (style, sent)
    # The whole original value is replaced, its invisible characters with it.
    assert written not in sent
    assert not set(sent) & {"\u200b", "\u200d", "\u00ad"}, repr(sent)


@pytest.mark.parametrize("how", SPLITS)
@pytest.mark.parametrize("entity", list(VALUES))
@ASYNC
async def test_a_value_split_across_parts_reaches_the_peer_in_neither(
    redactor: PolicyRedactor, entity: str, how: str
) -> None:
    value, carrier = VALUES[entity]
    head, tail = _split(value, how)
    before, after = carrier.split("{}")
    parts = (before + head, tail + after)
    sent = await _sent(redactor, *parts)
    assert len(sent) == 2
    for piece in sent:
        assert not leaks(value, value, piece), (how, sent)
    assert not leaks(value, value, "\n".join(sent)), (how, sent)
    # The node's own executor hands a peer the user's parts joined by line breaks.
    (joined,) = await _sent(redactor, "\n".join(parts))
    assert not leaks(value, value, joined), (how, joined)


# Ordinary text, no PII, in typographic form (no-break and thin spaces, Unicode dashes,
# a soft hyphen), and the same text in ASCII one character for one.
ORDINARY = [
    "See section\u00a04.2 and pages 10\u201312 of the report\u2009\u2014 it is short.",
    "The population grew to 1\u2009234\u2009567 by the end of the decade.",
    "Prices rose 5\u00a0% in the second quarter \u2013 less than expected.",
    "We\u2019ll meet at the caf\u00e9 \u2014 it\u2019s the one by the river, at 9\u202fam.",
    "The 2019\u20132020 season ended early; the score was 3\u00a0\u2013\u00a01.",
    "Our meeting is on the 3rd floor\u00a0\u2014 room\u00a012, next to the kitchen.",
    "Read chapters 1\u20133 and 7\u20139, then write a summary of about 500\u00a0words.",
    "The co\u00adoperative was founded in 1998 and now has 240 members.",
]
_ASCII = str.maketrans({"\u00a0": " ", "\u2009": " ", "\u202f": " ", "\u2013": "-", "\u2014": "-"})


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_typography_is_redacted_no_more_than_ascii(detector: Detector, text: str) -> None:
    ascii_text = text.translate(_ASCII)
    if "\u00ad" in ascii_text:
        ascii_text = ascii_text.replace("\u00ad", "")
        after = {
            (s.entity_type, normalise(text[s.start : s.end]).text) for s in detector.detect(text)
        }
    else:
        after = {
            (s.entity_type, text[s.start : s.end].translate(_ASCII)) for s in detector.detect(text)
        }
    before = {
        (s.entity_type, ascii_text[s.start : s.end]) for s in detector.detect_as_written(ascii_text)
    }
    assert after == before, text


def test_spans_map_back_to_the_original_offsets(detector: Detector) -> None:
    text = "card 4\u200b111\u00a01111\u00a0\uff11\uff11\uff11\uff11\u00a01111 ok"
    (card,) = [s for s in detector.detect(text) if s.entity_type == "CREDIT_CARD"]
    assert text[card.start : card.end] == text[5:-3]
    text = "Write to maria.gonzalez (at) example (dot) com today"
    (email,) = [s for s in detector.detect(text) if s.entity_type == "EMAIL_ADDRESS"]
    assert text[email.start : email.end] == "maria.gonzalez (at) example (dot) com"


def test_values_on_adjacent_lines_are_not_joined_into_another(detector: Detector) -> None:
    """The benchmark set's address blocks: a postal code above a phone number is not one
    (Luhn-valid) card number, while a card broken over two lines is found whole."""
    text = "Lara Pottinger\n Portugal 30971\n21 253 109 8211-Office"
    assert "CREDIT_CARD" not in {s.entity_type for s in detector.detect(text)}
    text = "Please charge my card 4111 1111\n1111 1111 today."
    (card,) = [s for s in detector.detect(text) if s.entity_type == "CREDIT_CARD"]
    assert text[card.start : card.end] == "4111 1111\n1111 1111"
