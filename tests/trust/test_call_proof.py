"""Signed call proofs for the task methods: a valid proof passes once, for the one method,
parameters and recipient it was made for; every other use is refused with its reason."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from a2a.types import a2a_pb2
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message as ProtoMessage
from jwcrypto import jwk

from consortium.federation.roster import Member, MemberKey, Roster, Status
from consortium.node.a2a.errors import from_rejection
from consortium.node.client import text_message
from consortium.trust.admission import MessageVerifier
from consortium.trust.call_proof import (
    MAX_PROOF_CHARS,
    PROOF_HEADER,
    PROOF_TYPE,
    TASK_METHODS,
    VerifiedCall,
    params_digest,
)
from consortium.trust.jws import canonical, sign_compact
from consortium.trust.keys import generate_key, key_id, public_jwk
from consortium.trust.refusals import Rejected
from consortium.trust.replay import ReplayCache
from consortium.trust.signing import SigningIdentity, sign_call, sign_request

NOW = 1_800_000_000.0
DROP = object()  # a claim left out


def member(org: str, key: jwk.JWK, status: Status = "active") -> Member:
    pub = public_jwk(key)
    return Member(org_id=org, status=status, keys=[MemberKey(kid=pub["kid"], x=pub["x"])])


class CountingReplayCache(ReplayCache):
    def __init__(self, path: Path) -> None:
        super().__init__(path, clock=lambda: NOW)
        self.sightings = 0

    def first_sighting(self, sender: str, message_id: str, expires_at: float) -> bool:
        self.sightings += 1
        return super().first_sighting(sender, message_id, expires_at)


def get_task(task_id: str = "task-a") -> a2a_pb2.GetTaskRequest:
    return a2a_pb2.GetTaskRequest(id=task_id)


class World:
    def __init__(self, tmp: Path) -> None:
        self.acme, self.globex, self.outsider = generate_key(), generate_key(), generate_key()
        self.roster = Roster(
            federation_id="fed",
            name="Fed",
            members=[member("acme", self.acme), member("globex", self.globex)],
        )
        self.db = tmp / "replay.sqlite3"
        self.replay = CountingReplayCache(self.db)
        self.verifier = self.make_verifier(self.replay)

    def make_verifier(self, replay: ReplayCache, now: float = NOW) -> MessageVerifier:
        return MessageVerifier(
            org_id="globex",
            roster=lambda: self.roster,
            replay=replay,
            clock=lambda: now,
            own_key=jwk.JWK(**public_jwk(self.globex)),
        )

    def proof(self, method: str = "GetTask", request: ProtoMessage | None = None, **kw: Any) -> str:
        signer = SigningIdentity(
            kw.pop("key", self.acme), kw.pop("sender", "acme"), kw.pop("federation", "fed")
        )
        args: dict[str, Any] = {"recipient": "globex", "now": NOW, **kw}
        return sign_call(method, request if request is not None else get_task(), signer, **args)

    def crafted(self, key: jwk.JWK | None = None, raw: bytes | None = None, **changes: Any) -> str:
        """A proof signed by acme (or `key`) over claims the API would not write."""
        claims: dict[str, Any] = {
            "kind": "call",
            "sender": "acme",
            "kid": key_id(self.acme),
            "recipient": "globex",
            "federation": "fed",
            "method": "GetTask",
            "paramsDigest": params_digest(get_task()),
            "issuedAt": NOW,
            "nonce": "n0nce",
        }
        claims.update(changes)
        claims = {k: v for k, v in claims.items() if v is not DROP}
        payload = raw if raw is not None else canonical(claims)
        return sign_compact(payload, key or self.acme, {"typ": PROOF_TYPE})

    def reject(
        self, token: object, method: str = "GetTask", request: ProtoMessage | None = None
    ) -> Rejected:
        with pytest.raises(Rejected) as e:
            self.verifier.verify_call(token, method, request or get_task())
        return e.value


@pytest.fixture
def w(tmp_path: Path) -> World:
    return World(tmp_path)


def test_a_valid_proof_passes_with_its_claims(w: World) -> None:
    token = w.proof()
    head, payload, _ = token.split(".")
    assert json.loads(base64.urlsafe_b64decode(head + "==")) == {
        "alg": "EdDSA",
        "kid": key_id(w.acme),
        "typ": "consortium-call",
    }
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    assert canonical(claims) == base64.urlsafe_b64decode(payload + "==")
    assert claims["kind"] == "call" and claims["method"] == "GetTask"
    verified = w.verifier.verify_call(token, "GetTask", get_task())
    assert isinstance(verified, VerifiedCall)
    c = verified.claims
    assert (c.sender, c.recipient, c.federation, c.method) == ("acme", "globex", "fed", "GetTask")
    assert c.kid == key_id(w.acme) and c.issued_at == NOW
    assert PROOF_HEADER == "x-consortium-proof"


@pytest.mark.parametrize(
    ("method", "request_"),
    [
        ("GetTask", a2a_pb2.GetTaskRequest(id="t1", history_length=3)),
        ("ListTasks", a2a_pb2.ListTasksRequest()),
        ("CancelTask", a2a_pb2.CancelTaskRequest(id="t1")),
        ("SubscribeToTask", a2a_pb2.SubscribeToTaskRequest(id="t1")),
    ],
)
def test_every_task_method_can_be_proven(w: World, method: str, request_: ProtoMessage) -> None:
    assert method in TASK_METHODS
    w.verifier.verify_call(w.proof(method, request_), method, request_)


def test_params_digest_is_the_sha256_of_the_canonical_json_form() -> None:
    request = a2a_pb2.GetTaskRequest(id="t1", history_length=3)
    expected = hashlib.sha256(canonical(MessageToDict(request))).digest()
    assert params_digest(request) == base64.urlsafe_b64encode(expected).rstrip(b"=").decode()
    assert params_digest(get_task("a")) != params_digest(get_task("b"))
    assert params_digest(get_task("a")) == params_digest(get_task("a"))


def test_a_proof_for_one_method_does_not_verify_for_another(w: World) -> None:
    token = w.proof("GetTask", get_task("task-a"))
    e = w.reject(token, "CancelTask", a2a_pb2.CancelTaskRequest(id="task-a"))
    assert (e.reason, e.code) == ("wrong_call", "PERMISSION_DENIED")
    # Same parameters' form, other method name.
    assert w.reject(token, "SubscribeToTask", get_task("task-a")).reason == "wrong_call"
    # A proof tried on the wrong call is not used up.
    w.verifier.verify_call(token, "GetTask", get_task("task-a"))


def test_a_proof_for_one_task_does_not_verify_for_another(w: World) -> None:
    token = w.proof("CancelTask", a2a_pb2.CancelTaskRequest(id="task-a"))
    e = w.reject(token, "CancelTask", a2a_pb2.CancelTaskRequest(id="task-b"))
    assert e.reason == "wrong_call"
    other_params = a2a_pb2.GetTaskRequest(id="task-a", history_length=100)
    assert w.reject(w.proof(), "GetTask", other_params).reason == "wrong_call"


def test_replay_is_refused_also_after_a_restart(w: World) -> None:
    token = w.proof()
    w.verifier.verify_call(token, "GetTask", get_task())
    e = w.reject(token)
    assert (e.reason, e.code) == ("replay", "UNAUTHENTICATED")
    w.replay.close()
    restarted = w.make_verifier(ReplayCache(w.db, clock=lambda: NOW))
    with pytest.raises(Rejected) as again:
        restarted.verify_call(token, "GetTask", get_task())
    assert again.value.reason == "replay"


def test_two_proofs_for_the_same_call_both_pass(w: World) -> None:
    w.verifier.verify_call(w.proof(), "GetTask", get_task())
    w.verifier.verify_call(w.proof(), "GetTask", get_task())


def test_forged_proofs(w: World) -> None:
    # An outsider signs acme's claims, with acme's key id.
    forged = w.crafted(key=w.outsider)
    head, payload, sig = forged.split(".")
    header = json.loads(base64.urlsafe_b64decode(head + "=="))
    header["kid"] = key_id(w.acme)
    head = base64.urlsafe_b64encode(canonical(header)).rstrip(b"=").decode()
    e = w.reject(f"{head}.{payload}.{sig}")
    assert (e.reason, e.code) == ("bad_signature", "UNAUTHENTICATED")
    # acme's genuine proof with its method changed.
    head, payload, sig = w.proof().split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["method"] = "CancelTask"
    changed = base64.urlsafe_b64encode(canonical(claims)).rstrip(b"=").decode()
    assert w.reject(f"{head}.{changed}.{sig}", "CancelTask").reason == "bad_signature"
    assert w.replay.sightings == 0


def test_stale_and_future_proofs(w: World) -> None:
    assert w.reject(w.proof(now=NOW - 61)).reason == "stale"
    assert w.reject(w.proof(now=NOW + 61)).reason == "future"
    w.verifier.verify_call(w.proof(now=NOW - 59), "GetTask", get_task())


def test_a_proof_for_another_recipient_or_federation(w: World) -> None:
    e = w.reject(w.proof(recipient="initech"))
    assert (e.reason, e.code) == ("wrong_recipient", "PERMISSION_DENIED")
    assert w.reject(w.proof(federation="other-fed")).reason == "wrong_federation"


def test_non_member_and_unknown_key(w: World) -> None:
    stranger = w.reject(w.proof(key=w.outsider, sender="mallory"))
    assert (stranger.reason, stranger.code) == ("non_member", "PERMISSION_DENIED")
    unknown = w.reject(w.proof(key=w.outsider))  # acme's name, a key the roster lacks
    assert unknown.reason == "unknown_key"
    head, payload, sig = w.proof().split(".")
    bad = w.reject(f"{head}.{payload}.{sig[:10]}{'A' if sig[10] != 'A' else 'B'}{sig[11:]}")
    assert bad.reason == "bad_signature"
    # One refusal outside.
    errors = {
        (type(x), x.message, repr(x.data))
        for x in (from_rejection(stranger), from_rejection(unknown), from_rejection(bad))
    }
    assert len(errors) == 1
    assert w.replay.sightings == 0


@pytest.mark.parametrize("status", ["suspended", "revoked"])
def test_suspended_and_revoked_members(w: World, status: Status) -> None:
    w.roster = w.roster.model_copy(
        update={"members": [member("acme", w.acme, status), w.roster.members[1]]}
    )
    e = w.reject(w.proof())
    assert (e.reason, e.code) == (status, "PERMISSION_DENIED")


def test_own_organization_proofs_verify_against_its_own_key(w: World) -> None:
    w.roster = w.roster.model_copy(
        update={"members": [w.roster.members[0], member("globex", w.globex, "suspended")]}
    )
    own = w.proof(key=w.globex, sender="globex")
    assert w.verifier.verify_call(own, "GetTask", get_task()).claims.sender == "globex"
    # Not with another key under its name.
    assert w.reject(w.proof(key=w.acme, sender="globex")).reason == "unknown_key"


def test_a_missing_proof_is_unsigned(w: World) -> None:
    for token in (None, ""):
        e = w.reject(token)
        assert (e.reason, e.code) == ("unsigned", "UNAUTHENTICATED")


@pytest.mark.parametrize(
    "changes",
    [
        {"issuedAt": "NaN"},
        {"issuedAt": True},
        {"issuedAt": "1800000000"},
        {"issuedAt": DROP},
        {"kind": "request"},
        {"kind": DROP},
        {"sender": 7},
        {"recipient": None},
        {"nonce": ""},
        {"method": "x" * 257},
        {"paramsDigest": DROP},
        {"kid": "another-kid"},
    ],
)
def test_malformed_claims(w: World, changes: dict[str, Any]) -> None:
    e = w.reject(w.crafted(**changes))
    assert (e.reason, e.code) == ("malformed", "UNAUTHENTICATED")
    assert w.replay.sightings == 0


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_issued_at_never_reaches_the_replay_cache(w: World, literal: bytes) -> None:
    good = canonical(json.loads(base64.urlsafe_b64decode(w.crafted().split(".")[1] + "==")))
    raw = good.replace(str(int(NOW)).encode(), literal)
    assert raw != good
    assert w.reject(w.crafted(raw=raw)).reason == "malformed"
    assert w.replay.sightings == 0


def test_malformed_tokens(w: World) -> None:
    detached_message_signature = sign_request(
        text_message("x"), SigningIdentity(w.acme, "acme", "fed"), recipient="globex", now=NOW
    )[0].metadata["consortium.signature"]
    head, payload, sig = w.proof().split(".")
    for token in (
        7,
        "garbage",
        "a.b.c",
        detached_message_signature,
        sign_compact(b'{"kind":"call"}', w.acme, {"typ": "consortium-message"}),
        w.crafted(raw=b"not json"),
        w.crafted(raw=b"[1, 2]"),
        w.crafted(raw=b"\xff\xfe"),
        f"{head}.{payload}.{sig}" + "A" * MAX_PROOF_CHARS,
        f"{head}.{payload}=.{sig}",
    ):
        assert w.reject(token).reason == "malformed", token
    assert w.replay.sightings == 0


def test_a_request_without_a_json_form_is_malformed(w: World) -> None:
    # A Struct cannot hold NaN in protobuf JSON.
    request = a2a_pb2.SendMessageRequest(message=text_message("x"))
    request.message.metadata.update({"x": float("nan")})
    with pytest.raises(ValueError):
        sign_call("SendMessage", request, SigningIdentity(w.acme, "acme", "f"), recipient="g")
    assert w.reject(w.proof(), "GetTask", request).reason == "malformed"
