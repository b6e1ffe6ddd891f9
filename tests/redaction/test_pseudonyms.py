"""Pseudonyms of one task: consistent within it, unlinkable across tasks, restored in full
texts and in streams split anywhere, failing closed on a fragment left at the end."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consortium.redaction.pseudonyms import (
    PlaceholderFragment,
    Replacement,
    StreamRestorer,
    Vault,
)

TEXT = "Ann Lee wrote to bob@example.com; Ann Lee's IBAN is DE89370400440532013000."


def _span(value: str, kind: str, after: int = 0) -> Replacement:
    start = TEXT.index(value, after)
    return Replacement(start, start + len(value), kind)


SPANS = [
    _span("Ann Lee", "PERSON"),
    _span("bob@example.com", "EMAIL_ADDRESS"),
    _span("Ann Lee", "PERSON", 1),
    _span("DE89370400440532013000", "IBAN_CODE"),
]


def test_the_same_value_gets_the_same_placeholder_within_a_task() -> None:
    vault = Vault()
    out = vault.pseudonymize(TEXT, reversed(SPANS))  # any order
    assert out == ("<PERSON_1> wrote to <EMAIL_ADDRESS_1>; <PERSON_1>'s IBAN is <IBAN_CODE_1>.")
    assert vault.restore(out) == TEXT
    assert vault.counts() == {"PERSON": 1, "EMAIL_ADDRESS": 1, "IBAN_CODE": 1}
    assert vault.placeholder("PERSON", "Bo Wu") == "<PERSON_2>"
    # The same characters as another type are another value.
    assert vault.placeholder("LOCATION", "Ann Lee") == "<LOCATION_1>"


def test_placeholders_do_not_link_tasks() -> None:
    a, b = Vault(), Vault()
    a.placeholder("PERSON", "Zed")
    assert a.placeholder("PERSON", "Ann Lee") == "<PERSON_2>"
    assert b.placeholder("PERSON", "Ann Lee") == "<PERSON_1>"  # numbering is per task
    # The index is keyed per task: the same value hashes differently under two keys.
    assert a._by_digest.keys().isdisjoint(b._by_digest.keys())


def test_restore_leaves_placeholders_the_vault_did_not_issue() -> None:
    vault = Vault()
    vault.placeholder("PERSON", "Ann")
    assert vault.restore("<PERSON_1> and <PERSON_7> <b>") == "Ann and <PERSON_7> <b>"


def test_bad_spans_and_types_are_refused() -> None:
    vault = Vault()
    with pytest.raises(ValueError, match="overlaps"):
        vault.pseudonymize(TEXT, [Replacement(0, 7, "PERSON"), Replacement(4, 9, "PERSON")])
    with pytest.raises(ValueError, match="outside"):
        vault.pseudonymize("abc", [Replacement(2, 9, "PERSON")])
    with pytest.raises(ValueError, match="entity type"):
        vault.placeholder("person>", "x")


def _stream(vault: Vault, chunks: list[str]) -> str:
    restorer = StreamRestorer(vault)
    return "".join(restorer.feed(c) for c in chunks) + restorer.finish()


def test_a_placeholder_split_across_chunks_is_restored() -> None:
    vault = Vault()
    answer = vault.pseudonymize(TEXT, SPANS)
    chunks = [
        "<PER",
        "SON_1> wrote to <EMAIL_ADD",
        "RESS_1>; <",
        "PERSON_1>'s IBAN is <IBAN_CODE_1",
        ">.",
    ]
    restorer = StreamRestorer(vault)
    shown = [restorer.feed(c) for c in chunks]
    assert shown[0] == ""  # held back: it may still become a placeholder
    assert shown[1] == "Ann Lee wrote to "
    assert "".join(shown) + restorer.finish() == TEXT
    assert answer.count("<") == 4


def test_text_that_cannot_become_a_placeholder_is_not_held() -> None:
    vault = Vault()
    vault.placeholder("PERSON", "Ann")
    restorer = StreamRestorer(vault)
    assert restorer.feed("a <b and ") == "a <b and "
    assert restorer.feed("x < y") == "x < y"
    assert restorer.feed(" <PERSON_1") == " "
    assert restorer.feed(">!") == "Ann!"
    assert restorer.finish() == ""


def test_an_answer_ending_inside_a_placeholder_fails_closed() -> None:
    vault = Vault()
    vault.placeholder("PERSON", "Ann")
    restorer = StreamRestorer(vault)
    assert restorer.feed("Dear <PERSON_") == "Dear "
    with pytest.raises(PlaceholderFragment):
        restorer.finish()
    # A tail that is not the start of one of the vault's placeholders is shown.
    other = StreamRestorer(vault)
    assert other.feed("ends with <X") == "ends with "
    assert other.finish() == "<X"


@settings(max_examples=200, deadline=None)
@given(
    words=st.lists(
        st.sampled_from(["Ann Lee", "bob@example.com", "the", " ", "<", ">", "x<y", "é", "\n"]),
        max_size=25,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
)
def test_any_split_of_a_pseudonymized_answer_restores_exactly(
    words: list[str], cuts: list[int]
) -> None:
    text = "".join(words)
    spans = []
    for value, kind in (("Ann Lee", "PERSON"), ("bob@example.com", "EMAIL_ADDRESS")):
        start = text.find(value)
        while start >= 0:
            spans.append(Replacement(start, start + len(value), kind))
            start = text.find(value, start + len(value))
    vault = Vault()
    answer = vault.pseudonymize(text, spans)
    assert "Ann Lee" not in answer and "bob@example.com" not in answer
    points = sorted({c for c in cuts if c <= len(answer)})
    chunks = [answer[a:b] for a, b in zip([0, *points], [*points, len(answer)], strict=True)]
    assert _stream(vault, chunks) == vault.restore(answer) == text
