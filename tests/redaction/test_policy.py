"""The `[redaction]` policy: actions per type, overrides by roster attribute and by peer,
one-line errors for every bad key; and `rewrite`, which applies a peer's actions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from consortium.errors import ConfigError
from consortium.node.config import parse_config
from consortium.redaction.detector import Span
from consortium.redaction.policy import RedactionPolicy, check_peers, check_policy
from consortium.redaction.pseudonyms import Vault
from consortium.redaction.rewrite import rewrite

POLICY = RedactionPolicy.model_validate(
    {
        "enabled": True,
        "actions": {"US_SSN": "block", "CREDIT_CARD": "mask"},
        "rules": [
            {"when": {"jurisdiction": "US"}, "actions": {"PHONE_NUMBER": "block"}},
            {"when": {"jurisdiction": "us", "region": "west"}, "default": "mask"},
        ],
        "peers": {"globex": {"default": "keep", "actions": {"EMAIL_ADDRESS": "pseudonymize"}}},
    }
)


def test_defaults_are_off_and_pseudonymize() -> None:
    policy = RedactionPolicy()
    assert not policy.enabled
    assert policy.for_peer("anyone", {}).action("PERSON") == "pseudonymize"


def test_base_actions_apply_to_every_peer() -> None:
    actions = POLICY.for_peer("initech", {"jurisdiction": "EU"})
    assert actions.action("US_SSN") == "block"
    assert actions.action("CREDIT_CARD") == "mask"
    assert actions.action("PERSON") == "pseudonymize"
    assert actions.action("PHONE_NUMBER") == "pseudonymize"


def test_attribute_rules_match_without_regard_to_case_and_later_ones_win() -> None:
    us = POLICY.for_peer("initech", {"jurisdiction": "US", "region": "east"})
    assert us.action("PHONE_NUMBER") == "block"
    assert us.action("PERSON") == "pseudonymize"  # the second rule needs region west too
    west = POLICY.for_peer("initech", {"jurisdiction": "US", "region": "West"})
    assert west.action("PERSON") == "mask"
    assert west.action("PHONE_NUMBER") == "block"  # set by the first rule, kept


def test_a_peer_override_is_the_most_specific() -> None:
    actions = POLICY.for_peer("globex", {"jurisdiction": "US"})
    assert actions.action("PERSON") == "keep"  # its default
    assert actions.action("EMAIL_ADDRESS") == "pseudonymize"
    assert actions.action("US_SSN") == "block"  # base actions it does not override
    assert actions.action("PHONE_NUMBER") == "block"  # the US rule applies before it


def _config_error(redaction: dict[str, Any], tmp_path: Path) -> str:
    data = {"node": {"org_id": "acme"}, "redaction": redaction}
    with pytest.raises(ConfigError) as info:
        parse_config(data, path=tmp_path / "node.toml")
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("redaction", "fragment"),
    [
        ({"actions": {"PERSON": "hide"}}, "redaction.actions.PERSON"),
        ({"default": "drop"}, "redaction.default"),
        ({"actions": {"PASSPORTZ": "mask"}}, "redaction.actions: unknown entity type 'PASSPORTZ'"),
        (
            {"peers": {"globex": {"actions": {"NOPE": "keep"}}}},
            "redaction.peers.globex.actions: unknown entity type 'NOPE'",
        ),
        (
            {"rules": [{"when": {"country": "US"}, "default": "mask"}]},
            "redaction.rules.0.when.country",
        ),
        ({"rules": [{"when": {}, "default": "mask"}]}, "must name at least one of"),
        ({"rules": [{"default": "mask"}]}, "redaction.rules.0.when: required"),
        ({"peers": {"globex": {"colour": "red"}}}, "redaction.peers.globex.colour: unknown key"),
        (
            {"recognizers": [{"name": "x", "entity": "CODE", "patterns": ["(unclosed"]}]},
            "bad regular expression",
        ),
        ({"enabled": "sometimes"}, "redaction.enabled"),
    ],
)
def test_bad_policy_is_one_clear_line(
    redaction: dict[str, Any], fragment: str, tmp_path: Path
) -> None:
    assert fragment in _config_error(redaction, tmp_path)


def test_custom_entity_types_may_have_actions(tmp_path: Path) -> None:
    data = {
        "node": {"org_id": "acme"},
        "redaction": {
            "recognizers": [{"name": "codes", "entity": "PROJECT", "deny_list": ["Bluebird"]}],
            "actions": {"PROJECT": "block"},
        },
    }
    cfg = parse_config(data, path=tmp_path / "node.toml")
    check_policy(cfg.redaction, path=None)
    assert cfg.redaction.for_peer("x", {}).action("PROJECT") == "block"


def test_peer_overrides_must_name_other_members() -> None:
    members = {"acme": True, "globex": False}
    check_peers(POLICY, members, path="node.toml")
    with pytest.raises(ConfigError, match=r"redaction.peers.globex: not a member"):
        check_peers(POLICY, {"acme": True}, path="node.toml")
    with pytest.raises(ConfigError, match="names this node itself"):
        check_peers(POLICY, {"globex": True}, path="node.toml")


# -- rewrite -------------------------------------------------------------------------

TEXT = "Call Ann Lee on 555-0100 or mail ann@x.org; Ann Lee pays by 4111 1111 1111 1111."


def _spans(text: str, *found: tuple[str, str, float]) -> list[Span]:
    spans = []
    for value, entity, score in found:
        start = text.index(value)
        spans.append(Span(start, start + len(value), entity, score, "test"))
    second = text.index("Ann Lee", text.index("Ann Lee") + 1)
    spans.append(Span(second, second + 7, "PERSON", 0.9, "test"))
    return spans


SPANS = _spans(
    TEXT,
    ("Ann Lee", "PERSON", 0.9),
    ("555-0100", "PHONE_NUMBER", 0.7),
    ("ann@x.org", "EMAIL_ADDRESS", 1.0),
    ("4111 1111 1111 1111", "CREDIT_CARD", 1.0),
)


def test_each_action() -> None:
    actions = RedactionPolicy.model_validate(
        {"actions": {"PHONE_NUMBER": "keep", "CREDIT_CARD": "mask"}}
    ).for_peer("p", {})
    out = rewrite(TEXT, SPANS, actions, Vault())
    assert out.text == (
        "Call <PERSON_1> on 555-0100 or mail <EMAIL_ADDRESS_1>; <PERSON_1> pays by <CREDIT_CARD>."
    )
    assert [(t, a) for t, a, _ in out.withheld] == [
        ("PERSON", "pseudonymize"),
        ("EMAIL_ADDRESS", "pseudonymize"),
        ("PERSON", "pseudonymize"),
        ("CREDIT_CARD", "mask"),
    ]
    assert not out.blocked


def test_a_blocked_type_blocks_the_whole_text_and_leaves_nothing_to_send() -> None:
    actions = RedactionPolicy.model_validate({"actions": {"PHONE_NUMBER": "block"}}).for_peer(
        "p", {}
    )
    out = rewrite(TEXT, SPANS, actions, Vault())
    assert out.blocked == ("PHONE_NUMBER",)
    assert out.text == "" and out.withheld == ()


def test_overlapping_spans_resolve_to_the_stricter_action() -> None:
    text = "Ship to Paris Hilton Street 5"
    spans = [
        Span(8, 20, "PERSON", 0.6, "ner"),
        Span(8, 13, "LOCATION", 0.85, "ner"),
        Span(8, 29, "STREET_ADDRESS", 0.5, "street"),
    ]
    actions = RedactionPolicy.model_validate({"actions": {"STREET_ADDRESS": "mask"}}).for_peer(
        "p", {}
    )
    out = rewrite(text, spans, actions, Vault())
    assert out.text == "Ship to <STREET_ADDRESS>"
    keep_street = RedactionPolicy.model_validate({"actions": {"STREET_ADDRESS": "keep"}}).for_peer(
        "p", {}
    )
    out = rewrite(text, spans, keep_street, Vault())
    # PERSON and LOCATION pseudonymize alike: the higher score names the placeholder,
    # which covers both spans (no part of the detected name is sent in clear).
    assert out.text == "Ship to <LOCATION_1> Street 5"
    assert out.withheld == (("LOCATION", "pseudonymize", "Paris Hilton"),)


def test_restoring_gives_back_the_original_and_masks_stay() -> None:
    vault = Vault()
    actions = RedactionPolicy.model_validate({"actions": {"CREDIT_CARD": "mask"}}).for_peer("p", {})
    out = rewrite(TEXT, SPANS, actions, vault)
    restored = vault.restore(out.text)
    assert restored == TEXT.replace("4111 1111 1111 1111", "<CREDIT_CARD>")


def test_a_placeholder_the_user_wrote_comes_back_as_written() -> None:
    text = "Ask <PERSON_1> about Ann Lee"
    start = text.index("Ann Lee")
    vault = Vault()
    actions = RedactionPolicy().for_peer("p", {})
    out = rewrite(text, [Span(start, start + 7, "PERSON", 0.9, "t")], actions, vault)
    assert out.text == "Ask <PERSON_1> about <PERSON_2>"
    assert vault.restore(out.text) == text
    assert vault.counts() == {"PERSON": 1}
