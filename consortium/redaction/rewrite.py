"""Applying a peer's actions to one text's detected spans: the text as it may leave.

Overlapping spans (the detector keeps spans of different types that overlap) are
resolved toward the stricter action (block > mask > pseudonymize > keep), then the higher
score, then the longer span: the text a stricter action covers is never sent because a
laxer one covered part of it. A `block` anywhere in the text, overlapped or not, blocks
the message. A pseudonymized span becomes the task vault's placeholder (`<PERSON_1>`), a
masked one its type without a number (`<PERSON>`), which no vault restores.

`Rewritten.withheld` lists what was replaced, (type, value), in order: the caller makes
the receipts' disclosures from it and must keep it out of logs and spans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from consortium.redaction.detector import Span
from consortium.redaction.policy import SEVERITY, Action, PeerActions
from consortium.redaction.pseudonyms import Vault


@dataclass(frozen=True)
class Rewritten:
    """One text as it may leave: the new text, what was replaced (type, action, value),
    and the types whose action is `block` found in it (then `text` is empty: nothing of
    it may leave)."""

    text: str
    withheld: tuple[tuple[str, Action, str], ...] = ()
    blocked: tuple[str, ...] = ()


def mask(entity_type: str) -> str:
    """The irreversible, typed placeholder of a masked span."""
    return f"<{entity_type}>"


def rewrite(text: str, spans: Sequence[Span], actions: PeerActions, vault: Vault) -> Rewritten:
    """`text` with `actions` applied to its `spans` (pseudonyms from `vault`)."""
    acting = [(s, actions.action(s.entity_type)) for s in spans]
    blocked = tuple(sorted({s.entity_type for s, a in acting if a == "block"}))
    if blocked:
        return Rewritten("", (), blocked)  # nothing of it may leave
    ranked = sorted(
        ((s, a) for s, a in acting if a != "keep"),
        key=lambda sa: (-SEVERITY[sa[1]], -sa[0].score, -(sa[0].end - sa[0].start), sa[0].start),
    )
    chosen: list[tuple[Span, Action]] = []
    for s, a in ranked:
        if all(s.end <= c.start or s.start >= c.end for c, _ in chosen):
            chosen.append((s, a))
    chosen.sort(key=lambda sa: sa[0].start)
    out: list[str] = []
    withheld: list[tuple[str, Action, str]] = []
    at = 0
    for s, act in chosen:
        value = text[s.start : s.end]
        out.append(text[at : s.start])
        out.append(
            vault.placeholder(s.entity_type, value)
            if act == "pseudonymize"
            else mask(s.entity_type)
        )
        withheld.append((s.entity_type, act, value))
        at = s.end
    out.append(text[at:])
    return Rewritten("".join(out), tuple(withheld))
