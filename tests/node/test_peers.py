"""The one outbound exchange (node/peers.py) between real echo nodes on loopback: every
call to a peer, an ask or a score, passes redact -> sign -> audit -> send -> verify ->
audit -> assess with the right things at each hook (the audit steps are the signer's and
the verifier's, told to the node's AuditLog); the peer receives what the redactor left;
an answer with a bad signature raises UntrustedAnswer, the assessor is told, and a task
that relied on it fails with the same status text as before."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from a2a.types import a2a_pb2
from jwcrypto import jwk

from consortium.errors import UntrustedAnswer
from consortium.node.app import Node
from consortium.node.peers import PeerClient
from consortium.protocols.multiple_choice import Question
from consortium.trust.audit import Hop
from consortium.trust.claims import SIGNATURE_KEY, digest, read_signed
from consortium.trust.keys import generate_key
from consortium.trust.reputation import Standing, Verdict
from consortium.trust.signing import Signer, SigningIdentity
from tests.integration.test_federation import Federation

pytestmark = pytest.mark.asyncio(loop_scope="module")


@dataclass(frozen=True)
class Hook:
    name: str
    peer: str
    message: a2a_pb2.Message | None = None
    hop: Hop | None = None
    verdict: Verdict | None = None


class Hooks:
    """A Redactor, an AuditLog and an Assessor that record every call, in order, in one
    list; the redactor replaces `redact_from` with `redact_to` in the message's text.
    Received hops (one per verified event, then the reply) are recorded as one
    "received" call: the last."""

    def __init__(self, redact_from: str = "", redact_to: str = "") -> None:
        self.calls: list[Hook] = []
        self._from, self._to = redact_from, redact_to

    def names(self) -> list[str]:
        names: list[str] = []
        for c in self.calls:
            if not (c.name == "received" and names and names[-1] == "received"):
                names.append(c.name)
        return names

    def one(self, name: str) -> Hook:
        calls = [c for c in self.calls if c.name == name]
        if name != "received":
            [call] = calls
            return call
        return calls[-1]

    async def redact(self, message: a2a_pb2.Message, recipient: str) -> a2a_pb2.Message:
        self.calls.append(Hook("redact", recipient, copy(message)))
        if not self._from:
            return message
        redacted = copy(message)
        for part in redacted.parts:
            part.text = part.text.replace(self._from, self._to)
        return redacted

    def signed(self, recipient: str, request: a2a_pb2.Message) -> None:
        # The receipts' hook: the request as signed.
        self.calls.append(Hook("signed", recipient, copy(request)))

    may_block = False

    async def blocks(self, recipient: str, texts: Sequence[str]) -> tuple[str, ...]:
        return ()

    def sent(self, hop: Hop) -> None:
        self.calls.append(Hook("sent", hop.peer, hop=hop))

    def received(self, hop: Hop) -> None:
        self.calls.append(Hook("received", hop.peer, hop=hop))

    def refused(self, *, sender: str, message_id: str, reason: str, what: str) -> None:
        self.calls.append(Hook("refused", sender))

    def record(self, kind: str, **_: Any) -> None:
        pass

    def reputation(self, peer: str) -> float:
        return 1.0

    def standing(self, peer: str) -> Standing:
        return Standing(peer, "healthy", 1.0, 1.0)

    def assess(self, verdict: Verdict) -> None:
        self.calls.append(Hook("assess", verdict.peer, verdict=verdict))


def copy(message: a2a_pb2.Message) -> a2a_pb2.Message:
    out = a2a_pb2.Message()
    out.CopyFrom(message)
    return out


def text_of(message: a2a_pb2.Message | None) -> str:
    assert message is not None
    return "".join(p.text for p in message.parts)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Federation]:
    f = Federation(tmp_path_factory.mktemp("peers"))
    try:
        await f.start()
        yield f
    finally:
        await f.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def acme(fed: Federation) -> AsyncIterator[tuple[PeerClient, Hooks]]:
    """A PeerClient of acme's with recording hooks (wired as server.py wires its own)."""
    client, hooks = peer_client(fed.nodes["acme"], Hooks())
    try:
        yield client, hooks
    finally:
        await close(client, fed.nodes["acme"])


async def close(client: PeerClient, node: Node) -> None:
    """Closes the test's client; the node's verifier audits to its own log again."""
    await client.close()
    assert node.federation is not None
    node.federation.verifier.audit = node.federation.audit


def peer_client(node: Node, hooks: Hooks, timeout_s: float = 30.0) -> tuple[PeerClient, Hooks]:
    """A client with acme's own signer and verifier, both auditing to `hooks`."""
    federation = node.federation
    assert federation is not None
    signer = Signer(federation.signer.identity, audit=hooks)
    verifier = federation.verifier
    verifier.audit = hooks
    client = PeerClient(
        signer=signer,
        verifier=verifier,
        roster=federation.roster,
        timeout_s=timeout_s,
        redactor=hooks,
        assessor=hooks,
        credentials=node.config.client_credentials(),
    )
    return client, hooks


@contextmanager
def forging(node: Node) -> Iterator[None]:
    """The node signs with its own key id but another private key: every signature it
    makes is bad (what a tampered answer, or a forger who knows the key id, looks like)."""
    federation = node.federation
    assert federation is not None
    signer = federation.signer
    honest = signer.identity
    forged = jwk.JWK(kty="OKP", crv="Ed25519", x=honest.key.get("x"), d=generate_key().get("d"))
    signer.identity = SigningIdentity(forged, honest.sender, honest.federation)
    try:
        yield
    finally:
        signer.identity = honest


def check_sending_hooks(hooks: Hooks, sent_text: str) -> a2a_pb2.Message:
    """redact saw the unsigned message; audit saw the request signed for globex (its
    digest and signature). Returns the request as sent."""
    redact, sent, signed = hooks.one("redact"), hooks.one("sent"), hooks.one("signed")
    assert redact.peer == sent.peer == signed.peer == "globex"
    assert redact.message is not None and SIGNATURE_KEY not in redact.message.metadata
    request = signed.message
    assert request is not None and request.message_id == redact.message.message_id
    parts = read_signed(request)
    assert parts is not None
    claims = parts.claims
    assert (claims.kind, claims.sender, claims.recipient) == ("request", "acme", "globex")
    assert sent.hop is not None
    assert (sent.hop.kind, sent.hop.message_id, sent.hop.kid) == (
        "request",
        request.message_id,
        claims.kid,
    )
    assert sent.hop.digest == digest(request) and sent.hop.jws == parts.token
    assert text_of(request) == sent_text
    return request


def check_receiving_hooks(hooks: Hooks, request: a2a_pb2.Message) -> a2a_pb2.Message:
    """audit saw globex's reply verified and bound to the request; assess saw the same
    reply, trusted. Returns the reply."""
    received, assess = hooks.one("received"), hooks.one("assess")
    assert received.peer == assess.peer == "globex"
    verdict = assess.verdict
    assert verdict is not None and verdict.trusted and verdict.refusal == ""
    assert verdict.request == request and verdict.reply is not None
    reply = verdict.reply
    parts = read_signed(reply)
    assert parts is not None
    claims = parts.claims
    assert (claims.kind, claims.sender, claims.recipient) == ("answer", "globex", "acme")
    assert claims.request_digest == digest(request)
    hop = received.hop
    assert hop is not None and (hop.kind, hop.message_id) == ("answer", reply.message_id)
    assert hop.digest == digest(reply) and hop.request_digest == digest(request)
    return reply


async def test_an_ask_passes_every_hook_in_order(acme: tuple[PeerClient, Hooks]) -> None:
    client, hooks = acme
    answer = await client.ask("globex", "hello from acme")
    assert hooks.names() == ["redact", "sent", "signed", "received", "assess"]
    request = check_sending_hooks(hooks, "hello from acme")
    reply = check_receiving_hooks(hooks, request)
    assert answer.text == text_of(reply) == "hello from acme"
    assert answer.state == "completed" and answer.verified
    assert answer.verified_events >= 4  # working, three artifact chunks, completed
    assert answer.provenance["model"] == "echo-globex"


async def test_a_score_passes_every_hook_in_order(acme: tuple[PeerClient, Hooks]) -> None:
    client, hooks = acme
    question = Question("Which city is the capital of France?", ("Paris", "Berlin"))
    scores = await client.score("globex", question)
    assert hooks.names() == ["redact", "sent", "signed", "received", "assess"]
    request = check_sending_hooks(hooks, question.stem)
    assert request.metadata["consortium"]["mode"] == "score"
    reply = check_receiving_hooks(hooks, request)
    assert reply.metadata["consortium"]["model"] == "echo-globex"
    assert scores.org == "globex" and scores.model == "echo-globex"
    assert len(scores.scores.logprobs) == 2 and scores.tokens > 0


async def test_the_peer_receives_what_the_redactor_left(fed: Federation) -> None:
    client, hooks = peer_client(fed.nodes["acme"], Hooks("Alice Smith", "[person]"))
    try:
        answer = await client.ask("globex", "Alice Smith asked about her results")
    finally:
        await close(client, fed.nodes["acme"])
    # globex's echo model answers with the words it was sent.
    assert answer.text == "[person] asked about her results"
    assert text_of(hooks.one("redact").message) == "Alice Smith asked about her results"
    check_sending_hooks(hooks, "[person] asked about her results")


async def test_a_badly_signed_answer_is_untrusted_and_assessed(
    fed: Federation, acme: tuple[PeerClient, Hooks]
) -> None:
    client, hooks = acme
    with forging(fed.nodes["globex"]), pytest.raises(UntrustedAnswer) as e:
        await client.ask("globex", "hello again")
    assert str(e.value).startswith("the answer from globex was refused: bad_signature: ")
    # Audited as refused, not received; the assessor is told why.
    assert hooks.names() == ["redact", "sent", "signed", "refused", "assess"]
    verdict = hooks.one("assess").verdict
    assert verdict is not None and not verdict.trusted
    assert verdict.reply is None and verdict.refusal == "bad_signature"
    assert verdict.request == hooks.one("signed").message

    hooks.calls.clear()
    question = Question("Which city is the capital of France?", ("Paris", "Berlin"))
    with forging(fed.nodes["globex"]), pytest.raises(UntrustedAnswer) as e:
        await client.score("globex", question)
    assert str(e.value).startswith("the scores from globex were refused: bad_signature: ")
    assert hooks.names() == ["redact", "sent", "signed", "refused", "assess"]
    # globex signs honestly again: the next answer is trusted.
    hooks.calls.clear()
    assert (await client.ask("globex", "honest again")).verified
    assert hooks.names() == ["redact", "sent", "signed", "received", "assess"]


async def test_a_task_relying_on_an_untrusted_answer_fails_with_the_reason(
    fed: Federation,
) -> None:
    with forging(fed.nodes["globex"]):
        answer: Any = await fed.ask_via("acme", "route me", peer="globex")
    assert answer.state == "failed"
    assert answer.status_text.startswith(
        "failed: the answer from globex was refused: bad_signature: "
    )
