"""Applying a peer's actions to one text's detected spans: the text as it may leave.

Overlapping spans (the detector keeps spans of different types that overlap) are
replaced together, as one span over the union of their characters, under the type and
action of the one ranked first: the stricter action (block > mask > pseudonymize > keep),
then the higher score, then the longer span. So the text a stricter action covers is never
sent because a laxer one covered part of it, and no character of a detected span is sent
in clear because another span covered only part of it (`keep` spans take no part). A
`block` anywhere in the text, overlapped or not, blocks the message. A pseudonymized span
becomes the task vault's placeholder (`<PERSON_1>`), a masked one its type without a
number (`<PERSON>`), which no vault restores.

`Rewritten.withheld` lists what was replaced, (type, value), in order: the caller makes
the receipts' disclosures from it and must keep it out of logs and spans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from consortium.redaction.policy import SEVERITY, Action, PeerActions
from consortium.redaction.pseudonyms import Vault

if TYPE_CHECKING:  # the detector imports spaCy and Presidio: only where it runs
    from consortium.redaction.detector import Span


@dataclass(frozen=True)
class Rewritten:
    """One text as it may leave: the new text, what was replaced (type, action, value),
    and the types whose action is `block` found in it (then `text` is empty: nothing of
    it may leave)."""

    text: str
    withheld: tuple[tuple[str, Action, str], ...] = ()
    blocked: tuple[str, ...] = ()


@dataclass
class _Group:
    """Overlapping spans: the union of their characters, the first-ranked one's type and
    action."""

    start: int
    end: int
    entity_type: str
    action: Action


def mask(entity_type: str) -> str:
    """The irreversible, typed placeholder of a masked span."""
    return f"<{entity_type}>"


def rewrite(text: str, spans: Sequence[Span], actions: PeerActions, vault: Vault) -> Rewritten:
    """`text` with `actions` applied to its `spans` (pseudonyms from `vault`)."""
    vault.reserve(text)
    acting = [(s, actions.action(s.entity_type)) for s in spans]
    blocked = tuple(sorted({s.entity_type for s, a in acting if a == "block"}))
    if blocked:
        return Rewritten("", (), blocked)  # nothing of it may leave
    ranked = sorted(
        ((s, a) for s, a in acting if a != "keep"),
        key=lambda sa: (-SEVERITY[sa[1]], -sa[0].score, -(sa[0].end - sa[0].start), sa[0].start),
    )
    # Overlapping spans form one group, replaced whole under its first-ranked span's type
    # and action: no character of a detected span is sent in clear because a span ranked
    # above it covered only part of it.
    groups: list[_Group] = []
    for s, a in ranked:
        hit = [g for g in groups if s.start < g.end and g.start < s.end]
        if not hit:
            groups.append(_Group(s.start, s.end, s.entity_type, a))
            continue
        head = hit[0]  # groups are made in rank order: the first one ranks highest
        head.start = min(s.start, *(g.start for g in hit))
        head.end = max(s.end, *(g.end for g in hit))
        groups = [g for g in groups if g is head or all(g is not h for h in hit)]
    groups.sort(key=lambda g: g.start)
    out: list[str] = []
    withheld: list[tuple[str, Action, str]] = []
    at = 0
    for g in groups:
        value = text[g.start : g.end]
        out.append(text[at : g.start])
        out.append(
            vault.placeholder(g.entity_type, value)
            if g.action == "pseudonymize"
            else mask(g.entity_type)
        )
        withheld.append((g.entity_type, g.action, value))
        at = g.end
    out.append(text[at:])
    return Rewritten("".join(out), tuple(withheld))
