"""Reversible pseudonyms for one task: typed, numbered placeholders, and restoring them.

A task's `Vault` replaces each detected span with a placeholder a model can still reason
with, `<PERSON_1>`, `<EMAIL_ADDRESS_2>`: the same value of the same type gets the same
placeholder throughout the task (every member of a group sees the same pseudonyms), and
the numbers count first appearances within the task, so nothing links a placeholder to
the value or to another task's placeholders. Values are looked up by an HMAC under a key
drawn for the task, so the vault's index holds no value; the values themselves are kept
to restore the answer, in memory only, and the vault is dropped with its task. Nothing
here logs.

`Vault.restore` puts the values back into a complete text. `StreamRestorer` does it for
an answer that arrives in chunks, where a placeholder may be split across two chunks: it
emits everything that cannot be the start of a placeholder and holds back only a tail
that still can (at most the longest placeholder's length), and at the end refuses a tail
left holding a fragment of a placeholder of this vault, "<P" or longer
(`PlaceholderFragment`: fail closed, the caller does not show a half-restored answer).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PLACEHOLDER = re.compile(r"<([A-Z][A-Z0-9_]*?)_(\d+)>")
# A tail that may still grow into a placeholder: "<", "<PER", "<PERSON_", "<PERSON_1".
_PARTIAL = re.compile(r"<(?:[A-Z][A-Z0-9_]*)?$")
_TYPE = re.compile(r"^[A-Z][A-Z0-9_]*$")


class PlaceholderFragment(ValueError):
    """A streamed answer ended inside what may be one of the task's placeholders."""


@dataclass(frozen=True)
class Replacement:
    """One span of the original text replaced: where, its entity type."""

    start: int
    end: int
    entity_type: str


class Vault:
    """The placeholders of one task and the values behind them."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)
        self._by_digest: dict[bytes, str] = {}  # HMAC(type, value) -> placeholder
        self._values: dict[str, str] = {}  # placeholder -> value
        self._counts: dict[str, int] = {}  # type -> placeholders issued
        self._last: dict[str, int] = {}  # type -> the number last issued
        # Placeholder-like strings the task's own texts hold: never issued, never restored.
        self._reserved: set[str] = set()

    def reserve(self, text: str) -> None:
        """Keeps the placeholder-like strings already in `text` (a user who wrote
        `<PERSON_1>`) out of this vault's numbering, so they come back as written. Call it
        for every text of a message before any is pseudonymized."""
        self._reserved.update(m.group(0) for m in PLACEHOLDER.finditer(text))

    def placeholder(self, entity_type: str, value: str) -> str:
        """The task's placeholder for `value` of `entity_type` (issued on first use)."""
        if not _TYPE.match(entity_type):
            raise ValueError("an entity type is upper case letters, digits and '_'")
        digest = hmac.new(self._key, f"{entity_type}\x00{value}".encode(), hashlib.sha256).digest()
        found = self._by_digest.get(digest)
        if found is not None:
            return found
        n = self._last.get(entity_type, 0) + 1
        while f"<{entity_type}_{n}>" in self._reserved:
            n += 1
        self._last[entity_type] = n
        self._counts[entity_type] = self._counts.get(entity_type, 0) + 1
        made = f"<{entity_type}_{n}>"
        self._by_digest[digest] = made
        self._values[made] = value
        return made

    def pseudonymize(self, text: str, spans: Iterable[Replacement]) -> str:
        """`text` with each span replaced by its placeholder. Spans may come in any order;
        overlapping spans are refused (the detector merges them first)."""
        ordered = sorted(spans, key=lambda s: (s.start, s.end))
        out: list[str] = []
        at = 0
        for s in ordered:
            if not 0 <= s.start < s.end <= len(text):
                raise ValueError(f"span {s.start}-{s.end} is outside the text")
            if s.start < at:
                raise ValueError(f"span {s.start}-{s.end} overlaps the one before it")
            out.append(text[at : s.start])
            out.append(self.placeholder(s.entity_type, text[s.start : s.end]))
            at = s.end
        out.append(text[at:])
        return "".join(out)

    def restore(self, text: str) -> str:
        """`text` with every placeholder of this vault replaced by its value; other
        `<...>` text (a placeholder the peer made up) is left as it is."""
        return PLACEHOLDER.sub(lambda m: self._values.get(m.group(0), m.group(0)), text)

    def counts(self) -> dict[str, int]:
        """Placeholders issued per entity type (what provenance may say: no values)."""
        return dict(self._counts)

    @property
    def longest(self) -> int:
        """The length of the longest placeholder issued (0: none)."""
        return max((len(p) for p in self._values), default=0)

    def issued(self) -> Sequence[str]:
        return tuple(self._values)


class StreamRestorer:
    """Restores an answer that arrives in chunks (`feed` each, then `finish`)."""

    def __init__(self, vault: Vault) -> None:
        self._vault = vault
        self._held = ""

    def feed(self, chunk: str) -> str:
        """What of the answer so far can be shown now, restored."""
        text = self._held + chunk
        cut = self._hold_from(text)
        self._held = text[cut:]
        return self._vault.restore(text[:cut])

    def finish(self) -> str:
        """The rest of the answer, restored. Raises PlaceholderFragment when what is left
        is the beginning of one of the vault's placeholders."""
        rest, self._held = self._held, ""
        # A lone "<" is text: a fragment names at least the start of a type.
        if len(rest) > 1 and any(p.startswith(rest) and p != rest for p in self._vault.issued()):
            raise PlaceholderFragment("the answer ended inside a placeholder")
        return self._vault.restore(rest)

    def _hold_from(self, text: str) -> int:
        """Where the tail that may still become a placeholder starts (len(text): none)."""
        start = text.rfind("<", max(0, len(text) - max(self._vault.longest, 1)))
        if start < 0 or not _PARTIAL.match(text, start):
            return len(text)
        return start
