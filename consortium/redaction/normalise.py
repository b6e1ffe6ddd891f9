"""The copy of a text the detector reads, with Unicode formatting tricks undone, and the
way back from its offsets to the original's.

A value can be hidden from the recognizers without changing what a reader (or a model)
sees: a zero-width space or joiner inside it, non-breaking or thin spaces between its
digits, full-width digits, Unicode dashes, Cyrillic or Greek letters that look Latin,
digits spaced out one by one, an e-mail address spelled `name (at) example (dot) com`.
`normalise` makes the copy detection runs on:

1. each character with its combining marks is NFKC-normalised (full-width and
   mathematical letters and digits become ASCII, ligatures are split); format characters
   (Unicode category Cf: zero-width space, joiners, soft hyphen, BOM, bidi controls) are
   dropped; every Unicode space (Zs: no-break, thin, narrow no-break, figure, ideographic)
   becomes " ", line and paragraph separators "\\n", and every dash (Pd, and the minus
   sign) "-";
2. a word that mixes Latin letters with Cyrillic or Greek ones that look Latin, or is
   made of such look-alikes only in a token with Latin letters or digits or between two
   tokens with digits, has them replaced by the Latin letters (`HOMOGLYPHS`); Greek or
   Cyrillic words among their own script's (an address in Athens) are left as written;
3. single letters and digits separated by spaces, at least six of them and four digits
   ("4 1 1 1 ...", "( 2 1 2 ) 5 5 5 - 0 1 8 7"), are joined (the spaces removed);
4. `(at)`, `[at]`, `{at}`, `<at>` and the same for `dot`, around a local part and a
   domain, become "@" and "."; plain ` at ` and ` dot ` only when the domain spells at
   least one ` dot ` ("john at example dot com", not "look at example.com").

`join_broken_values` makes a second copy for a value broken over two lines (as a value
split over two text parts of a message arrives: A2A's text of a message joins its parts
with line breaks): a line break between two digits, a digit and a dash or parenthesis, or
next to a word holding "@", is removed with the spaces around it. The detector reads it as
well when there is such a break, and keeps the spans crossing one.

`Normalised.original(start, end)` maps a span of the copy back to the original: from the
first original character that made its first character to the last that made its last,
so the invisible characters inside a value are part of the span replaced. Nothing here
logs.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

# Letters of Cyrillic and Greek that fonts draw like Latin ones (from Unicode's
# confusables), as (look-alikes, the Latin letters), written as escapes: they cannot be
# told apart on screen.
_CYRILLIC = (
    "\u0410\u0412\u0415\u0405\u0406\u0408\u041a\u041c"
    "\u041d\u041e\u0420\u0421\u0422\u0423\u0425\u04ae"
    "\u04ba\u04c0\u051a\u051c\u0430\u0435\u043e\u0440"
    "\u0441\u0443\u0445\u0455\u0456\u0458\u04bb\u0501"
    "\u051b\u051d\u04cf\u04af",
    "ABESIJKMHOPCTYXYHIQWaeopcyxsijhdqwly",
)
_GREEK = (
    "\u0391\u0392\u0395\u0396\u0397\u0399\u039a\u039c"
    "\u039d\u039f\u03a1\u03a4\u03a5\u03a7\u03bf\u03b9"
    "\u03ba\u03bd\u03c1\u03c5\u03b1",
    "ABEZHIKMNOPTYXoikvpua",
)
HOMOGLYPHS: dict[str, str] = {
    **dict(zip(*_CYRILLIC, strict=True)),
    **dict(zip(*_GREEK, strict=True)),
    "\u0261": "g",  # Latin small script g
}
_LATIN = re.compile(r"[A-Za-z]")
_LATIN_OR_DIGIT = re.compile(r"[A-Za-z0-9]")
_CONFUSABLE_WORD = re.compile(
    r"[^\W\d_]*[" + "".join(HOMOGLYPHS) + r"][^\W\d_]*"
)  # a word holding at least one look-alike
_EXTRA_DASHES = frozenset("\u2212\u2043\ufe63")  # minus sign, hyphen bullet, small minus
_SPACED_RUN = re.compile(r"(?<![\w.])(?:\( *)?[^\W_](?:(?: +| *[-/()] *)[^\W_]){5,}(?!\w)")
_BREAK = re.compile(r"[ \t]*\n[ \t]*")
_VALUE_CHAR = re.compile(r"[\w.+@-]")
_SPACES = re.compile(r" +")
_AT_WRAPPED = r"\s*[\(\[\{<]\s*at\s*[\)\]\}>]\s*"
_DOT_WRAPPED = r"\s*[\(\[\{<]\s*dot\s*[\)\]\}>]\s*"
_DOT_ANY = rf"(?:{_DOT_WRAPPED}|\s+dot\s+|\.)"
_EMAIL_SPELLED = re.compile(
    rf"(?<![\w.+-])[\w+-]+(?:{_DOT_ANY}[\w+-]+)*"
    rf"(?P<at>{_AT_WRAPPED}|\s+at\s+|\s*@\s*)"
    rf"[\w-]+(?:{_DOT_ANY}[\w-]+)+",
    re.IGNORECASE,
)
_SPELLED_PARTS = re.compile(rf"{_AT_WRAPPED}|{_DOT_WRAPPED}|\s+at\s+|\s+dot\s+|\s*@\s*", re.I)
_SPELLED_DOT = re.compile(rf"{_DOT_WRAPPED}|\s+dot\s+", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Normalised:
    """The detector's copy of a text: `text`, and for each of its characters the range
    of the original it came from (`None`: the copy is the original)."""

    text: str
    lo: tuple[int, ...] | None = None
    hi: tuple[int, ...] | None = None

    def original(self, start: int, end: int) -> tuple[int, int]:
        """The original's span for the copy's `[start, end)` (end > start)."""
        if self.lo is None or self.hi is None:
            return start, end
        return self.lo[start], self.hi[end - 1]


Edit = tuple[int, int, str]  # replace copy[start:end] with the text


def normalise(text: str) -> Normalised:
    """The copy of `text` detection runs on, with its way back (see the module)."""
    if text.isascii():
        copy, lo, hi = text, None, None
    else:
        copy, lo_list, hi_list = _fold_characters(text)
        copy = _fold_homoglyphs(copy)
        lo, hi = lo_list, hi_list
    edits = [*_spaced_digits(copy), *_spelled_emails(copy)]
    if not edits:
        if lo is None or hi is None:
            return Normalised(text)
        return Normalised(copy, tuple(lo), tuple(hi))
    if lo is None or hi is None:
        lo, hi = list(range(len(text))), list(range(1, len(text) + 1))
    copy, lo, hi = _apply(copy, lo, hi, edits)
    return Normalised(copy, tuple(lo), tuple(hi))


@lru_cache(maxsize=4096)
def _fold(cluster: str) -> str:
    """One character with its combining marks, as the copy has it."""
    if len(cluster) == 1 and unicodedata.category(cluster) == "Cf":
        return ""
    out: list[str] = []
    for c in unicodedata.normalize("NFKC", cluster):
        category = unicodedata.category(c)
        if category == "Cf":
            continue
        if category == "Zs":
            out.append(" ")
        elif category in ("Zl", "Zp"):
            out.append("\n")
        elif category == "Pd" or c in _EXTRA_DASHES:
            out.append("-")
        else:
            out.append(c)
    return "".join(out)


def _fold_characters(text: str) -> tuple[str, list[int], list[int]]:
    out: list[str] = []
    lo: list[int] = []
    hi: list[int] = []
    n = len(text)
    i = 0
    while i < n:
        j = i + 1
        while j < n and unicodedata.category(text[j])[0] == "M":
            j += 1
        cluster = text[i:j]
        piece = cluster if j == i + 1 and cluster.isascii() else _fold(cluster)
        for c in piece:
            out.append(c)
            lo.append(i)
            hi.append(j)
        i = j
    return "".join(out), lo, hi


def _fold_homoglyphs(copy: str) -> str:
    """Look-alikes replaced in words that hold a Latin letter, or are made of look-alikes
    only and sit in a token with a Latin letter or a digit ("GB82" with a Cyrillic B) or
    between two tokens with digits (an IBAN's "WEST" in Cyrillic); one for one, so the
    offsets do not move. A Greek or Cyrillic word among its own script's is left alone."""

    def latin(m: re.Match[str]) -> str:
        word = m.group(0)
        if _LATIN.search(word) or (
            all(c in HOMOGLYPHS for c in word) and _in_latin_context(copy, m.start(), m.end())
        ):
            return "".join(HOMOGLYPHS.get(c, c) for c in word)
        return word

    return _CONFUSABLE_WORD.sub(latin, copy)


def _in_latin_context(copy: str, start: int, end: int) -> bool:
    left = copy[max(0, start - 64) : start].split()
    right = copy[end : end + 64].split()
    own = (left[-1] if left and not copy[start - 1].isspace() else "") + (
        right[0] if right and not copy[end : end + 1].isspace() else ""
    )
    if _LATIN_OR_DIGIT.search(own):
        return True
    before = left[-2] if own and len(left) > 1 else (left[-1] if left else "")
    after = right[1] if own and len(right) > 1 else (right[0] if right else "")
    return any(c.isdigit() for c in before) and any(c.isdigit() for c in after)


def join_broken_values(copy: Normalised) -> tuple[Normalised, list[int]] | None:
    """`copy` with the line breaks that may break a value removed (see the module), and
    where in it each was; None when it has none."""
    edits = [
        (m.start(), m.end(), "") for m in _BREAK.finditer(copy.text) if _breaks_value(copy.text, m)
    ]
    if not edits:
        return None
    n = len(copy.text)
    lo = list(copy.lo) if copy.lo is not None else list(range(n))
    hi = list(copy.hi) if copy.hi is not None else list(range(1, n + 1))
    text, lo, hi = _apply(copy.text, lo, hi, edits)
    joins: list[int] = []
    removed = 0
    for start, end, _ in edits:
        joins.append(start - removed)
        removed += end - start
    return Normalised(text, tuple(lo), tuple(hi)), joins


def _breaks_value(text: str, m: re.Match[str]) -> bool:
    """Whether the line break `m` may be inside a value: between digits (or a digit and
    a dash, parenthesis or plus), or between two characters of an e-mail address."""
    if m.start() == 0 or m.end() == len(text):
        return False
    before, after = text[m.start() - 1], text[m.end()]
    if (before.isdigit() and (after.isdigit() or after in "(+-")) or (
        after.isdigit() and before in ")+-"
    ):
        return True
    if not (_VALUE_CHAR.match(before) and _VALUE_CHAR.match(after)):
        return False
    head = text[max(0, m.start() - 254) : m.start()].rsplit(None, 1)[-1]
    tail = text[m.end() : m.end() + 254].split(None, 1)[0]
    return "@" in head or "@" in tail


def _spaced_digits(copy: str) -> Iterator[Edit]:
    """The spaces inside a run of single letters and digits (four digits or more),
    removed."""
    for m in _SPACED_RUN.finditer(copy):
        if sum(c.isdigit() for c in m.group(0)) < 4:
            continue
        for gap in _SPACES.finditer(m.group(0)):
            yield m.start() + gap.start(), m.start() + gap.end(), ""


def _spelled_emails(copy: str) -> Iterator[Edit]:
    """Spelled `at` and `dot` of an e-mail address, made "@" and "."."""
    if "@" not in copy and not re.search(r"\b(?:at|dot)\b", copy, re.IGNORECASE):
        return
    for m in _EMAIL_SPELLED.finditer(copy):
        at = m.group("at")
        if at.strip() == "@" and not _SPELLED_DOT.search(m.group(0)):
            continue  # an ordinary address
        domain = m.end("at") - m.start()
        if at.strip().lower() == "at" and not _SPELLED_DOT.search(m.group(0), domain):
            continue  # "look at example.com"
        for part in _SPELLED_PARTS.finditer(m.group(0)):
            word = part.group(0).strip(" \t\n()[]{}<>").lower()
            yield (
                m.start() + part.start(),
                m.start() + part.end(),
                "@"
                if word
                in (
                    "at",
                    "@",
                )
                else ".",
            )


def _apply(
    copy: str, lo: list[int], hi: list[int], edits: list[Edit]
) -> tuple[str, list[int], list[int]]:
    """`edits` (non-overlapping) applied; an inserted character comes from the whole
    original range of what it replaces."""
    out: list[str] = []
    new_lo: list[int] = []
    new_hi: list[int] = []
    at = 0
    for start, end, replacement in sorted(_disjoint(edits)):
        out.append(copy[at:start])
        new_lo += lo[at:start]
        new_hi += hi[at:start]
        if replacement:
            out.append(replacement)
            new_lo += [lo[start]] * len(replacement)
            new_hi += [hi[end - 1]] * len(replacement)
        at = end
    out.append(copy[at:])
    new_lo += lo[at:]
    new_hi += hi[at:]
    return "".join(out), new_lo, new_hi


def _disjoint(edits: list[Edit]) -> list[Edit]:
    """The edits in order, an edit overlapping one before it dropped."""
    kept: list[Edit] = []
    end = -1
    for e in sorted(edits):
        if e[0] >= end and e[1] > e[0]:
            kept.append(e)
            end = e[1]
    return kept
