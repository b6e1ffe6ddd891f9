"""Signed A2A messages: a valid message passes; every rejection reason is detected and
named, with the right status class, before anything could act on the message."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest
from a2a.types import a2a_pb2
from jwcrypto import jwk

from consortium.federation.roster import Member, MemberKey, Roster, Status
from consortium.node.client import text_message
from consortium.protocols.signed_message import (
    CLAIMS_KEY,
    EXTENSION_URI,
    SIGNATURE_KEY,
    MessageVerifier,
    Rejected,
    digest,
    sign_message,
    sign_message_and_digest,
)
from consortium.trust.keys import generate_key, key_id, public_jwk
from consortium.trust.replay import ReplayCache

NOW = 1_800_000_000.0


def member(
    org: str, key: jwk.JWK, status: Status = "active", extra: list[MemberKey] | None = None
) -> Member:
    pub = public_jwk(key)
    return Member(
        org_id=org, status=status, keys=[MemberKey(kid=pub["kid"], x=pub["x"]), *(extra or [])]
    )


class World:
    def __init__(self, tmp: Path) -> None:
        self.acme, self.globex, self.outsider = generate_key(), generate_key(), generate_key()
        self.roster = Roster(
            federation_id="fed",
            name="Fed",
            members=[member("acme", self.acme), member("globex", self.globex)],
        )
        self.db = tmp / "replay.sqlite3"
        self.replay = ReplayCache(self.db, clock=lambda: NOW)
        self.verifier = self.make_verifier()

    def make_verifier(self, replay: ReplayCache | None = None) -> MessageVerifier:
        return MessageVerifier(
            org_id="globex",
            roster=lambda: self.roster,
            replay=replay or self.replay,
            clock=lambda: NOW,
        )

    def signed(self, text: str = "hello", **kw: object) -> a2a_pb2.Message:
        args: dict[str, object] = {
            "key": self.acme,
            "sender": "acme",
            "recipient": "globex",
            "federation": "fed",
            "now": NOW,
        }
        args.update(kw)
        return sign_message(text_message(text), **args)  # type: ignore[arg-type]

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
    forged = sign_message(
        text_message("pay me"),
        key=w.outsider,
        sender="acme",
        recipient="globex",
        federation="fed",
        now=NOW,
    )
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
    msg = sign_message(
        text_message("hi"), key=w.outsider, sender="mallory", recipient="globex", federation="fed"
    )
    e = w.reject(msg)
    assert (e.reason, e.code) == ("non_member", "PERMISSION_DENIED")


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
    response = w.signed("answer", request_digest=digest(other))
    e = w.reject(response, request_digest=digest(request))
    assert (e.reason, e.code) == ("wrong_request", "PERMISSION_DENIED")
    good = w.signed("answer", request_digest=digest(request))
    assert w.verifier.verify(good, request_digest=digest(request)).claims.request_digest == digest(
        request
    )


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
    signed, signed_digest = sign_message_and_digest(
        text_message("q"), key=w.acme, sender="acme", recipient="globex", federation="fed", now=NOW
    )
    assert signed_digest == digest(signed)
    assert w.verifier.verify(signed).digest == signed_digest


def test_task_events_are_signed_and_tampering_is_caught(w: World) -> None:
    from consortium.protocols.signed_message import sign_event

    request = text_message("question")
    event = a2a_pb2.TaskArtifactUpdateEvent(
        task_id="t1",
        context_id="c1",
        artifact=a2a_pb2.Artifact(artifact_id="a1", parts=[a2a_pb2.Part(text="chunk")]),
    )
    signed = sign_event(
        event,
        key=w.acme,
        sender="acme",
        recipient="globex",
        federation="fed",
        request_digest=digest(request),
        now=NOW,
    )
    verified = w.verifier.verify(signed, request_digest=digest(request))
    assert verified.claims.message_id.startswith("event-")
    # The same event delivered twice within the call (a duplicated chunk).
    assert w.reject(signed, request_digest=digest(request)).reason == "replay"
    again = sign_event(
        event,
        key=w.acme,
        sender="acme",
        recipient="globex",
        federation="fed",
        request_digest=digest(request),
        now=NOW,
    )
    again.artifact.parts[0].text = "changed"
    assert w.reject(again, request_digest=digest(request)).reason == "bad_signature"
    status = a2a_pb2.TaskStatusUpdateEvent(
        task_id="t1", status=a2a_pb2.TaskStatus(state=a2a_pb2.TASK_STATE_COMPLETED)
    )
    bound_elsewhere = sign_event(
        status,
        key=w.acme,
        sender="acme",
        recipient="globex",
        federation="fed",
        request_digest=digest(text_message("x")),
        now=NOW,
    )
    assert w.reject(bound_elsewhere, request_digest=digest(request)).reason == "wrong_request"
