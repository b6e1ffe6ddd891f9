"""The audit log of real echo nodes on loopback (node/audit.py, trust/audit/log.py): an
escalation leaves the matching entries on both sides (the request out and in, every
streamed event and the answer in and out, with equal digests and signatures), the
answer carries the peer's log receipt and the asker records it as included; refusals,
routing decisions and the roster version are entries too; no message text is in any
log; the witnessing door (`mode: cosign`) is for verified members only and refuses
malformed or foreign checkpoints with a reason; `consortium audit verify` passes both
logs."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from a2a.types import a2a_pb2, a2a_pb2_grpc

from consortium.node.app import retention_steps
from consortium.node.client import text_message
from consortium.node.retention import prune_all
from consortium.node.witnessing import cosign_message
from consortium.protocols.request_options import METADATA_KEY
from consortium.trust.audit import log_origin
from consortium.trust.audit.notes import Checkpoint, format_note, sign_note
from consortium.trust.jws import signing_key_of
from consortium.trust.keys import generate_key, load_private_key
from consortium.trust.signing import SigningIdentity, sign_request
from tests.integration.test_federation import Federation

pytestmark = pytest.mark.asyncio(loop_scope="module")
SECRET = "the quarterly numbers of Project Nightingale"


class ReceiptFederation(Federation):
    """Echo nodes whose replies carry log receipts (`[audit] receipts = true`)."""

    def config(self, org: str) -> Any:
        cfg = super().config(org)
        return cfg.model_copy(update={"audit": cfg.audit.model_copy(update={"receipts": True})})


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Federation]:
    f = ReceiptFederation(tmp_path_factory.mktemp("audit"))
    try:
        await f.start()
        yield f
    finally:
        await f.stop()


def entries(fed: Federation, org: str) -> list[dict[str, Any]]:
    node = fed.nodes[org]
    db = sqlite3.connect(node.config.audit_path)
    try:
        return [json.loads(b) for (b,) in db.execute("SELECT body FROM entries ORDER BY seq")]
    finally:
        db.close()


def hops(log: list[dict[str, Any]], trace: str) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {
        (e["kind"], e["dir"], e["msg"]): e
        for e in log
        if e.get("trace") == trace and e["kind"] in ("request", "answer", "event")
    }


async def test_an_escalation_is_logged_on_both_sides(fed: Federation) -> None:
    answer = await fed.ask_via("acme", SECRET, peer="globex")
    assert answer.state == "completed", answer.status_text
    acme, globex = entries(fed, "acme"), entries(fed, "globex")
    [request] = [
        e
        for e in acme
        if e["kind"] == "request" and e["dir"] == "out" and e.get("peer") == "globex"
    ][-1:]
    trace = request["trace"]
    sent, received = hops(acme, trace), hops(globex, trace)
    # Every message of the exchange is in both logs, with the same digest and JWS.
    assert {(k, m) for k, d, m in sent if d == "out"} == {
        (k, m) for k, d, m in received if d == "in"
    }
    assert {(k, m) for k, d, m in received if d == "out"} == {
        (k, m) for k, d, m in sent if d == "in"
    }
    for (kind, direction, msg), entry in sent.items():
        other = received[(kind, "in" if direction == "out" else "out", msg)]
        assert (entry["digest"], entry["jws"]) == (other["digest"], other["jws"])
        assert entry["kid"] == other["kid"]
    kinds = sorted(k for k, d, _ in received if d == "out")
    assert kinds.count("answer") == 1 and kinds.count("event") >= 4
    for (kind, _, _), entry in sent.items():
        if kind != "request":
            assert entry["req"] == request["digest"]
    # globex's answer carried the receipt of its entry of the request: included, and
    # kept in acme's entry of the answer.
    [(_, _, answer_id)] = [k for k in sent if k[0] == "answer" and k[1] == "in"]
    answer_entry = sent[("answer", "in", answer_id)]
    assert answer_entry["inclusion"] == "included"
    receipt = answer_entry["receipt"]
    logged = json.loads(receipt["entry"])
    assert logged["msg"] == request["msg"] and logged["digest"] == request["digest"]
    assert logged["dir"] == "in" and logged["peer"] == "acme"


async def test_decisions_and_documents_are_entries(fed: Federation) -> None:
    answer = await fed.ask_via("acme", "route me", route="always:globex")
    assert answer.state == "completed", answer.status_text
    acme = entries(fed, "acme")
    routes = [e for e in acme if e["kind"] == "route"]
    assert routes and routes[-1]["detail"]["router"] == "always"
    assert routes[-1]["detail"]["route"] == "escalate" and routes[-1]["peer"] == "globex"
    rosters = [e for e in acme if e["kind"] == "roster"]
    assert rosters and rosters[-1]["detail"]["version"] >= 1
    # Every roster version the node took is archived, so its keys stay verifiable.
    archive = fed.nodes["acme"].config.data_dir / "audit-rosters"
    assert len(list(archive.glob("roster-v*.toml"))) == len(
        {e["detail"]["digest"] for e in rosters}
    )


async def test_a_refused_message_is_an_entry(fed: Federation) -> None:
    """A message signed with a key the roster does not list for its sender."""
    globex = fed.nodes["globex"]
    assert globex.endpoints is not None
    forged = sign_request(
        text_message("forged"),
        SigningIdentity(generate_key(), "acme", "test-federation"),
        recipient="globex",
    )[0]
    async with grpc.aio.insecure_channel(globex.endpoints.grpc_target) as channel:
        stub = a2a_pb2_grpc.A2AServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.SendMessage(a2a_pb2.SendMessageRequest(message=forged))
    refusals = [e for e in entries(fed, "globex") if e["kind"] == "refusal"]
    assert refusals[-1]["msg"] == forged.message_id
    assert (refusals[-1]["peer"], refusals[-1]["verdict"]) == ("acme", "unknown_key")


async def test_no_message_text_is_in_any_log(fed: Federation) -> None:
    answer = await fed.ask_via("acme", SECRET, peer="globex")
    assert answer.state == "completed"
    for org in ("acme", "globex"):
        path = fed.nodes[org].config.audit_path
        data = b"".join(p.read_bytes() for p in path.parent.glob("audit.sqlite3*") if p.is_file())
        assert b"Nightingale" not in data and SECRET.encode() not in data
        # Positive control: the task store does hold it, so the scan can find it.
    store = fed.nodes["globex"].config.database_path
    stored = b"".join(p.read_bytes() for p in store.parent.glob("node.sqlite3*") if p.is_file())
    assert b"Nightingale" in stored


# -- the witnessing door ---------------------------------------------------------------


async def send_as(fed: Federation, sender: str, to: str, message: a2a_pb2.Message) -> Any:
    """`message` signed by `sender` (a member) to `to`'s node; the reply's metadata."""
    node, origin = fed.nodes[to], fed.nodes[sender]
    assert node.endpoints is not None
    key = load_private_key(origin.config.resolve(origin.config.identity.private_key))
    signed = sign_request(message, SigningIdentity(key, sender, "test-federation"), recipient=to)[0]
    async with grpc.aio.insecure_channel(node.endpoints.grpc_target) as channel:
        stub = a2a_pb2_grpc.A2AServiceStub(channel)
        reply = await stub.SendMessage(a2a_pb2.SendMessageRequest(message=signed))
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(reply.message.metadata)[METADATA_KEY]


def checkpoint_note(origin: str, key: Any, size: int = 1, root: bytes = b"\1" * 32) -> str:
    body = Checkpoint(origin, size, root).body()
    return format_note(body, [sign_note(body, origin, signing_key_of(key))])


async def test_a_member_cannot_pass_off_another_members_log(fed: Federation) -> None:
    initech = fed.nodes["initech"]
    key = load_private_key(initech.config.resolve(initech.config.identity.private_key))
    # initech signs a checkpoint claiming to be acme's log and submits it as itself.
    note = checkpoint_note(log_origin("test-federation", "acme"), key)
    reply = await send_as(fed, "initech", "globex", cosign_message(note, 0, []))
    assert reply["verdict"] == "bad_checkpoint" and "cosignature" not in reply
    # Its own log, signed by a key it does not hold: refused too.
    forged = checkpoint_note(log_origin("test-federation", "initech"), generate_key())
    reply = await send_as(fed, "initech", "globex", cosign_message(forged, 0, []))
    assert reply["verdict"] == "bad_signature"


@pytest.mark.parametrize(
    "content",
    [
        {"checkpoint": 7, "oldSize": 0},
        {"checkpoint": "x", "oldSize": -1},
        {"checkpoint": "x", "oldSize": 0, "proof": ["not base64!"]},
        {"checkpoint": "x" * 9000, "oldSize": 0},
        {"checkpoint": "not a note", "oldSize": 0},
    ],
)
async def test_malformed_checkpoints_are_refused_with_a_reason(
    fed: Federation, content: dict[str, Any]
) -> None:
    from google.protobuf import json_format, struct_pb2

    message = cosign_message("placeholder", 0, [])
    value = struct_pb2.Value()
    json_format.ParseDict(content, value)
    message.parts[0].data.CopyFrom(value)
    reply = await send_as(fed, "acme", "initech", message)
    assert reply["verdict"] in ("malformed", "bad_checkpoint")
    assert "cosignature" not in reply


async def test_strangers_and_local_users_cannot_submit_checkpoints(fed: Federation) -> None:
    """Unsigned (the anonymous loopback user, or an API key user) is refused before
    anything is judged."""
    node = fed.nodes["globex"]
    assert node.endpoints is not None
    message = cosign_message("anything", 0, [])
    async with grpc.aio.insecure_channel(node.endpoints.grpc_target) as channel:
        stub = a2a_pb2_grpc.A2AServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.SendMessage(a2a_pb2.SendMessageRequest(message=message))
    assert e.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
    # The task path never saw it: nothing was witnessed.
    assert (await fed.healthz("globex"))["audit"]["cosigned"] == 0


async def test_both_logs_verify(fed: Federation, tmp_path: Path) -> None:
    import subprocess
    import sys

    for org in ("acme", "globex"):
        log = fed.nodes[org].federation.audit_log  # type: ignore[union-attr]
        assert log is not None
        log.checkpoint()
        # The organization's node.toml as an auditor reads it (the test's nodes run on
        # a config built in memory).
        with (fed.tmp / org / "node.toml").open("a") as f:
            f.write(f'\n[federation]\nroster = "{fed.roster}"\nadmin_key = "{fed.admin_pub}"\n')
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "consortium.cli", "audit", "verify", str(fed.tmp / org)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "verified" in result.stdout


async def test_witnesses_must_be_other_members(fed: Federation) -> None:
    from consortium.errors import ConfigError
    from consortium.node.app import build_witnessing
    from consortium.node.config import AuditSection

    node = fed.nodes["acme"]
    for bad in (["umbrella"], ["acme"]):
        cfg = node.config.model_copy(update={"audit": AuditSection(witnesses=bad)})
        with pytest.raises(ConfigError, match=r"audit\.witnesses.*not another member"):
            build_witnessing(cfg, node.federation)
    good = node.config.model_copy(update={"audit": AuditSection(witnesses=["initech"])})
    witnessing = build_witnessing(good, node.federation)
    assert witnessing is not None and witnessing.witnesses() == ["initech"]


# -- proofs served to members ----------------------------------------------------------


def proof_message(content: dict[str, Any]) -> a2a_pb2.Message:
    from google.protobuf import json_format, struct_pb2

    message = cosign_message("placeholder", 0, [])
    value = struct_pb2.Value()
    json_format.ParseDict(content, value)
    message.parts[0].data.CopyFrom(value)
    message.metadata.update({METADATA_KEY: {"mode": "proof"}})
    return message


async def test_a_member_gets_proofs_of_its_own_requests_only(fed: Federation) -> None:
    from consortium.trust.audit.inclusion import check_receipt
    from consortium.trust.audit.merkle import verify_consistency
    from consortium.trust.audit.notes import Checkpoint, parse_note
    from consortium.trust.audit.witness import decode_proof
    from consortium.trust.jws import verify_key_of

    answer = await fed.ask_via("globex", "prove it", sender="acme")
    assert answer.state == "completed", answer.status_text
    globex_log = entries(fed, "globex")
    [request] = [
        e for e in globex_log if e["kind"] == "request" and e["dir"] == "in" and e["peer"] == "acme"
    ][-1:]
    reply = await send_as(fed, "acme", "globex", proof_message({"inclusionOf": request["msg"]}))
    assert "error" not in reply
    globex = fed.nodes["globex"]
    key = load_private_key(globex.config.resolve(globex.config.identity.private_key))
    found = check_receipt(
        reply["receipt"],
        origin=log_origin("test-federation", "globex"),
        keys=[verify_key_of(key)],
        request_id=request["msg"],
        request_digest=request["digest"],
        asker="acme",
    )
    assert found.verdict == "included"
    # initech may not learn of acme's request; nor of an unknown one.
    for asker, msg in (("initech", request["msg"]), ("acme", "no-such-message")):
        refused = await send_as(fed, asker, "globex", proof_message({"inclusionOf": msg}))
        assert refused["error"] == "no recent request with this id from you"
        assert "receipt" not in refused
    # Consistency between two of globex's checkpoints, each a note it signed.
    log = globex.federation.audit_log  # type: ignore[union-attr]
    assert log is not None
    old = log.checkpoint().checkpoint.size
    await fed.ask_via("globex", "more entries", sender="acme")
    new = log.checkpoint().checkpoint.size
    first = await send_as(fed, "acme", "globex", proof_message({"consistency": [0, old]}))
    later = await send_as(fed, "acme", "globex", proof_message({"consistency": [old, new]}))
    old_root = Checkpoint.parse(parse_note(first["checkpoint"])[0]).root
    new_root = Checkpoint.parse(parse_note(later["checkpoint"])[0]).root
    verify_consistency(old, new, decode_proof(later["proof"]), old_root, new_root)
    for bad in ({"consistency": [new, old]}, {"consistency": [0, 10**9]}, {}, {"x": 1}):
        assert "error" in await send_as(fed, "acme", "globex", proof_message(bad))


async def test_strangers_get_no_proofs(fed: Federation) -> None:
    node = fed.nodes["globex"]
    assert node.endpoints is not None
    async with grpc.aio.insecure_channel(node.endpoints.grpc_target) as channel:
        stub = a2a_pb2_grpc.A2AServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.SendMessage(
                a2a_pb2.SendMessageRequest(message=proof_message({"consistency": [0, 1]}))
            )
    assert e.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


@pytest.mark.parametrize("mode", ["cosign", "proof"])
async def test_a_checkpoint_or_proof_request_naming_a_task_is_a_client_error(
    fed: Federation, mode: str
) -> None:
    """Message-only exchanges: a task id is refused as invalid before anything else."""
    node = fed.nodes["globex"]
    assert node.endpoints is not None
    message = proof_message({"consistency": [0, 1]})
    message.metadata.update({METADATA_KEY: {"mode": mode}})
    message.task_id = "some-task"
    async with grpc.aio.insecure_channel(node.endpoints.grpc_target) as channel:
        stub = a2a_pb2_grpc.A2AServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.SendMessage(a2a_pb2.SendMessageRequest(message=message))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "message-only exchange" in (e.value.details() or "")


async def test_a_checkpoint_cosigned_again_is_not_recorded_again(fed: Federation) -> None:
    """Witnessing does not grow the witness's log with a checkpoint it has cosigned
    already: the second submission of the same checkpoint is cosigned, not recorded."""
    acme = fed.nodes["acme"]
    assert acme.federation is not None and acme.federation.audit_log is not None
    log = acme.federation.audit_log
    signed = log.checkpoint()
    origin = log_origin("test-federation", "acme")

    async def submit() -> Any:
        """The checkpoint, from the size globex knows (with the consistency proof)."""
        seen = globex_log.seen(origin)
        old = seen.size if seen is not None else 0
        proof = log.consistency_proof(old, signed.checkpoint.size) if old else []
        return await send_as(fed, "acme", "globex", cosign_message(signed.note, old, proof))

    globex = fed.nodes["globex"]
    assert globex.federation is not None and globex.federation.audit_log is not None
    globex_log = globex.federation.audit_log

    def witnessed() -> list[dict[str, Any]]:
        return [
            e
            for e in entries(fed, "globex")
            if e["kind"] == "witness" and e["detail"]["origin"] == origin
        ]

    before = len(witnessed())
    first = await submit()
    again = await submit()
    assert first["verdict"] == again["verdict"] == "cosigned"
    assert len(witnessed()) == before + 1


async def test_retention_prunes_a_nodes_log_and_it_still_verifies(fed: Federation) -> None:
    """`[audit] max_entries` as the node applies it (its retention steps): the bodies of
    all but the newest entries go, and `consortium audit verify` still verifies the log
    and names the pruned range. (Last in the module: the log stays pruned.)"""
    import subprocess
    import sys

    node = fed.nodes["initech"]
    assert node.federation is not None and node.federation.audit_log is not None
    log = node.federation.audit_log
    answer = await fed.ask_via("initech", "hello there", peer="globex")
    assert answer.state == "completed"
    log.checkpoint()
    size = log.size
    audit = node.config.audit.model_copy(update={"max_entries": 2})
    steps = retention_steps(node.config.model_copy(update={"audit": audit}), node.federation)
    assert [s.what for s in steps] == ["audit entry bodies"]
    assert retention_steps(node.config, node.federation) == []  # the default keeps all
    await prune_all(steps)
    assert log.pruned_below == size - 2 and log.entry(0) is None
    with (fed.tmp / "initech" / "node.toml").open("a") as f:
        f.write(f'\n[federation]\nroster = "{fed.roster}"\nadmin_key = "{fed.admin_pub}"\n')
    log.checkpoint()
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "consortium.cli", "audit", "verify", str(fed.tmp / "initech")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"entries 0-{size - 3}: pruned by retention" in result.stdout
    assert "verified" in result.stdout
