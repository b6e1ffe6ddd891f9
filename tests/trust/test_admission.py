"""Signed A2A messages: a valid message passes; every rejection reason is detected and
named, with the right status class, before anything could act on the message; a message
cannot be turned around (an answer used as a request) or answered by someone not asked;
outside the node a stranger and a bad signature look alike."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import pytest
from a2a.types import a2a_pb2
from jwcrypto import jwk

from consortium.federation.roster import Member, MemberKey, Roster, Status
from consortium.node.a2a.errors import from_rejection
from consortium.node.client import text_message
from consortium.trust.admission import MessageVerifier
from consortium.trust.claims import (
    CLAIMS_KEY,
    EXTENSION_URI,
    SIGNATURE_KEY,
    Claims,
    Kind,
    Signable,
    digest,
)
from consortium.trust.keys import generate_key, key_id, public_jwk
from consortium.trust.refusals import Rejected
from consortium.trust.replay import ReplayCache
from consortium.trust.signing import (
    SigningIdentity,
    _sign,
    sign_answer,
    sign_request,
    sign_task_event,
)

NOW = 1_800_000_000.0


def member(
    org: str, key: jwk.JWK, status: Status = "active", extra: list[MemberKey] | None = None
) -> Member:
    pub = public_jwk(key)
    return Member(
        org_id=org, status=status, keys=[MemberKey(kid=pub["kid"], x=pub["x"]), *(extra or [])]
    )


def agent_message(text: str) -> a2a_pb2.Message:
    msg = text_message(text)
    msg.role = a2a_pb2.ROLE_AGENT
    return msg


class CountingReplayCache(ReplayCache):
    """A replay cache that counts what reaches it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, clock=lambda: NOW)
        self.sightings = 0

    def first_sighting(self, sender: str, message_id: str, expires_at: float) -> bool:
        self.sightings += 1
        return super().first_sighting(sender, message_id, expires_at)


class World:
    def __init__(self, tmp: Path) -> None:
        self.acme, self.globex, self.initech = generate_key(), generate_key(), generate_key()
        self.outsider = generate_key()
        self.roster = Roster(
            federation_id="fed",
            name="Fed",
            members=[
                member("acme", self.acme),
                member("globex", self.globex),
                member("initech", self.initech),
            ],
        )
        self.db = tmp / "replay.sqlite3"
        self.replay = CountingReplayCache(self.db)
        self.verifier = self.make_verifier()

    def make_verifier(self, replay: ReplayCache | None = None) -> MessageVerifier:
        return MessageVerifier(
            org_id="globex",
            roster=lambda: self.roster,
            replay=replay or self.replay,
            clock=lambda: NOW,
        )

    def signed(
        self,
        text: str = "hello",
        *,
        key: jwk.JWK | None = None,
        sender: str = "acme",
        recipient: str = "globex",
        federation: str = "fed",
        traceparent: str = "",
        now: float = NOW,
    ) -> a2a_pb2.Message:
        signer = SigningIdentity(key or self.acme, sender, federation)
        return sign_request(
            text_message(text), signer, recipient=recipient, traceparent=traceparent, now=now
        )[0]

    def answer(
        self, text: str, request_digest: str, key: jwk.JWK | None = None, sender: str = "acme"
    ) -> a2a_pb2.Message:
        """An answer `sender` signs to globex for the request with `request_digest`."""
        return sign_answer(
            agent_message(text),
            SigningIdentity(key or self.acme, sender, "fed"),
            recipient="globex",
            request_digest=request_digest,
            now=NOW,
        )

    def crafted(self, message: Signable, **claims: Any) -> Any:
        """`message` validly signed by acme with claims the signing API would not write."""
        fields: dict[str, Any] = {
            "sender": "acme",
            "kid": key_id(self.acme),
            "recipient": "globex",
            "federation": "fed",
            "message_id": getattr(message, "message_id", "event-1"),
            "issued_at": NOW,
            "nonce": "n0nce",
            "kind": "request",
        }
        fields.update(claims)
        return _sign(message, Claims(**fields), self.acme)[0]

    def reject(self, message: a2a_pb2.Message, **kw: object) -> Rejected:
        with pytest.raises(Rejected) as e:
            self.verifier.verify(message, **kw)  # type: ignore[arg-type]
        return e.value


@pytest.fixture
def w(tmp_path: Path) -> World:
    return World(tmp_path)


def test_valid_message_passes_with_its_claims(w: World) -> None:
    msg = w.signed(traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    assert EXTENSION_URI in msg.extensions
    claims = w.verifier.verify(msg).claims
    assert (claims.sender, claims.recipient, claims.federation) == ("acme", "globex", "fed")
    assert claims.kid == key_id(w.acme) and claims.message_id == msg.message_id
    assert claims.traceparent.startswith("00-0af7")


def test_unsigned_message_from_a_member(w: World) -> None:
    e = w.reject(text_message("hi"))
    assert (e.reason, e.code) == ("unsigned", "UNAUTHENTICATED")


def test_a_message_without_a_json_form_is_malformed_not_a_crash(w: World) -> None:
    msg = w.signed()
    msg.metadata.update({"x": float("nan")})  # protobuf JSON has no NaN in a Struct
    assert w.reject(msg).reason == "malformed"


def test_forged_signature(w: World) -> None:
    # An outsider signs, claiming acme's key id.
    forged = sign_request(
        text_message("pay me"),
        SigningIdentity(w.outsider, "acme", "fed"),
        recipient="globex",
        now=NOW,
    )[0]
    claims = dict(forged.metadata[CLAIMS_KEY])
    claims["kid"] = key_id(w.acme)
    forged.metadata.update({CLAIMS_KEY: claims})
    header, _, sig = forged.metadata[SIGNATURE_KEY].split(".")
    raw = base64.urlsafe_b64decode(header + "==").replace(
        key_id(w.outsider).encode(), key_id(w.acme).encode()
    )
    forged.metadata.update(
        {SIGNATURE_KEY: base64.urlsafe_b64encode(raw).rstrip(b"=").decode() + ".." + sig}
    )
    e = w.reject(forged)
    assert (e.reason, e.code) == ("bad_signature", "UNAUTHENTICATED")


def test_flipped_byte_in_payload(w: World) -> None:
    msg = w.signed("transfer 10")
    msg.parts[0].text = "transfer 90"
    assert w.reject(msg).reason == "bad_signature"


def flip_char(s: str, i: int) -> str:
    return s[:i] + ("A" if s[i] != "A" else "B") + s[i + 1 :]


def test_flipped_byte_in_protected_header(w: World) -> None:
    msg = w.signed()
    header, _, sig = msg.metadata[SIGNATURE_KEY].split(".")
    msg.metadata.update({SIGNATURE_KEY: f"{flip_char(header, 7)}..{sig}"})
    e = w.reject(msg)
    assert e.code == "UNAUTHENTICATED" and e.reason in ("malformed", "bad_signature")


def test_flipped_byte_in_signature(w: World) -> None:
    msg = w.signed()
    header, _, sig = msg.metadata[SIGNATURE_KEY].split(".")
    msg.metadata.update({SIGNATURE_KEY: f"{header}..{flip_char(sig, 20)}"})
    assert w.reject(msg).reason == "bad_signature"


def test_replay_is_refused_also_after_a_restart(w: World) -> None:
    msg = w.signed()
    w.verifier.verify(msg)
    assert w.reject(msg).reason == "replay"
    w.replay.close()
    restarted = w.make_verifier(ReplayCache(w.db, clock=lambda: NOW))
    with pytest.raises(Rejected) as e:
        restarted.verify(msg)
    assert (e.value.reason, e.value.code) == ("replay", "UNAUTHENTICATED")


def test_stale_and_future_messages(w: World) -> None:
    assert w.reject(w.signed(now=NOW - 61)).reason == "stale"
    assert w.reject(w.signed(now=NOW + 61)).reason == "future"
    w.verifier.verify(w.signed(now=NOW - 59))  # inside the default ±60 s skew


def test_non_member(w: World) -> None:
    msg = sign_request(
        text_message("hi"), SigningIdentity(w.outsider, "mallory", "fed"), recipient="globex"
    )[0]
    e = w.reject(msg)
    assert (e.reason, e.code) == ("non_member", "PERMISSION_DENIED")
    assert (e.external_reason, e.external_code) == ("bad_signature", "UNAUTHENTICATED")


@pytest.mark.parametrize("status", ["suspended", "revoked"])
def test_suspended_and_revoked_members(w: World, status: Status) -> None:
    w.roster = w.roster.model_copy(
        update={"members": [member("acme", w.acme, status), w.roster.members[1]]}
    )
    e = w.reject(w.signed())
    assert (e.reason, e.code) == (status, "PERMISSION_DENIED")


def test_wrong_recipient_and_wrong_federation(w: World) -> None:
    assert w.reject(w.signed(recipient="initech")).reason == "wrong_recipient"
    assert w.reject(w.signed(federation="other-fed")).reason == "wrong_federation"


def test_response_bound_to_another_request(w: World) -> None:
    request = text_message("question")
    other = text_message("another question")
    response = w.answer("answer", digest(other))
    e = w.reject(response, request_digest=digest(request), expected_sender="acme")
    assert (e.reason, e.code) == ("wrong_request", "PERMISSION_DENIED")
    good = w.answer("answer", digest(request))
    claims = w.verifier.verify(good, request_digest=digest(request), expected_sender="acme").claims
    assert (claims.request_digest, claims.kind) == (digest(request), "answer")


def test_key_rotation_old_key_valid_until_expiry(w: World) -> None:
    new = generate_key()
    old_pub, new_pub = public_jwk(w.acme), public_jwk(new)
    expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW + 30))
    rotated = Member(
        org_id="acme",
        keys=[
            MemberKey(kid=new_pub["kid"], x=new_pub["x"]),
            MemberKey(kid=old_pub["kid"], x=old_pub["x"], not_after=expiry),
        ],
    )
    w.roster = w.roster.model_copy(update={"members": [rotated, w.roster.members[1]]})
    w.verifier.verify(w.signed())  # old key, before its expiry
    w.verifier.verify(w.signed(key=new))  # new key
    late = MessageVerifier(
        org_id="globex", roster=lambda: w.roster, replay=w.replay, clock=lambda: NOW + 31
    )
    with pytest.raises(Rejected) as e:
        late.verify(w.signed(now=NOW + 31))
    assert e.value.reason == "unknown_key"


def test_digest_ignores_the_signature_but_covers_the_rest(w: World) -> None:
    msg = w.signed("x")
    copy = a2a_pb2.Message()
    copy.CopyFrom(msg)
    copy.metadata.update({SIGNATURE_KEY: "changed"})
    assert digest(copy) == digest(msg)
    copy.parts[0].text = "y"
    assert digest(copy) != digest(msg)


def test_signing_and_verifying_report_the_digest_answers_bind_to(w: World) -> None:
    signed, signed_digest = sign_request(
        text_message("q"), SigningIdentity(w.acme, "acme", "fed"), recipient="globex", now=NOW
    )
    assert signed_digest == digest(signed)
    assert w.verifier.verify(signed).digest == signed_digest


def test_task_events_are_signed_and_tampering_is_caught(w: World) -> None:
    request = text_message("question")
    event = a2a_pb2.TaskArtifactUpdateEvent(
        task_id="t1",
        context_id="c1",
        artifact=a2a_pb2.Artifact(artifact_id="a1", parts=[a2a_pb2.Part(text="chunk")]),
    )
    signed = sign_task_event(
        event,
        SigningIdentity(w.acme, "acme", "fed"),
        recipient="globex",
        request_digest=digest(request),
        now=NOW,
    )
    verified = w.verifier.verify(signed, request_digest=digest(request))
    assert verified.claims.message_id.startswith("event-") and verified.claims.kind == "event"
    # The same event delivered twice within the call (a duplicated chunk).
    assert w.reject(signed, request_digest=digest(request)).reason == "replay"
    again = sign_task_event(
        event,
        SigningIdentity(w.acme, "acme", "fed"),
        recipient="globex",
        request_digest=digest(request),
        now=NOW,
    )
    again.artifact.parts[0].text = "changed"
    assert w.reject(again, request_digest=digest(request)).reason == "bad_signature"
    status = a2a_pb2.TaskStatusUpdateEvent(
        task_id="t1", status=a2a_pb2.TaskStatus(state=a2a_pb2.TASK_STATE_COMPLETED)
    )
    bound_elsewhere = sign_task_event(
        status,
        SigningIdentity(w.acme, "acme", "fed"),
        recipient="globex",
        request_digest=digest(text_message("x")),
        now=NOW,
    )
    assert w.reject(bound_elsewhere, request_digest=digest(request)).reason == "wrong_request"


# -- direction: what a message was signed as ----------------------------------------


def test_new_signatures_state_their_kind(w: World) -> None:
    me = SigningIdentity(w.acme, "acme", "fed")
    request, request_digest = sign_request(text_message("q"), me, recipient="globex", now=NOW)
    assert request.metadata[CLAIMS_KEY]["kind"] == "request"
    assert "requestDigest" not in request.metadata[CLAIMS_KEY]
    answer = w.answer("a", request_digest)
    assert answer.metadata[CLAIMS_KEY]["kind"] == "answer"
    assert answer.metadata[CLAIMS_KEY]["requestDigest"] == request_digest
    assert w.signed().metadata[CLAIMS_KEY]["kind"] == "request"


def test_the_signing_api_refuses_to_sign_the_wrong_direction(w: World) -> None:
    me = SigningIdentity(w.acme, "acme", "fed")
    with pytest.raises(ValueError, match="ROLE_USER"):
        sign_request(agent_message("q"), me, recipient="globex")
    with pytest.raises(ValueError, match="ROLE_AGENT"):
        sign_answer(text_message("a"), me, recipient="globex", request_digest="d")
    with pytest.raises(ValueError, match="digest"):
        sign_answer(agent_message("a"), me, recipient="globex", request_digest="")
    event = a2a_pb2.TaskStatusUpdateEvent(task_id="t")
    with pytest.raises(ValueError, match="digest"):
        sign_task_event(event, me, recipient="globex", request_digest="")


def test_an_answer_sent_back_to_its_recipient_as_a_request_is_refused(w: World) -> None:
    # globex asked acme; acme's signed answer, addressed to globex, is captured and sent
    # to globex's node as a new request within the skew window.
    answer = w.answer("transfer approved", digest(text_message("may I?")))
    e = w.reject(answer)
    assert (e.reason, e.code) == ("wrong_direction", "UNAUTHENTICATED")
    assert w.replay.sightings == 0
    # Also when the role is rewritten: the signature covers it.
    answer.role = a2a_pb2.ROLE_USER
    assert w.reject(answer).reason == "bad_signature"


def test_a_task_event_is_not_a_request_and_a_request_is_not_an_answer(w: World) -> None:
    request_digest = digest(text_message("q"))
    event = sign_task_event(
        a2a_pb2.TaskStatusUpdateEvent(task_id="t"),
        SigningIdentity(w.acme, "acme", "fed"),
        recipient="globex",
        request_digest=request_digest,
        now=NOW,
    )
    assert w.reject(event).reason == "wrong_direction"
    # A request sent back as if it answered one.
    e = w.reject(w.signed("q"), request_digest=request_digest)
    assert e.reason == "wrong_direction"


@pytest.mark.parametrize(
    ("kind", "answering"), [("event", True), ("answer", False), ("event", False)]
)
def test_a_message_signed_as_another_kind_is_refused(w: World, kind: Kind, answering: bool) -> None:
    msg = w.crafted(agent_message("x"), kind=kind, request_digest="d")
    e = w.reject(msg, **({"request_digest": "d"} if answering else {}))
    assert (e.reason, e.code) == ("wrong_direction", "UNAUTHENTICATED")


@pytest.mark.parametrize(
    ("kind", "request_digest"), [("request", None), ("answer", "d"), ("event", None)]
)
def test_a_task_event_signed_as_anything_but_an_event_is_refused(
    w: World, kind: Kind, request_digest: str | None
) -> None:
    event = w.crafted(
        a2a_pb2.TaskStatusUpdateEvent(task_id="t"),
        kind=kind,
        request_digest="d" if kind != "request" else "",
    )
    assert w.reject(event, request_digest=request_digest).reason == "wrong_direction"


def test_a_request_carrying_a_request_digest_is_refused(w: World) -> None:
    msg = w.crafted(text_message("q"), kind="request", request_digest="some-digest")
    assert w.reject(msg).reason == "malformed"
    # Nor may an answer omit it.
    assert w.reject(w.crafted(agent_message("a"), kind="answer"), request_digest="d").reason == (
        "malformed"
    )
    assert w.replay.sightings == 0


def test_a_request_with_role_agent_is_refused(w: World) -> None:
    msg = w.crafted(agent_message("q"), kind="request")
    e = w.reject(msg)
    assert (e.reason, e.code) == ("wrong_direction", "UNAUTHENTICATED")
    assert w.replay.sightings == 0
    # The same claims on a user message pass.
    w.verifier.verify(w.crafted(text_message("q"), kind="request"))


def test_an_answer_with_role_user_is_refused(w: World) -> None:
    msg = w.crafted(text_message("a"), kind="answer", request_digest="d")
    assert w.reject(msg, request_digest="d").reason == "wrong_direction"


def test_claims_without_a_kind_are_malformed(w: World) -> None:
    msg = w.signed()
    claims = dict(msg.metadata[CLAIMS_KEY])
    del claims["kind"]
    msg.metadata.update({CLAIMS_KEY: claims})
    assert w.reject(msg).reason == "malformed"
    claims["kind"] = "command"
    msg.metadata.update({CLAIMS_KEY: claims})
    assert w.reject(msg).reason == "malformed"


# -- who answers ----------------------------------------------------------------------


def test_an_answer_signed_by_a_member_that_was_not_asked_is_refused(w: World) -> None:
    # globex asked acme; initech, a member, signs a valid answer bound to the request.
    request_digest = digest(text_message("question for acme"))
    answer = w.answer("trust me", request_digest, key=w.initech, sender="initech")
    e = w.reject(answer, request_digest=request_digest, expected_sender="acme")
    assert (e.reason, e.code) == ("wrong_sender", "PERMISSION_DENIED")
    event = sign_task_event(
        a2a_pb2.TaskStatusUpdateEvent(task_id="t"),
        SigningIdentity(w.initech, "initech", "fed"),
        recipient="globex",
        request_digest=request_digest,
        now=NOW,
    )
    assert w.reject(event, request_digest=request_digest, expected_sender="acme").reason == (
        "wrong_sender"
    )
    # Without an expected sender, only the binding is checked (what a caller asking
    # nobody in particular gets).
    w.verifier.verify(answer, request_digest=request_digest)


def test_requests_may_name_an_expected_sender_too(w: World) -> None:
    assert w.reject(w.signed(), expected_sender="initech").reason == "wrong_sender"
    w.verifier.verify(w.signed(), expected_sender="acme")


# -- claims are well typed --------------------------------------------------------------


def claims_dict(**changes: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "kind": "request",
        "sender": "acme",
        "kid": "k",
        "recipient": "globex",
        "federation": "fed",
        "messageId": "m",
        "issuedAt": NOW,
        "nonce": "n",
    }
    d.update(changes)
    return {k: v for k, v in d.items() if v is not None}


@pytest.mark.parametrize(
    "issued_at",
    [
        float("nan"),
        float("inf"),
        float("-inf"),
        "NaN",
        "Infinity",
        "1800000000",
        True,
        False,
        [NOW],
        10**400,
    ],
)
def test_issued_at_must_be_a_finite_number(issued_at: object) -> None:
    with pytest.raises(Rejected) as e:
        Claims.from_dict(claims_dict(issuedAt=issued_at))
    assert e.value.reason == "malformed"


@pytest.mark.parametrize(
    "field", ["sender", "kid", "recipient", "federation", "messageId", "nonce"]
)
@pytest.mark.parametrize("value", [7, 1.5, True, ["acme"], {"a": 1}, "", "x" * 257])
def test_text_claims_must_be_bounded_strings(field: str, value: object) -> None:
    with pytest.raises(Rejected) as e:
        Claims.from_dict(claims_dict(**{field: value}))
    assert e.value.reason == "malformed"


def test_optional_text_claims_must_be_bounded_strings_when_present() -> None:
    for changes in (
        {"traceparent": 5},
        {"traceparent": "t" * 257},
        {"kind": "answer", "requestDigest": 5},
    ):
        with pytest.raises(Rejected):
            Claims.from_dict(claims_dict(**changes))
    assert Claims.from_dict(claims_dict(sender="x" * 256)).sender == "x" * 256
    assert Claims.from_dict(claims_dict(issuedAt=1_800_000_000)).issued_at == NOW


@pytest.mark.parametrize("issued_at", ["NaN", "Infinity", True, float("nan"), float("inf")])
def test_a_message_with_a_non_finite_issued_at_never_reaches_the_replay_cache(
    w: World, issued_at: object
) -> None:
    msg = w.signed()
    claims = dict(msg.metadata[CLAIMS_KEY])
    claims["issuedAt"] = issued_at
    msg.metadata.update({CLAIMS_KEY: claims})
    assert w.reject(msg).reason == "malformed"
    assert w.replay.sightings == 0


# -- one refusal outside for strangers and bad signatures ---------------------------------


def test_non_member_and_bad_signature_are_one_refusal_outside(w: World) -> None:
    stranger = w.reject(
        sign_request(
            text_message("hi"),
            SigningIdentity(w.outsider, "mallory", "fed"),
            recipient="globex",
            now=NOW,
        )[0]
    )
    tampered = w.signed("transfer 10")
    tampered.parts[0].text = "transfer 90"
    bad = w.reject(tampered)
    unknown = w.reject(w.signed(key=w.outsider))  # acme's name, a key the roster lacks
    assert (stranger.reason, bad.reason, unknown.reason) == (
        "non_member",
        "bad_signature",
        "unknown_key",
    )
    errors = [from_rejection(e) for e in (stranger, bad, unknown)]
    seen = {(type(x), x.message, repr(x.data)) for x in errors}
    assert len(seen) == 1
    ((cls, message, data),) = seen
    assert cls.__name__ == "UnauthenticatedError"
    assert message == "message refused: signature not accepted"
    assert "bad_signature" in data and "mallory" not in message


def test_other_reasons_keep_their_external_form(w: World) -> None:
    e = w.reject(w.signed(recipient="initech"))
    error = from_rejection(e)
    assert (e.external_reason, e.external_code) == ("wrong_recipient", "PERMISSION_DENIED")
    assert type(error).__name__ == "PermissionDeniedError"
    assert error.data == {"reason": "wrong_recipient"}


def test_malformed_does_not_depend_on_membership(w: World) -> None:
    # A key id in the JWS header that differs from the claimed one is malformed whether
    # or not the sender is a member, so malformed tokens do not probe the roster.
    reasons = []
    for key, sender in ((w.acme, "acme"), (w.outsider, "mallory")):
        msg = sign_request(
            text_message("x"), SigningIdentity(key, sender, "fed"), recipient="globex", now=NOW
        )[0]
        claims = dict(msg.metadata[CLAIMS_KEY])
        claims["kid"] = "other-kid"
        msg.metadata.update({CLAIMS_KEY: claims})
        reasons.append(w.reject(msg).reason)
    assert reasons == ["malformed", "malformed"]


def test_a_non_canonical_signature_is_refused(w: World) -> None:
    msg = w.signed()
    header, _, sig = msg.metadata[SIGNATURE_KEY].split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = alphabet[alphabet.index(sig[-1]) ^ 1]  # same bytes: only unused bits differ
    assert base64.urlsafe_b64decode(sig[:-1] + twin + "==") == base64.urlsafe_b64decode(sig + "==")
    msg.metadata.update({SIGNATURE_KEY: f"{header}..{sig[:-1]}{twin}"})
    assert w.reject(msg).reason == "bad_signature"
    assert w.replay.sightings == 0
