"""`consortium bench redaction` (policy half): what the node would send to a peer under the
default policy, and whether the answer comes back whole.

Leak rate under the default policy: every text is rewritten as it would leave for a peer
(`RedactionPolicy(enabled=True).for_peer(...)`: every detected type pseudonymized,
overlaps resolved by `rewrite`); a labelled span leaks when its exact value (case
sensitive) still appears anywhere in the rewritten text. Round trip through a peer that
echoes its prompt: the rewritten text comes back, and `Vault.restore` must give the
original text exactly; so must `StreamRestorer` when the echo arrives in random chunks
(seeded; chunk sizes 1..`max_chunk` characters, so placeholders are split across chunks),
with no `PlaceholderFragment` at the end. And the opposite check: an echo cut inside a
placeholder must end in `PlaceholderFragment`, every time.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from consortium.evaluation.redaction_eval import Row
from consortium.redaction.detector import Span
from consortium.redaction.policy import PeerActions, RedactionPolicy
from consortium.redaction.pseudonyms import PLACEHOLDER, PlaceholderFragment, StreamRestorer, Vault
from consortium.redaction.rewrite import Rewritten, rewrite


def default_actions() -> PeerActions:
    """The actions of an enabled policy with nothing configured (pseudonymize all)."""
    return RedactionPolicy(enabled=True).for_peer("peer", {})


@dataclass(frozen=True)
class Sent:
    """One text as it would leave, and the task's vault that restores it."""

    original: str
    rewritten: Rewritten
    vault: Vault


def rewrite_rows(
    rows: Sequence[Row], detections: Sequence[Sequence[Span]], actions: PeerActions
) -> list[Sent]:
    """Every row rewritten for a peer under `actions`, each with a vault of its own (one
    text, one task)."""
    out: list[Sent] = []
    for row, spans in zip(rows, detections, strict=True):
        vault = Vault()
        out.append(Sent(row.text, rewrite(row.text, spans, actions, vault), vault))
    return out


def policy_leaks(rows: Sequence[Row], sent: Sequence[Sent]) -> dict[str, Any]:
    """The share of labelled values present verbatim in the text as sent, overall and per
    (mapped) labelled type; messages the policy blocks send nothing and leak nothing."""
    labelled: Counter[str] = Counter()
    leaked: Counter[str] = Counter()
    blocked = 0
    for row, s in zip(rows, sent, strict=True):
        if s.rewritten.blocked:
            blocked += 1
        for g in row.spans:
            labelled[g.entity_type] += 1
            if not s.rewritten.blocked and g.value and g.value in s.rewritten.text:
                leaked[g.entity_type] += 1
    n = sum(labelled.values())
    return {
        "rule": "a labelled value leaks when it appears verbatim (case-sensitive) in the text sent",
        "labelled": n,
        "leaked": sum(leaked.values()),
        "leak_rate": sum(leaked.values()) / n if n else 0.0,
        "by_type": {
            t: {"labelled": labelled[t], "leaked": leaked[t], "leak_rate": leaked[t] / labelled[t]}
            for t in sorted(labelled)
        },
        "texts_blocked": blocked,
        "placeholders_per_text": (
            sum(len(s.rewritten.withheld) for s in sent) / len(sent) if sent else 0.0
        ),
    }


def random_chunks(text: str, rng: random.Random, max_chunk: int) -> list[str]:
    """`text` cut into consecutive pieces of 1..`max_chunk` characters."""
    out: list[str] = []
    at = 0
    while at < len(text):
        n = rng.randint(1, max_chunk)
        out.append(text[at : at + n])
        at += n
    return out


def stream_restore(vault: Vault, chunks: Sequence[str]) -> str:
    """The answer `chunks` make, restored as a streaming peer's answer is: every chunk
    through `StreamRestorer`, then `finish` (which may raise PlaceholderFragment)."""
    restorer = StreamRestorer(vault)
    parts = [restorer.feed(c) for c in chunks]
    parts.append(restorer.finish())
    return "".join(parts)


def _split_placeholders(text: str, chunks: Sequence[str]) -> int:
    """How many placeholders in `text` a boundary between `chunks` falls inside."""
    cuts: set[int] = set()
    at = 0
    for c in chunks[:-1]:
        at += len(c)
        cuts.add(at)
    return sum(any(m.start() < cut < m.end() for cut in cuts) for m in PLACEHOLDER.finditer(text))


def round_trip(
    sent: Sequence[Sent], *, splits: int = 5, max_chunk: int = 8, seed: int = 0
) -> dict[str, Any]:
    """Restore through an echo peer, whole and streamed in `splits` random chunkings per
    text; and an echo cut inside a placeholder, which must raise PlaceholderFragment."""
    rng = random.Random(seed)
    exact = 0
    failures: list[dict[str, Any]] = []
    streamed = streamed_exact = fragments = split_placeholders = 0
    truncations = truncations_refused = 0
    for i, s in enumerate(sent):
        echo = s.rewritten.text
        whole = s.vault.restore(echo)
        ok_whole = whole == s.original
        exact += ok_whole
        ok_stream = True
        for _ in range(splits):
            chunks = random_chunks(echo, rng, max_chunk)
            split_placeholders += _split_placeholders(echo, chunks)
            streamed += 1
            try:
                got = stream_restore(s.vault, chunks)
            except PlaceholderFragment:
                fragments += 1
                ok_stream = False
                continue
            if got == s.original:
                streamed_exact += 1
            else:
                ok_stream = False
        issued = [m for m in PLACEHOLDER.finditer(echo) if m.group(0) in s.vault.issued()]
        if issued:
            m = rng.choice(issued)
            # At least "<X": a lone "<" is text, not a fragment.
            cut = rng.randint(m.start() + 2, m.end() - 1)
            truncations += 1
            try:
                stream_restore(s.vault, random_chunks(echo[:cut], rng, max_chunk))
            except PlaceholderFragment:
                truncations_refused += 1
        if not (ok_whole and ok_stream):
            failures.append({"text": i, "whole_exact": ok_whole, "stream_exact": ok_stream})
    n = len(sent)
    return {
        "texts": n,
        "texts_with_placeholders": sum(bool(s.rewritten.withheld) for s in sent),
        # Originals that already hold a placeholder-like string ("<PERSON_1>"): a vault
        # issuing the same string would restore it wrongly (none in the synthetic set).
        "originals_with_placeholder_like_text": sum(
            bool(PLACEHOLDER.search(s.original)) for s in sent
        ),
        "restore_exact": exact,
        "restore_exact_rate": exact / n if n else 0.0,
        "stream_runs": streamed,
        "stream_exact": streamed_exact,
        "stream_exact_rate": streamed_exact / streamed if streamed else 0.0,
        "stream_placeholder_fragments": fragments,
        "placeholders_split_across_chunks": split_placeholders,
        "chunk_chars": [1, max_chunk],
        "splits_per_text": splits,
        "truncated_inside_placeholder": truncations,
        "truncated_refused": truncations_refused,
        "failures": failures[:20],
        "failure_count": len(failures),
    }


def evaluate_policy(
    rows: Sequence[Row],
    detections: Sequence[Sequence[Span]],
    *,
    splits: int = 5,
    max_chunk: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """Leaks under the default policy and the echo round trip, on `detections`."""
    sent = rewrite_rows(rows, detections, default_actions())
    return {
        "_policy_leaks": policy_leaks(rows, sent),
        "_round_trip": round_trip(sent, splits=splits, max_chunk=max_chunk, seed=seed),
    }
