"""Signing (trust/signing.py): messages and call proofs signed before issue 11 moved the
code still verify and re-sign to the same bytes (the wire format is unchanged), and the
one `Signer` signs requests, call proofs, and the replies and events bound to a peer's
request, each of which the other side admits."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from a2a.types import a2a_pb2
from google.protobuf.json_format import MessageToDict, ParseDict
from jwcrypto import jwk

from consortium.federation.roster import Roster, load_roster
from consortium.node.client import text_message
from consortium.trust.admission import MessageVerifier, Verified
from consortium.trust.call_proof import PROOF_TYPE, read_call_claims
from consortium.trust.claims import (
    CLAIMS_KEY,
    EXTENSION_URI,
    SIGNATURE_KEY,
    Claims,
    Signable,
    digest,
    read_signed,
)
from consortium.trust.jws import canonical, sign_compact
from consortium.trust.refusals import Rejected
from consortium.trust.replay import ReplayCache
from consortium.trust.signing import Signer, SigningIdentity, _sign

DATA = Path(__file__).parent.parent / "data" / "trust"
NOW = 1_800_000_000.0  # when the stored messages were signed
FED = "compat-federation"


def stored() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / "messages.json").read_text())
    return data


def key(org: str) -> jwk.JWK:
    return jwk.JWK.from_json((DATA / f"{org}.jwk").read_text())


def roster() -> Roster:
    return load_roster(DATA / "federation.toml")


def verifier(org: str, tmp: Path, now: float = NOW + 1) -> MessageVerifier:
    replay = ReplayCache(tmp / f"{org}-replay.sqlite3", clock=lambda: now)
    return MessageVerifier(org_id=org, roster=roster, replay=replay, clock=lambda: now)


def resigned(message: Signable, by: jwk.JWK) -> tuple[Signable, str]:
    """The message signed again over the claims it states (Ed25519 is deterministic)."""
    parts = read_signed(message)
    assert parts is not None
    unsigned = type(message)()
    unsigned.CopyFrom(message)
    del unsigned.metadata[SIGNATURE_KEY]
    return _sign(unsigned, Claims.from_dict(parts.form["metadata"][CLAIMS_KEY]), by)


def test_messages_signed_before_the_move_verify(tmp_path: Path) -> None:
    data = stored()
    request = ParseDict(data["request"], a2a_pb2.Message())
    verified = verifier("globex", tmp_path).verify(request)
    assert verified.claims.sender == "acme" and verified.digest == data["requestDigest"]
    assert digest(request) == data["requestDigest"]
    acme = verifier("acme", tmp_path, now=NOW + 1)
    event = ParseDict(data["event"], a2a_pb2.TaskStatusUpdateEvent())
    answer = ParseDict(data["answer"], a2a_pb2.Message())
    for reply in (event, answer):
        checked = acme.verify(reply, request_digest=data["requestDigest"], expected_sender="globex")
        assert checked.claims.request_digest == data["requestDigest"]


def test_messages_re_sign_to_the_same_bytes() -> None:
    data = stored()
    for name, cls, org in (
        ("request", a2a_pb2.Message, "acme"),
        ("answer", a2a_pb2.Message, "globex"),
        ("event", a2a_pb2.TaskStatusUpdateEvent, "globex"),
    ):
        message = ParseDict(data[name], cls())
        again, again_digest = resigned(message, key(org))
        assert MessageToDict(again) == data[name], name
        assert again_digest == digest(message)
    assert (
        resigned(ParseDict(data["request"], a2a_pb2.Message()), key("acme"))[1]
        == (data["requestDigest"])
    )


def test_a_call_proof_made_before_the_move_verifies_and_re_signs_to_the_same_token(
    tmp_path: Path,
) -> None:
    proof = stored()["callProof"]
    request = ParseDict(proof["request"], a2a_pb2.GetTaskRequest())
    checked = verifier("globex", tmp_path, now=NOW + 2).verify_call(
        proof["token"], proof["method"], request
    )
    assert checked.claims.sender == "acme" and checked.claims.method == "GetTask"
    claims = read_call_claims(proof["token"])
    token = sign_compact(canonical(claims.as_dict()), key("acme"), {"typ": PROOF_TYPE})
    assert token == proof["token"]


def test_the_one_signer_signs_requests_replies_events_and_call_proofs(tmp_path: Path) -> None:
    acme = Signer(SigningIdentity(key("acme"), "acme", FED))
    globex = Signer(SigningIdentity(key("globex"), "globex", FED))
    assert acme.org_id == "acme"
    # The Signer stamps the current time; the verifiers' clocks read it once.
    now = time.time()
    at_globex, at_acme = verifier("globex", tmp_path, now), verifier("acme", tmp_path, now)

    request, request_digest = acme.sign_request(text_message("q"), "globex", "00-" + "1" * 49)
    assert EXTENSION_URI in request.extensions
    admitted: Verified = at_globex.verify(request)
    assert admitted.digest == request_digest == digest(request)

    answer = text_message("a")
    answer.role = a2a_pb2.ROLE_AGENT
    reply = globex.sign_reply(answer, admitted)
    event = globex.sign_event(a2a_pb2.TaskStatusUpdateEvent(task_id="t", context_id="c"), admitted)
    for signed in (reply, event):
        claims = at_acme.verify(
            signed, request_digest=request_digest, expected_sender="globex"
        ).claims
        # Bound to the request it answers, and to its trace.
        assert claims.recipient == "acme" and claims.traceparent == "00-" + "1" * 49
    # An answer bound to this request is refused for another one.
    other, _ = acme.sign_request(text_message("q2"), "globex")
    with pytest.raises(Rejected) as e:
        at_acme.verify(
            globex.sign_reply(answer, admitted),
            request_digest=digest(other),
            expected_sender="globex",
        )
    assert e.value.reason == "wrong_request"

    get = a2a_pb2.GetTaskRequest(id="t")
    call = at_globex.verify_call(acme.sign_call("GetTask", get, "globex"), "GetTask", get)
    assert (call.claims.sender, call.claims.recipient) == ("acme", "globex")
