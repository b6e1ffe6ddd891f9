"""Property-based fuzzing of the credentials every call may carry, on both bindings of a
federation member's node (echo model): whatever `authorization` and `x-consortium-proof`
hold — garbage, near-miss API keys, JWS-shaped tokens with adversarial headers and claims,
a real proof with one character changed — the answer is a result or a client error
(UNAUTHENTICATED, PERMISSION_DENIED, ...), never an internal one, and never a way in."""

from __future__ import annotations

import base64
import json
import string
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from a2a.types import a2a_pb2
from google.protobuf.json_format import MessageToDict
from hypothesis import given, settings
from hypothesis import strategies as st

from consortium.federation.admin import add_member, create_federation, member_from_card
from consortium.node.setup import init_node
from consortium.trust.call_proof import PROOF_HEADER
from consortium.trust.keys import load_private_key
from consortium.trust.signing import SigningIdentity, sign_call
from tests.node.a2a.test_fuzz import CALL_TIMEOUT_S, EXAMPLES, FUZZ, RunningNode, check_grpc

METHODS = {
    "GetTask": a2a_pb2.GetTaskRequest,
    "ListTasks": a2a_pb2.ListTasksRequest,
    "CancelTask": a2a_pb2.CancelTaskRequest,
    "SubscribeToTask": a2a_pb2.SubscribeToTaskRequest,
}
# What gRPC metadata and HTTP headers can carry: printable ASCII, no edge whitespace.
HEADER_TEXT = st.text(alphabet=[chr(c) for c in range(0x20, 0x7F)], max_size=200).map(str.strip)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@st.composite
def jws_like(draw: st.DrawFn) -> str:
    """Three base64url segments: JSON (or not) header and claims, any signature."""
    claims = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "kind": st.sampled_from(["call", "request", "answer", 1, None]),
                "sender": st.sampled_from(["acme", "mallory", "", "a" * 300]) | st.integers(),
                "kid": st.text(max_size=50),
                "recipient": st.sampled_from(["acme", "globex"]),
                "federation": st.sampled_from(["fuzz", "other"]),
                "method": st.sampled_from([*METHODS, "SendMessage", ""]),
                "paramsDigest": st.text(max_size=60),
                "issuedAt": st.one_of(
                    st.floats(allow_nan=False), st.integers(), st.text(max_size=10), st.none()
                ),
                "nonce": st.text(max_size=30),
            },
        )
    )
    header = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "alg": st.sampled_from(["EdDSA", "none", "HS256", ""]),
                "typ": st.sampled_from(["consortium-call", "consortium-message", "JWT"]),
                "kid": st.text(max_size=50),
            },
        )
    )
    raw_header = json.dumps(header).encode() if draw(st.booleans()) else draw(st.binary())
    raw_claims = json.dumps(claims).encode() if draw(st.booleans()) else draw(st.binary())
    signature = draw(st.binary(max_size=80))
    return ".".join(b64(x) for x in (raw_header, raw_claims, signature))


@pytest.fixture(scope="module")
def member(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningNode, Any]]:
    tmp = tmp_path_factory.mktemp("fuzz-credentials")
    fed = create_federation("Fuzz", tmp / "fed")
    init_node("acme", tmp / "acme", grpc_port=0, http_port=0)
    card = json.loads((tmp / "acme" / "agent-card.json").read_text())
    add_member(fed.roster, fed.admin_private, member_from_card(card, "agent-card.json"))
    running = RunningNode(
        tmp / "acme",
        federation={"roster": str(fed.roster), "admin_key": str(fed.admin_public)},
    )
    key = load_private_key(tmp / "acme" / "keys" / "private.jwk")
    yield running, key
    running.close()


@st.composite
def proofs(draw: st.DrawFn, key: Any, method: str, request: Any) -> str:
    kind = draw(st.sampled_from(["garbage", "jws", "mutated"]))
    if kind == "garbage":
        return draw(HEADER_TEXT)
    if kind == "jws":
        return draw(jws_like())
    token = sign_call(method, request, SigningIdentity(key, "acme", "fuzz"), recipient="acme")
    i = draw(st.integers(0, 10**6)) % len(token)  # the token's length varies run to run
    return (token[:i] + draw(st.sampled_from("AaZz09-_.=+/ ")) + token[i + 1 :]).strip()


def test_credentials_never_get_internal_errors_or_in(member: tuple[RunningNode, Any]) -> None:
    node, key = member

    @settings(FUZZ, max_examples=EXAMPLES)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        method = data.draw(st.sampled_from(list(METHODS)))
        request = METHODS[method]()
        if method != "ListTasks":
            request.id = data.draw(st.sampled_from([node.task_id, "no-such-task"]))
        headers: dict[str, str] = {}
        if data.draw(st.booleans()):
            headers["authorization"] = data.draw(
                HEADER_TEXT
                # Stripped: HTTP clients refuse a header value with edge whitespace.
                | st.builds(lambda s: f"Bearer {s}".strip(), HEADER_TEXT)
                | st.builds(
                    lambda h, s: f"Bearer csk_{h}_{s}",
                    st.text("0123456789abcdef", min_size=12, max_size=12),
                    st.text(string.ascii_letters + string.digits + "-_", min_size=43, max_size=43),
                )
            )
        if data.draw(st.booleans()) or not headers:
            headers[PROOF_HEADER] = data.draw(proofs(key, method, request))
        if data.draw(st.booleans()):
            call = getattr(node.stub, method)
            outcome: list[Any] = []

            def go() -> Any:
                result = call(request, metadata=tuple(headers.items()), timeout=CALL_TIMEOUT_S)
                if method == "SubscribeToTask":
                    result = list(result)
                outcome.append(result)
                return result

            check_grpc(go)
            # Whatever got through, it was never someone's key or a valid proof.
            assert not outcome or (method == "ListTasks" and not list(outcome[0].tasks))
        else:
            body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": MessageToDict(request)}
            r = node.http.post(
                "/", json=body, headers={**headers, "A2A-Version": "1.0"}, timeout=CALL_TIMEOUT_S
            )
            assert r.status_code < 500, r.text[:300]
            if "text/event-stream" not in r.headers.get("content-type", ""):
                answer = r.json()
                assert "error" in answer, answer
                assert answer["error"]["code"] != -32603, answer

    run()
    # The node's own proofs still work, on both bindings.
    ok = sign_call(
        "ListTasks",
        a2a_pb2.ListTasksRequest(),
        SigningIdentity(key, "acme", "fuzz"),
        recipient="acme",
    )
    listed = node.stub.ListTasks(
        a2a_pb2.ListTasksRequest(), metadata=((PROOF_HEADER, ok),), timeout=CALL_TIMEOUT_S
    )
    assert list(listed.tasks) == []  # acme's proof shows acme's tasks: none (the seed is anonymous)
    with pytest.raises(grpc.RpcError) as e:
        node.stub.ListTasks(a2a_pb2.ListTasksRequest(), metadata=((PROOF_HEADER, ok),))
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED  # used once
