"""Canaries in real traffic, between real echo nodes on loopback (real gRPC, signing,
verification, and acme's reputation engine over its trust.sqlite3).

acme's `[trust]` sends a canary with every call (rate 1, no repeat window, a background
interval longer than the tests). The pool is calibrated per declared model: globex
("echo-globex") gets canaries its echo passes (a prompt naming the word the check looks
for; a question whose right option shares a word with it), initech ("echo-initech") ones
its echo fails. Each test waits for acme's canaries in flight before it reads the
evidence: no sleeps.

Covered: a task, a multiple-choice task and a scoring call each carry a canary of their
kind, judged and recorded (passed for globex, failed for initech, per declared model);
the canary and the real call compare equal as globex receives them (message structure,
metadata keys, signature header), with no canary id on the wire; the real call does not
wait for its canary; a failed canary call adds no canary evidence; a scheduler failure
never stops the real call; no canary to a quarantined peer or to the node itself;
background canaries to idle peers only, and the loop's clean stop; the draws in
trust.sqlite3; `consortium trust show` counting them.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from a2a.types import a2a_pb2
from google.protobuf.json_format import MessageToDict

from consortium.node.app import Node
from consortium.node.canary_traffic import CanaryTraffic, canary_options
from consortium.node.config import parse_config
from consortium.node.peers import PeerError, PeerQuarantined
from consortium.protocols.multiple_choice import Question
from consortium.protocols.request_options import RequestOptions, forwarded
from consortium.trust.canaries import load_pool
from consortium.trust.canary_schedule import CanaryScheduler, CanarySettings
from consortium.trust.claims import SIGNATURE_KEY, read_signed
from consortium.trust.jws import protected_header
from consortium.trust.reputation import Evidence, Standing
from consortium.trust.reputation_engine import ReputationAssessor
from tests.integration.test_federation import Federation

pytestmark = pytest.mark.asyncio(loop_scope="module")

POOL = [
    {
        "id": "ft-globex",
        "prompt": "Tokyo is the capital of Japan",
        "check": {"type": "contains", "value": "tokyo"},
        "models": ["echo-globex"],
    },
    {
        "id": "ft-initech",
        "prompt": "Lyon is a city in France",
        "check": {"type": "contains", "value": "Paris"},
        "models": ["echo-initech"],
    },
    {
        "id": "mc-globex",
        "question": "Does water flow?",
        "choices": ["stone", "water"],
        "answer": 1,
        "models": ["echo-globex"],
    },
    {
        "id": "mc-initech",
        "question": "Does water flow?",
        "choices": ["stone", "water"],
        "answer": 0,
        "models": ["echo-initech"],
    },
]


class CanaryFederation(Federation):
    def config(self, org: str) -> Any:
        cfg = super().config(org)
        if org != "acme":
            return cfg
        pool = cfg.base_dir / "canaries.jsonl"
        pool.write_text("".join(json.dumps(row) + "\n" for row in POOL))
        data = cfg.model_dump(mode="json", exclude={"base_dir"})
        data["trust"] = {
            "canaries": "canaries.jsonl",
            "canary_rate": 1.0,
            "canary_repeat_window_s": 0.0,
            "canary_background_interval_s": 86400.0,
        }
        return parse_config(data, path=cfg.base_dir / "node.toml")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[CanaryFederation]:
    f = CanaryFederation(tmp_path_factory.mktemp("canaries"))
    try:
        await f.start()
        yield f
    finally:
        await f.stop()


def traffic(fed: Federation) -> CanaryTraffic:
    canaries = fed.nodes["acme"].canaries
    assert canaries is not None
    return canaries


def engine(fed: Federation) -> ReputationAssessor:
    federation = fed.nodes["acme"].federation
    assert federation is not None and isinstance(federation.assessor, ReputationAssessor)
    return federation.assessor


def canary_counts(fed: Federation, peer: str, model: str = "") -> tuple[int, int]:
    """acme's canary evidence about `peer` (and `model`), as its trust store holds it:
    (passed, failed)."""
    counts = engine(fed).model_reputation(peer, model).counts
    return counts.get(("canary", True), 0), counts.get(("canary", False), 0)


def peers(fed: Federation) -> Any:
    federation = fed.nodes["acme"].federation
    assert federation is not None
    return federation.peers


class Capture:
    """The requests a node admits, as it receives them (wrapping its verifier's check)."""

    def __init__(self, node: Node) -> None:
        assert node.handler is not None and node.handler.verifier is not None
        self.messages: list[a2a_pb2.Message] = []
        self._verifier = node.handler.verifier
        self._check = self._verifier.check

        def check(message: Any, parts: Any, **kwargs: Any) -> Any:
            if isinstance(message, a2a_pb2.Message) and message.role == a2a_pb2.ROLE_USER:
                copy = a2a_pb2.Message()
                copy.CopyFrom(message)
                self.messages.append(copy)
            return self._check(message, parts, **kwargs)

        self._verifier.check = check  # type: ignore[method-assign]

    def close(self) -> None:
        del self._verifier.check  # back to the class's method

    def with_text(self, text: str) -> a2a_pb2.Message:
        [message] = [m for m in self.messages if "".join(p.text for p in m.parts) == text]
        return message


@contextmanager
def capture(node: Node) -> Iterator[Capture]:
    c = Capture(node)
    try:
        yield c
    finally:
        c.close()


def shape(value: Any) -> Any:
    """A JSON value's structure: the keys of objects, the kinds of scalars, the shapes a
    list holds (not its length)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return sorted({json.dumps(shape(v), sort_keys=True) for v in value})
    return type(value).__name__


def as_received(message: a2a_pb2.Message) -> dict[str, Any]:
    """What a peer can compare between two requests: the message's structure, the
    signature's protected header and the claims' keys."""
    parts = read_signed(message)
    assert parts is not None
    return {
        "message": shape(MessageToDict(message)),
        "header": protected_header(message.metadata[SIGNATURE_KEY]),
        "signed_metadata": sorted(parts.form["metadata"]),
    }


def no_canary_ids(message: a2a_pb2.Message) -> None:
    wire = message.SerializeToString()
    for row in POOL:
        assert row["id"].encode() not in wire


# -- every call carries a canary ---------------------------------------------------------


async def test_a_task_to_a_peer_also_carries_a_canary_its_verdict_recorded(
    fed: CanaryFederation,
) -> None:
    before_pass = canary_counts(fed, "globex", "echo-globex")
    latest = engine(fed).standing("globex").canary
    answer = await fed.ask_via("acme", "hello from acme", peer="globex")
    assert answer.state == "completed" and answer.text == "hello from acme"
    await traffic(fed).idle()
    passed, failed = canary_counts(fed, "globex", "echo-globex")
    assert (passed, failed) == (before_pass[0] + 1, before_pass[1])
    # The real answer's provenance knows nothing of the canary sent with it: only the
    # verdict of the latest one before it, and no canary's id or text.
    assert answer.provenance.verdicts["globex"].canary == latest
    assert engine(fed).standing("globex").canary == "passed"
    wire = json.dumps(answer.provenance.model_dump(mode="json"))
    assert all(row["id"] not in wire for row in POOL)
    again = await fed.ask_via("acme", "hello again", peer="globex")
    assert again.provenance.verdicts["globex"].canary == "passed"


async def test_a_peer_that_fails_its_canaries_is_recorded_failing(fed: CanaryFederation) -> None:
    before = canary_counts(fed, "initech", "echo-initech")
    answer = await fed.ask_via("acme", "hello initech", peer="initech")
    assert answer.state == "completed"
    await peers(fed).score("initech", Question("Is ice cold?", ("yes", "no")))
    await traffic(fed).idle()
    assert canary_counts(fed, "initech", "echo-initech") == (before[0], before[1] + 2)
    assert canary_counts(fed, "initech")[1] >= 2  # the peer's own record too


async def test_a_scoring_call_carries_a_multiple_choice_canary(fed: CanaryFederation) -> None:
    before = canary_counts(fed, "globex", "echo-globex")
    scored = await peers(fed).score("globex", Question("Is ice cold?", ("yes", "no")))
    assert len(scored.scores.logprobs) == 2
    await traffic(fed).idle()
    assert canary_counts(fed, "globex", "echo-globex") == (before[0] + 1, before[1])


async def test_the_canary_is_indistinguishable_from_the_call_it_accompanies(
    fed: CanaryFederation,
) -> None:
    with capture(fed.nodes["globex"]) as seen:
        await fed.ask_via("acme", "what is the weather like", peer="globex")
        await traffic(fed).idle()
        real_ask, canary_ask = (
            seen.with_text("what is the weather like"),
            seen.with_text("Tokyo is the capital of Japan"),
        )
        await peers(fed).score("globex", Question("Is ice cold?", ("yes", "no", "maybe")))
        await traffic(fed).idle()
        real_score, canary_score = (
            seen.with_text("Is ice cold?"),
            seen.with_text("Does water flow?"),
        )
    assert as_received(canary_ask) == as_received(real_ask)
    assert as_received(canary_score) == as_received(real_score)
    for canary, real in ((canary_ask, real_ask), (canary_score, real_score)):
        no_canary_ids(canary)
        assert set(canary.metadata["consortium"].keys()) == set(real.metadata["consortium"].keys())
    assert canary_score.metadata["consortium"]["mode"] == "score"
    assert list(canary_score.metadata["consortium"]["choices"]) == ["stone", "water"]


async def test_canary_options_keep_the_real_keys(tmp_path: Path) -> None:
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in POOL))
    free_text, _, multiple_choice, _ = load_pool(path)
    real = forwarded(RequestOptions(max_tokens=8, temperature=0.9, choices=["a", "b", "c"]))
    assert canary_options(real, multiple_choice) == {
        **real,
        "choices": ["stone", "water"],
        "max_tokens": 48,
        "temperature": 0.0,
    }
    plain = forwarded(RequestOptions(max_tokens=100))
    assert canary_options(plain, free_text) == {**plain, "max_tokens": 100}
    assert canary_options(None, free_text) == forwarded(RequestOptions())


async def test_the_real_call_does_not_wait_for_its_canary(fed: CanaryFederation) -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    client = peers(fed)
    original = client.answer_of

    async def slow_canary(org: str, text: str, options: Any = None, on_text: Any = None) -> Any:
        if text == "Tokyo is the capital of Japan":
            started.set()
            await release.wait()
        return await original(org, text, options, on_text)

    client.answer_of = slow_canary
    try:
        answer = await fed.ask_via("acme", "no waiting", peer="globex")
        assert answer.state == "completed"
        assert started.is_set() and not release.is_set()  # the canary is still held
    finally:
        release.set()
        del client.answer_of
    await traffic(fed).idle()


# -- not to itself, not to the quarantined -----------------------------------------------


class QuarantinedOne:
    """acme's engine, with `peer` quarantined."""

    def __init__(self, inner: ReputationAssessor, peer: str) -> None:
        self.inner, self.peer = inner, peer

    def standing(self, peer: str) -> Standing:
        if peer == self.peer:
            return Standing(peer, "quarantined", 0.1, 0.05)
        return self.inner.standing(peer)

    def reputation(self, peer: str) -> float:
        return self.standing(peer).score

    def assess(self, verdict: Any) -> None:
        self.inner.assess(verdict)

    def record(self, evidence: Evidence) -> Standing:
        return self.inner.record(evidence)


async def test_no_canary_to_a_quarantined_peer_nor_to_itself(fed: CanaryFederation) -> None:
    client, t = peers(fed), traffic(fed)
    sent = t.sent
    client.assessor = QuarantinedOne(engine(fed), "initech")
    try:
        with pytest.raises(PeerQuarantined):
            await client.ask("initech", "are you there", forwarded(RequestOptions()))
        t.alongside("initech", "ask", None)
        t.alongside("acme", "ask", None)
        t.alongside("acme", "score", None)
        assert t.sent == sent
    finally:
        client.assessor = engine(fed)


# -- background canaries ------------------------------------------------------------------


def background_traffic(
    fed: Federation, clock: Callable[[], float], interval: float
) -> CanaryTraffic:
    """A second CanaryTraffic over acme's peer client, roster and engine."""
    node = fed.nodes["acme"]
    federation = node.federation
    assert federation is not None and node.config.canary_pool() is not None
    settings = CanarySettings(
        rate=0.0, background_interval_s=interval, budget_tokens=10**6, repeat_window_s=0.0
    )
    scheduler = CanaryScheduler(node.config.canary_pool(), settings, random.Random(0))  # type: ignore[arg-type]
    return CanaryTraffic(
        scheduler, federation.peers, federation.roster, engine(fed), "acme", clock=clock
    )


async def test_an_idle_peer_gets_a_background_canary(fed: CanaryFederation) -> None:
    now = [1000.0]
    t = background_traffic(fed, lambda: now[0], interval=600.0)
    before = {org: canary_counts(fed, org) for org in ("globex", "initech")}
    assert t.background() == 0  # first seen now
    now[0] += 599.0
    assert t.background() == 0
    t.alongside("globex", "ask", None)  # a call to globex: rate 0, no canary, contacted
    now[0] += 1.0
    assert t.background() == 1  # initech only: idle for the interval
    await t.idle()
    assert canary_counts(fed, "globex") == before["globex"]
    after = canary_counts(fed, "initech")
    assert sum(after) == sum(before["initech"]) + 1 and after[0] == before["initech"][0]
    now[0] += 600.0
    client = peers(fed)
    client.assessor = QuarantinedOne(engine(fed), "initech")
    try:
        assert t.background() == 1  # globex; initech is quarantined
    finally:
        client.assessor = engine(fed)
    await t.close()


async def test_the_background_loop_runs_and_stops_cleanly(fed: CanaryFederation) -> None:
    t = background_traffic(fed, time.time, interval=0.2)
    t.start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0
    while t.sent < 2:  # both peers, after 0.2 s idle
        assert loop.time() < deadline, "no background canary"
        await asyncio.sleep(0.02)
    await t.close()
    assert t._loop is None and not t._tasks
    t.alongside("globex", "ask", None)
    assert not t._tasks  # closed: no more canaries


async def test_draws_are_kept_in_the_trust_store(fed: CanaryFederation) -> None:
    from consortium.trust.reputation_store import CanaryLogTable

    await fed.ask_via("acme", "remember this", peer="globex")
    await traffic(fed).idle()
    entries = CanaryLogTable(engine(fed).store).entries()
    assert {e.canary_id for e in entries if e.peer == "globex"} >= {"ft-globex", "mc-globex"}


async def test_trust_show_counts_the_canaries(fed: CanaryFederation, tmp_path: Path) -> None:
    await fed.ask_via("acme", "count me", peer="globex")
    await traffic(fed).idle()
    cfg = fed.nodes["acme"].config
    assert cfg.federation is not None
    config = tmp_path / "node.toml"
    config.write_text(
        f'[node]\norg_id = "acme"\ndata_dir = "{cfg.data_dir}"\n'
        f'[federation]\nroster = "{cfg.resolve(cfg.federation.roster)}"\n'
        f'admin_key = "{cfg.resolve(cfg.federation.admin_key)}"\n'
    )
    result = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "consortium.cli",
            "trust",
            "show",
            "--config",
            str(config),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    peers_shown = {p["peer"]: p for p in json.loads(result.stdout)["peers"]}
    assert peers_shown["globex"]["evidence"]["canary"]["good"] >= 1
    assert peers_shown["initech"]["evidence"]["canary"]["bad"] >= 1
    [model] = [m for m in peers_shown["globex"]["models"] if m["model"] == "echo-globex"]
    assert model["evidence"]["canary"]["good"] >= 1


async def test_a_multiple_choice_task_carries_a_multiple_choice_canary(
    fed: CanaryFederation,
) -> None:
    before = canary_counts(fed, "globex", "echo-globex")
    with capture(fed.nodes["globex"]) as seen:
        answer = await fed.ask_via(
            "acme", "Which is cold?", peer="globex", choices=["ice", "fire", "lava"]
        )
        await traffic(fed).idle()
        real, canary = seen.with_text("Which is cold?"), seen.with_text("Does water flow?")
    assert answer.state == "completed"
    assert canary_counts(fed, "globex", "echo-globex") == (before[0] + 1, before[1])
    assert as_received(canary) == as_received(real)
    assert list(canary.metadata["consortium"]["choices"]) == ["stone", "water"]
    no_canary_ids(canary)


async def test_a_failed_canary_call_is_not_counted_twice(fed: CanaryFederation) -> None:
    client = peers(fed)
    original = client.answer_of

    async def failing(org: str, text: str, options: Any = None, on_text: Any = None) -> Any:
        if text == "Tokyo is the capital of Japan":
            raise PeerError(f"{org} did not answer", "timeout")
        return await original(org, text, options, on_text)

    before = canary_counts(fed, "globex")
    client.answer_of = failing
    try:
        answer = await fed.ask_via("acme", "still answered", peer="globex")
        await traffic(fed).idle()
    finally:
        del client.answer_of
    assert answer.state == "completed"
    assert canary_counts(fed, "globex") == before  # the exchange assesses failures itself


async def test_a_canary_that_cannot_be_drawn_never_stops_the_real_call(
    fed: CanaryFederation,
) -> None:
    scheduler = traffic(fed).scheduler

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError("disk full")

    scheduler.instead_of_call = broken  # type: ignore[method-assign]
    try:
        answer = await fed.ask_via("acme", "regardless", peer="globex")
    finally:
        del scheduler.instead_of_call
    assert answer.state == "completed" and answer.text == "regardless"
