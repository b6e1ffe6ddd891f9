"""Redaction in the exchange, between real nodes on loopback (echo model: the peer answers
with the words it was sent, so what it saw comes back to be restored).

acme redacts with the real detector (Presidio + the offline spaCy model): pseudonyms by
default, US_SSN blocked for everyone, PHONE_NUMBER blocked for peers in jurisdiction US
(initech, by its roster entry), and everything masked for initech. globex (jurisdiction
EU) gets pseudonyms. The tests check what the user sees (the real values, restored, also
in the streamed chunks), what the peer saw and kept (its task store, logs and spans never
hold a value), what provenance says (types and counts), that a blocked task stays home,
and that the receipts verify.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from a2a.types import a2a_pb2
from google.protobuf.json_format import MessageToDict

from consortium.errors import ConfigError
from consortium.federation.admin import add_member, member_from_card
from consortium.federation.roster import load_roster
from consortium.logsafe import SDK_LOGGERS, WithholdArguments
from consortium.node.app import Node, build_redactor
from consortium.node.client import Answer, ask, open_client
from consortium.node.config import parse_config
from consortium.node.receipts import check_receipt
from consortium.node.redaction import RedactionFailed
from consortium.redaction.receipts import DisclosureStore, read_redaction_metadata
from consortium.trust.keys import load_private_key
from consortium.trust.signing import SigningIdentity, sign_request
from tests.integration.test_federation import Federation

pytestmark = pytest.mark.asyncio(loop_scope="module")

NAME, EMAIL = "Maria Gonzalez", "maria.gonzalez@example.com"
PHONE, SSN = "(212) 555-0187", "536-90-4399"
TEXT = f"Please write to {NAME} at {EMAIL} about the invoice that {NAME} sent."
JURISDICTION = {"acme": "EU", "globex": "EU", "initech": "US"}
POLICY: dict[str, Any] = {
    "enabled": True,
    "actions": {"US_SSN": "block"},
    "rules": [{"when": {"jurisdiction": "US"}, "actions": {"PHONE_NUMBER": "block"}}],
    "peers": {"initech": {"default": "mask"}},
}
GROUPS = {"panel": {"protocol": "vote", "members": ["self", "globex", "initech"]}}


class RedactingFederation(Federation):
    """acme starts last, once globex and initech are in the roster (its policy names
    initech, and a policy naming a stranger is refused at start)."""

    def config(self, org: str) -> Any:
        cfg = super().config(org)
        if org != "acme":
            return cfg
        data = cfg.model_dump(mode="json", exclude={"base_dir"})
        data["redaction"] = POLICY
        data["groups"] = GROUPS
        return parse_config(data, path=cfg.base_dir / "node.toml")

    async def start(self) -> None:
        for org in ("globex", "initech", "acme"):
            node = self.node(self.config(org))
            await node.start()
            self.nodes[org] = node
            assert node.endpoints is not None
            url = node.endpoints.http_url + "/.well-known/agent-card.json"
            async with self.http(node) as http:
                card = (await http.get(url)).json()
            member = member_from_card(card, url)
            caps = member.capabilities.model_copy(update={"jurisdiction": JURISDICTION[org]})
            add_member(
                self.roster, self.admin_key, member.model_copy(update={"capabilities": caps})
            )
        await self.roster_seen(lambda r: len(r.members) == 3)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RedactingFederation]:
    f = RedactingFederation(tmp_path_factory.mktemp("redaction"))
    try:
        await f.start()
        yield f
    finally:
        await f.stop()


def _node(fed: Federation, org: str) -> Node:
    return fed.nodes[org]


def _files_holding(directory: Path, needle: str) -> list[str]:
    """The files under `directory` whose bytes contain `needle` (UTF-8)."""
    raw = needle.encode()
    return [str(p) for p in directory.rglob("*") if p.is_file() and raw in p.read_bytes()]


@contextlib.contextmanager
def _node_logging(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Logging as a node at level DEBUG has it (logsafe.install): Consortium's loggers at
    DEBUG, the SDKs' at WARNING with their arguments withheld, the rest at INFO."""
    withhold = WithholdArguments()
    caplog.handler.addFilter(withhold)
    try:
        with contextlib.ExitStack() as stack:
            for name in SDK_LOGGERS:
                stack.enter_context(caplog.at_level(logging.WARNING, logger=name))
            stack.enter_context(caplog.at_level(logging.INFO))
            stack.enter_context(caplog.at_level(logging.DEBUG, logger="consortium"))
            yield
    finally:
        caplog.handler.removeFilter(withhold)


def _flush_spans(fed: Federation) -> None:
    for node in fed.nodes.values():
        if node.tracer_provider is not None:
            node.tracer_provider.force_flush()


async def test_the_peer_sees_pseudonyms_and_the_user_the_real_values(
    fed: RedactingFederation, caplog: pytest.LogCaptureFixture
) -> None:
    chunks: list[str] = []
    with _node_logging(caplog):
        answer = await fed.ask_via("acme", TEXT, peer="globex", on_text=chunks.append)
    assert answer.state == "completed", answer.status_text
    # globex echoed what it received; acme restored it, whole and in the stream.
    assert answer.text == TEXT
    assert "".join(chunks) == TEXT and len(chunks) > 1
    redaction = answer.provenance.redaction
    assert redaction is not None
    assert redaction.peers == {"globex": {"PERSON": 2, "EMAIL_ADDRESS": 1}}
    assert redaction.receipts is not None and len(redaction.receipts) == 1
    # What globex kept: the same placeholder twice for the same name, never a value.
    globex_dir = _node(fed, "globex").config.data_dir
    assert _files_holding(globex_dir, "<PERSON_1>"), "the scan must see globex's tasks"
    assert _files_holding(globex_dir, "<EMAIL_ADDRESS_1>")
    assert not _files_holding(globex_dir, "<PERSON_2>")
    _flush_spans(fed)
    # acme's span of the redaction says what, never which values.
    acme_trace = (_node(fed, "acme").config.data_dir / "traces.jsonl").read_text()
    assert "consortium.redaction.entities" in acme_trace and "PERSON=2" in acme_trace
    for value in (NAME, EMAIL, "Gonzalez"):
        assert _files_holding(globex_dir, value) == []
        assert value not in caplog.text
        acme_spans = _node(fed, "acme").config.data_dir / "traces.jsonl"
        assert value.encode() not in acme_spans.read_bytes()


async def test_the_receipt_verifies_against_what_the_peer_received(
    fed: RedactingFederation,
) -> None:
    answer = await fed.ask_via("acme", TEXT, peer="globex")
    assert answer.provenance.redaction is not None
    (message_id,) = answer.provenance.redaction.receipts or []
    store = DisclosureStore(_node(fed, "acme").config.redaction_path, must_exist=True)
    try:
        kept = store.get(message_id)
    finally:
        store.close()
    assert kept is not None and kept.recipient == "globex"
    assert sorted(d.entity_type for d in kept.disclosures) == [
        "EMAIL_ADDRESS",
        "PERSON",
        "PERSON",
    ]
    claims = read_redaction_metadata(MessageToDict(kept.message.metadata))
    assert claims is not None and set(claims.digests) == {d.digest for d in kept.disclosures}
    roster = load_roster(fed.roster)
    email = next(d for d in kept.disclosures if d.entity_type == "EMAIL_ADDRESS")
    assert email.value == EMAIL
    result = check_receipt(kept.message, [email.encoded], roster)
    assert result.ok, result
    # A tampered disclosure (another value under the same salt) does not verify.
    forged = type(email)(email.salt, email.entity_type, "someone@example.com")
    assert not check_receipt(kept.message, [forged.encoded], roster).ok


async def test_one_task_one_mapping_and_no_link_across_tasks(fed: RedactingFederation) -> None:
    other = "Please write to John Smith at john.smith@example.org about the invoice."
    first = await fed.ask_via("acme", other, peer="globex")
    both = await fed.ask_via("acme", f"{other} Also tell {NAME}.", peer="globex")
    assert first.text == other and both.text == f"{other} Also tell {NAME}."
    assert first.provenance.redaction.peers == {"globex": {"PERSON": 1, "EMAIL_ADDRESS": 1}}
    assert both.provenance.redaction.peers["globex"]["PERSON"] == 2
    # John Smith was <PERSON_1> in both tasks and Maria <PERSON_2>: numbers count first
    # appearances in a task, they do not follow a value from task to task.
    store = DisclosureStore(_node(fed, "acme").config.redaction_path, must_exist=True)
    try:
        a = store.get((first.provenance.redaction.receipts or [""])[0])
        b = store.get((both.provenance.redaction.receipts or [""])[0])
    finally:
        store.close()
    assert a is not None and b is not None
    sent_a, sent_b = a.message.parts[0].text, b.message.parts[0].text
    assert sent_a.startswith("Please write to <PERSON_1> at <EMAIL_ADDRESS_1>")
    assert sent_b.endswith("Also tell <PERSON_2>.")
    # The same value gets a differently salted digest in each task.
    john_a = {d.digest for d in a.disclosures if d.value == "John Smith"}
    john_b = {d.digest for d in b.disclosures if d.value == "John Smith"}
    assert john_a and john_b and not john_a & john_b


async def test_a_mask_is_not_restored(fed: RedactingFederation) -> None:
    answer = await fed.ask_via("acme", TEXT, peer="initech")
    assert answer.state == "completed", answer.status_text
    assert NAME not in answer.text and EMAIL not in answer.text
    assert "<PERSON>" in answer.text and "<EMAIL_ADDRESS>" in answer.text
    assert answer.provenance.redaction.peers == {"initech": {"PERSON": 2, "EMAIL_ADDRESS": 1}}


async def test_a_blocked_type_is_refused_when_the_user_named_the_peer(
    fed: RedactingFederation,
) -> None:
    text = f"My social security number is {SSN}, what should I do?"
    answer = await fed.ask_via("acme", text, peer="globex")
    assert answer.state == "rejected"
    assert "blocks US_SSN" in answer.status_text and SSN not in answer.status_text
    assert _files_holding(_node(fed, "globex").config.data_dir, SSN) == []


async def test_a_blocked_type_keeps_a_routed_task_local(fed: RedactingFederation) -> None:
    text = f"My social security number is {SSN}, what should I do?"
    answer = await fed.ask_via("acme", text, route="always:globex")
    assert answer.state == "completed", answer.status_text
    assert answer.provenance.org == "acme"  # acme's own model answered
    assert answer.provenance.decision is not None
    assert "blocks US_SSN" in answer.provenance.decision.reason
    assert _files_holding(_node(fed, "globex").config.data_dir, SSN) == []


async def test_a_rule_by_jurisdiction_blocks_one_peer_only(fed: RedactingFederation) -> None:
    text = f"Call {NAME} on {PHONE} tomorrow."
    refused = await fed.ask_via("acme", text, peer="initech")
    assert refused.state == "rejected" and "blocks PHONE_NUMBER" in refused.status_text
    allowed = await fed.ask_via("acme", text, peer="globex")
    assert allowed.state == "completed" and allowed.text == text
    assert allowed.provenance.redaction.peers["globex"]["PHONE_NUMBER"] == 1
    assert _files_holding(_node(fed, "initech").config.data_dir, "555-0187") == []


async def test_a_group_sees_the_same_pseudonyms_and_a_blocked_member_sits_out(
    fed: RedactingFederation,
) -> None:
    choices = [f"{NAME} signed it", "John Smith signed it", "Nobody signed it"]
    answer = await fed.ask_via("acme", "Who signed the contract?", choices=choices, route="panel")
    assert answer.state == "completed", answer.status_text
    assert answer.text.split(". ", 1)[1] in choices  # options come back with real names
    redaction = answer.provenance.redaction
    assert redaction is not None and redaction.peers is not None
    assert redaction.peers["globex"] == {"PERSON": 2}
    assert redaction.peers["initech"] == {"PERSON": 2}
    # With a phone number in the options, initech (US) may not be sent the task.
    phoned = [f"Call {PHONE}", "Write a letter", "Do nothing"]
    answer = await fed.ask_via("acme", "How do I reach the office?", choices=phoned, route="panel")
    assert answer.state == "completed", answer.status_text
    members = answer.provenance.members or {}
    assert "initech" not in members and "globex" in members
    assert answer.provenance.redaction is not None
    assert answer.provenance.redaction.blocked == {"initech": ["PHONE_NUMBER"]}


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"peers": {"umbrella": {"default": "mask"}}}, "redaction.peers.umbrella: not a member"),
        ({"peers": {"acme": {"default": "mask"}}}, "names this node itself"),
        ({"spacy_model": "en_core_web_nonexistent"}, "en_core_web_nonexistent"),
    ],
)
async def test_a_policy_that_cannot_apply_stops_the_start_with_one_line(
    fed: RedactingFederation, change: dict[str, Any], fragment: str
) -> None:
    acme = _node(fed, "acme")
    data = acme.config.model_dump(mode="json", exclude={"base_dir"})
    data["redaction"] = {**POLICY, **change}
    cfg = parse_config(data, path=acme.config.base_dir / "node.toml")
    assert acme.federation is not None
    with pytest.raises(ConfigError) as info:
        build_redactor(cfg, acme.federation.roster)
    assert fragment in str(info.value) and "\n" not in str(info.value)


async def test_redaction_is_off_unless_enabled(fed: RedactingFederation) -> None:
    answer = await fed.ask_via("globex", TEXT, peer="initech")  # globex has no policy
    assert answer.text == TEXT and answer.provenance.redaction is None
    assert _files_holding(_node(fed, "initech").config.data_dir, NAME)


async def test_an_answer_ending_inside_a_placeholder_fails_closed(
    fed: RedactingFederation,
) -> None:
    # globex echoes "... <PERSON_1": the stream ends on a fragment of the task's pseudonym.
    answer = await fed.ask_via("acme", f"Tell {NAME} hello <PERSON_1", peer="globex")
    assert answer.state == "failed"
    assert "ended inside a pseudonym" in answer.status_text
    assert NAME not in answer.status_text


async def _ask_in_parts(fed: RedactingFederation, parts: list[str], peer: str) -> Answer:
    """Asks acme with a message of several text parts, for `peer`."""
    node = _node(fed, "acme")
    key = load_private_key(node.config.resolve(node.config.identity.private_key))
    client = open_client(node.card, credentials=node.config.client_credentials())  # type: ignore[arg-type]

    def in_parts(message: a2a_pb2.Message) -> a2a_pb2.Message:
        del message.parts[:]
        message.parts.extend(a2a_pb2.Part(text=p) for p in parts)
        identity = SigningIdentity(key, "acme", "test-federation")
        return sign_request(message, identity, recipient="acme")[0]

    try:
        return await ask(client, "".join(parts), options={"peer": peer}, sign=in_parts)
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("before", "head", "tail", "after"),
    [
        ("Charge my card ", "4539 1488 ", "0343 6467", " today."),
        ("Write to ", "vesna.kova", "cevic@example.net", " today."),
        ("Call my mobile ", "(646) 55", "5-0139", " tonight."),
    ],
    ids=["card", "email", "phone"],
)
async def test_a_value_split_across_parts_reaches_the_peer_in_no_part(
    fed: RedactingFederation, before: str, head: str, tail: str, after: str
) -> None:
    parts = [before + head, tail + after]
    answer = await _ask_in_parts(fed, parts, "globex")
    assert answer.state == "completed", answer.status_text
    redaction = answer.provenance.redaction
    assert redaction is not None and redaction.receipts
    store = DisclosureStore(_node(fed, "acme").config.redaction_path, must_exist=True)
    try:
        kept = store.get(redaction.receipts[0])
    finally:
        store.close()
    assert kept is not None
    sent = "".join(p.text for p in kept.message.parts)
    globex_dir = _node(fed, "globex").config.data_dir
    for piece in (head.strip(), tail):
        assert piece not in sent, sent
        assert _files_holding(globex_dir, piece) == []
    assert not any(c.isdigit() for c in re.sub(r"<[A-Z_]+\d*>", "", sent)), sent
    for word in ("vesna", "kova", "cevic"):
        assert word not in sent, sent
    # The user's parts reach the model joined by a line break (A2A's text of a message);
    # globex echoed the words it was sent, and acme restored them.
    assert answer.text.split() == "\n".join(parts).split()


async def test_a_part_that_is_not_text_is_not_sent(fed: RedactingFederation) -> None:
    acme = _node(fed, "acme")
    assert acme.federation is not None
    message = a2a_pb2.Message(
        message_id="m-1",
        role=a2a_pb2.ROLE_USER,
        parts=[a2a_pb2.Part(text="hello"), a2a_pb2.Part(raw=EMAIL.encode())],
    )
    with pytest.raises(RedactionFailed, match="not text"):
        await acme.federation.peers.redactor.redact(message, "globex")


async def test_the_nodes_own_records_leave_unredacted(fed: RedactingFederation) -> None:
    """A trust report and a checkpoint carry the node's own records in a data part, no
    user's text: they go to peers under a redaction policy that would refuse any data
    part of a user's message."""
    acme = _node(fed, "acme")
    assert acme.reports is not None and acme.witnessing is not None
    reported = await acme.reports.send_all()
    assert reported == {"globex": "ok", "initech": "ok"}
    witnessed = await acme.witnessing.submit_all()
    assert witnessed == {"globex": "ok", "initech": "ok"}


async def test_old_receipts_are_pruned_by_the_nodes_retention(fed: RedactingFederation) -> None:
    """`[redaction] receipts_days`: the node's retention forgets the receipts older than
    that (here seen from two days on). Last in the module: acme's receipts are gone."""
    import time

    from consortium.node.app import retention_steps
    from consortium.node.retention import DAY_S, receipts_step

    node = _node(fed, "acme")
    assert node.federation is not None and node.federation.disclosures is not None
    answer = await fed.ask_via("acme", TEXT, peer="globex")
    (message_id,) = answer.provenance.redaction.receipts or []
    redaction = node.config.redaction.model_copy(update={"receipts_days": 1.0})
    steps = retention_steps(
        node.config.model_copy(update={"redaction": redaction}), node.federation
    )
    assert [s.what for s in steps] == ["redaction receipts"]
    assert retention_steps(node.config, node.federation) == []  # the default keeps them
    store = node.federation.disclosures
    assert steps[0].prune() == 0 and store.get(message_id) is not None  # a day not yet past
    later = receipts_step(store, 1.0, clock=lambda: time.time() + 2 * DAY_S)
    assert later is not None and later.prune() >= 1
    assert store.get(message_id) is None
