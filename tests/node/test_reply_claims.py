"""What a verified reply may not claim (node/peers.py's `reply_claim`): a model the
roster does not list for the member, an impossible token count. The exchange reports it
to the assessor with the reply (tests/node/test_routing_trust.py)."""

from __future__ import annotations

from consortium.node.peers import reply_claim


def test_claims_the_roster_does_not_allow() -> None:
    models = ["echo-globex"]
    assert reply_claim({"model": "echo-globex", "tokens": 12}, models) == ""
    assert reply_claim({"model": "gpt-9", "tokens": 12}, models) == "unlisted_model"
    assert reply_claim({"model": "gpt-9"}, []) == ""  # a roster listing no model: no claim
    assert reply_claim({}, models) == ""
    for tokens in (-1, 2.5, 10**8, True, "12", float("nan")):
        assert reply_claim({"model": "echo-globex", "tokens": tokens}, models) == (
            "bad_token_count"
        ), tokens
    assert reply_claim({"inputTokens": 12.0, "outputTokens": -3}, models) == "bad_token_count"
