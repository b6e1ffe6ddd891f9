"""`consortium demo`: three organizations on loopback, each a separate node process with a
real model, form a signed federation; each answers a few questions over A2A gRPC (requests
signed, verified before the model), and one question travels between organizations as a
signed, verified peer call; an app asks one node through its OpenAI-compatible endpoint
with the official `openai` client. The answers as tables.

acme redacts what it sends to peers (`[redaction]`: names and email addresses leave as
pseudonyms): one question with a name and an email goes to initech, the table shows
what initech's own task store holds (pseudonyms), what acme's user gets back (the real
values, restored) and the receipt of the withheld email verifying against the signed
message initech received.

globex's node is misconfigured on purpose: its node.toml declares SmolLM2-135M, as the
roster does, but loads Gemma-3-270M's weights (a model quietly swapped). acme's panel
votes cross-check globex against acme's own SmolLM2-135M (trust/cross_checks.py); the
demo ends with acme's trust table, globex quarantined.

Every organization keeps a tamper-evident audit log and the three witness each other's
checkpoints; the demo ends with `consortium audit trace` of the question that crossed
organizations: the path rebuilt from the three organizations' spans, logs and task
stores, every hop verified, every log witnessed (and an HTML timeline of it).

The federation is a federation file (DEMO_FILE) run by the launcher (launcher.py), as
`consortium up` runs one: its nodes start at once under one supervisor and never outlive
the demo.

What it shows goes through a Reporter (lines, progress, tables as plain data); the CLI
renders it on the terminal (consortium/cli/demo.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import tempfile
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from a2a.types import a2a_pb2

from consortium.federation.admin import FederationPaths
from consortium.federation.roster import load_roster
from consortium.launch.federation_file import load_federation_file
from consortium.launch.launcher import Launcher
from consortium.launch.local import RunningNode
from consortium.llm.registry import BUNDLED
from consortium.node.client import Answer, ask, fetch_agent_card, open_client
from consortium.node.config import NodeConfig, load_config
from consortium.node.receipts import check_receipt
from consortium.redaction.receipts import DisclosureStore
from consortium.trust.reputation_engine import Reputation, ReputationAssessor

# The progress callback of the benchmark harness (consortium/evaluation/harness.py):
# start(label, total) returns advance(n).
Start = Callable[[str, int], Callable[[int], None]]


class SeedRecords(Protocol):
    """Fills one organization's routing records with part `index` of `parts` of a
    benchmark split (consortium/evaluation/seeding.py, handed in by the CLI); returns
    how many it stored."""

    def __call__(
        self, config: NodeConfig, index: int, parts: int, progress: Callable[[], Any]
    ) -> int: ...


# The demo's federation, as a federation file (`consortium up` reads the same;
# deploy/examples/three-orgs.toml is its twin without the demo's own touches).
DEMO_FILE = """\
[federation]
name = "Consortium Demo"
directory = "."

[[org]]
id = "acme"
display_name = "Acme Health"
model = "smollm2-135m"

[org.groups.panel]              # a vote across the three organizations
protocol = "vote"
members = ["self", "globex", "initech"]

[org.redaction]                 # names and email addresses leave acme only as pseudonyms
enabled = true
entities = ["PERSON", "EMAIL_ADDRESS"]

[org.routing]                   # acme's learned router reads the policy the demo trains
policy = {policy}
target = "initech"
threshold = 0.5
{audit}
[[org]]
id = "globex"
display_name = "Globex Research"
model = "smollm2-135m"
{audit}
[[org]]
id = "initech"
display_name = "Initech Labs"
model = "gemma3-270m"
{audit}"""
# Every organization: checkpoints witnessed by the two others, receipts in replies.
DEMO_AUDIT = """
[org.audit]
witness_interval_s = 2.0
witnessed_by = 2
receipts = true
"""
DEMO_FILE_NAME = "demo-federation.toml"


def demo_file(base: Path) -> Path:
    """The demo's federation file, written in `base` (its directory: the federation and
    one directory per organization); acme's routing policy is BASE/policy.json."""
    policy = json.dumps(str((base / "policy.json").resolve()))
    path = base / DEMO_FILE_NAME
    path.write_text(DEMO_FILE.format(policy=policy, audit=DEMO_AUDIT))
    return path


QUESTIONS = (
    "What is the capital of Italy?",
    "What do bees make from nectar?",
    "How many days are there in a week?",
)
# Benchmark items each organization's routing records are seeded from (a third each,
# by topic); their model outputs are computed once and cached.
SEED_SPLIT, SEED_ITEMS = "arc_easy_dev", 60
TRAIN_ROUNDS = 3
# The organization whose node loads other weights than it declares, and whose.
SWAPPED, SWAPPED_WEIGHTS = "globex", "gemma3-270m"
TRUST_VOTES = 16  # benchmark items acme's panel votes on before its trust table
REDACTION_QUESTION = (
    "Write one sentence confirming the appointment of Maria Gonzalez; her email address "
    "is maria.gonzalez@example.com."
)
MC_QUESTION = "Which part of a plant takes in water from the soil?"
MC_CHOICES = ["the flowers", "the roots", "the leaves", "the seeds"]


@dataclass(frozen=True)
class PanelQuestion:
    """A multiple-choice benchmark item for acme's panel (handed in by the CLI)."""

    stem: str
    choices: tuple[str, ...]
    answer: int


@dataclass
class Table:
    """A table to show: its title, column names and rows of cells (text)."""

    title: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]] = field(default_factory=list)


class Reporter(Protocol):
    """Where the demo shows its progress and results."""

    def heading(self, title: str, detail: str) -> None:
        """The demo's title (emphasised) and what follows it on the same line."""

    def line(self, text: str) -> None: ...

    def table(self, table: Table) -> None: ...

    def status(self, text: str) -> AbstractContextManager[object]:
        """Shown while the block it wraps runs."""
        ...

    def progress(self) -> AbstractContextManager[Start]:
        """Progress of model outputs computed for the benchmark items (a stretch of work
        that yields start(description, total) -> advance(n))."""
        ...


async def _ask(node: RunningNode, question: str, options: dict[str, Any]) -> Answer:
    """A question to one's own node, signed with the organization's key."""
    client = open_client(await fetch_agent_card(node.http_url))
    try:
        return await ask(client, question, options=options, timeout=180, sign=node.signer)
    finally:
        await client.close()


async def _ask_all(nodes: list[RunningNode]) -> list[tuple[RunningNode, str, Answer]]:
    async def one_org(node: RunningNode) -> list[tuple[RunningNode, str, Answer]]:
        return [(node, q, await _ask(node, q, {"max_tokens": 48})) for q in QUESTIONS]

    per_org = await asyncio.gather(*(one_org(n) for n in nodes))
    return [r for rs in per_org for r in rs]


def _answers_table(results: list[tuple[RunningNode, str, Answer]]) -> Table:
    table = Table(
        "Answers from three organizations (real models, A2A over gRPC, signed)",
        ("question", "organization", "model", "answer", "tokens in/out", "latency"),
    )
    for node, question, answer in results:
        p = answer.provenance
        table.rows.append(
            (
                question,
                node.org_id,
                p.model or node.model,
                _shown(answer),
                f"{p.input_tokens or 0}/{p.output_tokens or 0}",
                f"{answer.latency_s * 1000:.0f} ms",
            )
        )
    return table


def _shown(answer: Answer) -> str:
    if answer.state == "completed":
        return answer.text.strip()
    return f"[{answer.state}] {answer.status_text}"


def _across(origin: RunningNode, peer: RunningNode) -> tuple[Table, str]:
    """The table of one question across organizations, and its task id at the origin."""
    question = "What is the largest planet in the solar system?"
    answer = asyncio.run(_ask(origin, question, {"max_tokens": 32, "peer": peer.org_id}))
    p = answer.provenance
    table = Table(
        "A question across organizations (signed request, verified signed answer)",
        ("question", "route", "model", "answer", "verified", "latency"),
    )
    table.rows.append(
        (
            question,
            p.route or f"{origin.org_id}->{peer.org_id}",
            p.model or "?",
            _shown(answer),
            f"{bool(p.verified)} ({p.verified_events or 0} signed events)",
            f"{answer.latency_s * 1000:.0f} ms",
        )
    )
    return table, answer.task_id


def _witnessed(nodes: list[RunningNode], timeout_s: float = 60.0) -> bool:
    """Waits until every node's log has a checkpoint cosigned by the two others that is
    newer than what it had logged when called."""
    import time

    import httpx

    def audit(node: RunningNode) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(node.http_url + "/healthz", timeout=10).json()
        return dict(body.get("audit", {}))

    wanted = {n.org_id: audit(n).get("entries", 0) for n in nodes}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(audit(n).get("witnessed_size", 0) >= wanted[n.org_id] for n in nodes):
            return True
        time.sleep(0.5)
    return False


def _audit(nodes: list[RunningNode], task_id: str, base: Path, report: Reporter) -> None:
    """`consortium audit trace` of the task that crossed organizations, as an auditor
    runs it over the three organizations' directories."""
    import subprocess
    import sys

    with report.status("waiting for every audit log to be witnessed by the two others"):
        witnessed = _witnessed(nodes)
    if not witnessed:
        report.line("  (not every log was witnessed in time; the trace says which)")
    html = base / "audit-report.html"
    args = ["audit", "trace", "--task", task_id, "--html", str(html)]
    for node in nodes:
        args += ["--org", str(node.config.parent)]
    report.heading("Audit", ": consortium " + " ".join(args))
    result = subprocess.run(
        [sys.executable, "-m", "consortium.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "COLUMNS": "160"},
    )
    for line in (result.stdout + result.stderr).rstrip().splitlines():
        report.line("  " + line)
    verdict = "every hop and every log verified" if result.returncode == 0 else "FINDINGS"
    report.line(f"  audit trace: {verdict} (exit {result.returncode}); timeline: {html}")


def _received_by(peer: RunningNode, message_id: str) -> str:
    """The text of the request `message_id` as the peer's own task store keeps it (read
    from its database: all three organizations run on this machine)."""
    path = load_config(peer.config).database_path
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT body FROM tasks ORDER BY ts_ns DESC LIMIT 50").fetchall()
    for (body,) in rows:
        task = a2a_pb2.Task.FromString(body)
        for message in task.history:
            if message.message_id == message_id:
                return "".join(p.text for p in message.parts)
    return "(not found in its task store)"


def _redaction(origin: RunningNode, peer: RunningNode, roster: Path) -> Table:
    """One question with a name and an email from `origin` (which redacts) to `peer`."""
    options = {"max_tokens": 40, "peer": peer.org_id}
    answer = asyncio.run(_ask(origin, REDACTION_QUESTION, options))
    table = Table(
        f"Redaction: what {peer.org_id} saw, what {origin.org_id}'s user got back",
        ("", "text"),
    )
    table.rows.append((f"{origin.org_id}'s user asks", REDACTION_QUESTION))
    report = answer.provenance.redaction
    receipts = (report.receipts or []) if report is not None else []
    if not receipts:
        table.rows.append(("nothing was redacted", _shown(answer)))
        return table
    store = DisclosureStore(load_config(origin.config).redaction_path, must_exist=True)
    try:
        kept = store.get(receipts[0])
    finally:
        store.close()
    assert kept is not None
    table.rows.append((f"{peer.org_id}'s task store holds", _received_by(peer, kept.message_id)))
    table.rows.append((f"{peer.org_id} answers, restored for the user", _shown(answer)))
    counts = (report.peers or {}).get(peer.org_id, {}) if report is not None else {}
    table.rows.append(
        ("withheld (types, counts)", ", ".join(f"{t} x{n}" for t, n in counts.items()))
    )
    email = [d for d in kept.disclosures if d.entity_type == "EMAIL_ADDRESS"]
    if email:
        check = check_receipt(kept.message, [email[0].encoded], load_roster(roster))
        verdict = "verifies" if check.ok else "does NOT verify"
        table.rows.append(
            (
                "receipt",
                f"the EMAIL_ADDRESS disclosure {verdict} against the signed message "
                f"{peer.org_id} received (signature, digest; the value is not in it)",
            )
        )
    return table


def _collaboration(origin: RunningNode) -> Table:
    """A multiple-choice question routed three ways from one organization."""
    table = Table(
        f"Routing and collaboration from {origin.org_id}: {MC_QUESTION}",
        ("route asked", "route taken", "members (tokens)", "answer", "confidence", "latency"),
    )
    for route in ("self:margin", "always:initech", "panel"):
        answer = asyncio.run(_ask(origin, MC_QUESTION, {"choices": MC_CHOICES, "route": route}))
        p = answer.provenance
        members = ", ".join(f"{org} ({m.tokens})" for org, m in (p.members or {}).items())
        table.rows.append(
            (
                route,
                p.route or "?",
                members,
                _shown(answer),
                f"{p.confidence or 0.0:.2f}",
                f"{answer.latency_s * 1000:.0f} ms",
            )
        )
    return table


APP_QUESTION = "Name one primary colour."


def _from_an_app(origin: RunningNode) -> Table:
    """An application's question through the node's OpenAI-compatible endpoint, with the
    official `openai` client and a fresh API key, `model="consortium/auto"` (the node's
    router decides); then the same task read back over A2A with the same key."""
    from openai import OpenAI

    from consortium.trust.api_keys import ApiKeys

    keys = ApiKeys(load_config(origin.config).api_keys_path)
    try:
        _, token = keys.create("demo-app")
    finally:
        keys.close()
    app = OpenAI(base_url=origin.http_url + "/v1", api_key=token, timeout=180, max_retries=0)
    try:
        reply = app.chat.completions.create(
            model="consortium/auto",
            messages=[{"role": "user", "content": APP_QUESTION}],
            max_tokens=24,
            temperature=0,
        )
    finally:
        app.close()
    extra: dict[str, Any] = dict(reply.model_extra or {}).get("consortium") or {}
    task_id = str(extra.get("task_id", ""))

    async def seen_over_a2a() -> str:
        client = open_client(await fetch_agent_card(origin.http_url), api_key=token)
        try:
            task = await client.get_task(a2a_pb2.GetTaskRequest(id=task_id))
        finally:
            await client.close()
        return a2a_pb2.TaskState.Name(task.status.state).removeprefix("TASK_STATE_").lower()

    state = asyncio.run(seen_over_a2a()) if task_id else "?"
    table = Table(
        f"From an app: the openai client at {origin.http_url}/v1, model consortium/auto "
        "(the same task read back over A2A with the app's key)",
        ("question", "answered by", "answer", "tokens in/out", "its task over A2A"),
    )
    usage = reply.usage
    table.rows.append(
        (
            APP_QUESTION,
            f"{extra.get('org', '?')} ({extra.get('model', reply.model)})",
            " ".join((reply.choices[0].message.content or "").split()),
            f"{usage.prompt_tokens}/{usage.completion_tokens}" if usage else "?",
            state,
        )
    )
    return table


def _train_and_route(
    nodes: list[RunningNode],
    paths: FederationPaths,
    base: Path,
    report: Reporter,
    seed: SeedRecords,
) -> None:
    """Each organization's routing records (seeded from benchmark items), a routing
    policy trained across the three with Flower's simulation engine, signed by the
    federation admin, and acme routing with it (its node reloads the file)."""
    from consortium.launch.flower import train_simulated
    from consortium.learning.coordinator import TrainRequest
    from consortium.learning.settings import TrainOptions

    data_dir = base / "training"
    data_dir.mkdir(exist_ok=True)
    with report.status(f"seeding routing records from {SEED_ITEMS} {SEED_SPLIT} items"):
        for i, node in enumerate(nodes):
            cfg = load_config(node.config)
            n = seed(cfg, i, len(nodes), report.progress)
            link = data_dir / f"org-{i}.sqlite3"
            link.unlink(missing_ok=True)
            link.symlink_to(cfg.database_path.resolve())
            report.line(f"  {node.org_id:8} {n} routing records (features and outcomes only)")
    policy = base / "policy.json"
    req = TrainRequest(
        out=policy,
        options=TrainOptions(rounds=TRAIN_ROUNDS),
        version="demo-1",
        roster=paths.roster,
    )
    with report.status(
        f"training the routing policy across {len(nodes)} organizations (Flower simulation)"
    ):
        artifact, _ = train_simulated(req, len(nodes), data_dir)
    report.line(
        f"  policy {artifact.version}: {TRAIN_ROUNDS} rounds of FedAvg, held-out AUC "
        f"{artifact.metrics.get('final_eval_auc', float('nan')):.2f} on "
        f"{int(artifact.metrics['train_examples'])} records, signed for federation "
        f"{artifact.federation_id} -> {policy}"
    )
    answer = asyncio.run(_ask(nodes[0], MC_QUESTION, {"choices": MC_CHOICES, "route": "learned"}))
    p = answer.provenance
    report.line(
        f"  {nodes[0].org_id} routes with it: {p.route} "
        f"({p.decision.reason if p.decision else answer.status_text}) -> {_shown(answer)}"
    )


def swap_weights(config: Path, weights: Path) -> None:
    """Points node.toml's [model] at other weights than the model it names (once)."""
    text = config.read_text()
    if "\n[model]\n" not in text or f'path = "{weights}"' in text:
        return
    config.write_text(text.replace("\n[model]\n", f'\n[model]\npath = "{weights}"\n', 1))


def _panel_votes(origin: RunningNode, questions: Sequence[PanelQuestion]) -> tuple[int, int]:
    """acme's panel answers each question; how many it got right, of how many answered."""

    async def go() -> tuple[int, int]:
        right = answered = 0
        for q in questions:
            options = {"choices": list(q.choices), "route": "panel"}
            answer = await _ask(origin, q.stem, options)
            if answer.state == "completed" and answer.provenance.choice is not None:
                answered += 1
                right += int(answer.provenance.choice == q.answer)
        return right, answered

    return asyncio.run(go())


def _trust_table(origin: RunningNode) -> Table:
    """The origin's trust table, read from its trust database as `consortium trust show`
    does (the node keeps running)."""
    cfg = load_config(origin.config)
    assessor = ReputationAssessor.open(cfg.trust_path)
    try:
        reputations = [r for r in assessor.reputations() if not r.model]
    finally:
        assessor.close()
    table = Table(
        f"{origin.org_id}'s trust table (consortium trust show --config {origin.config})",
        ("peer", "state", "score", "bound", "evidence good/bad", "last change"),
    )
    for r in reputations:
        table.rows.append(
            (r.peer, r.state, f"{r.score:.3f}", f"{r.bound:.3f}", _counts(r), r.reason)
        )
    return table


def _counts(r: Reputation) -> str:
    kinds = sorted({k for k, _ in r.counts})
    return " ".join(
        f"{k} {r.counts.get((k, True), 0)}/{r.counts.get((k, False), 0)}" for k in kinds
    )


def _trust(
    origin: RunningNode,
    swapped: RunningNode,
    questions: Sequence[PanelQuestion],
    report: Reporter,
) -> None:
    with report.status(
        f"{origin.org_id}'s panel votes on {len(questions)} benchmark questions; "
        f"{swapped.org_id} runs {SWAPPED_WEIGHTS} while declaring {swapped.model}"
    ):
        right, answered = _panel_votes(origin, questions)
    report.line(
        f"  {origin.org_id}'s panel: {right} of {answered} right; each vote cross-checks "
        f"{swapped.org_id}'s answer (declared {swapped.model}) against {origin.org_id}'s own "
        f"{origin.model}"
    )
    report.table(_trust_table(origin))


def demo_launcher(base: Path) -> Launcher:
    """The launcher of the demo's federation in `base`, whose three nodes share this
    machine's cores (`[model] threads`, consortium/launch/local.py)."""
    return Launcher(load_federation_file(demo_file(base)))


def run_demo(
    workdir: Path | None,
    report: Reporter,
    seed: SeedRecords,
    questions: Sequence[PanelQuestion] = (),
) -> None:
    base = workdir or Path(tempfile.mkdtemp(prefix="consortium-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    report.heading("Consortium demo", f": three organizations on loopback, in {base}")
    launcher = demo_launcher(base)
    launcher.provision()
    swap_weights(base / SWAPPED / "node.toml", BUNDLED[SWAPPED_WEIGHTS].resolve())
    nodes: list[RunningNode] = []
    try:
        names = ", ".join(f"{s.org.org_id} ({s.org.model})" for s in launcher.nodes.values())
        with report.status(f"starting {names} under one supervisor"):
            launcher.start()
        nodes = [s.node for s in launcher.nodes.values() if s.node is not None]
        for node in nodes:
            report.line(f"  {node.org_id:8} {node.model:13} ready at {node.http_url}")
        paths = launcher.federation.paths
        roster = load_roster(paths.roster)
        report.line(
            f"  federation {roster.federation_id}: {len(roster.members)} members, roster "
            f"version {roster.version} signed by the admin key; every message below is "
            "signed and verified"
        )
        with report.status("asking each organization a few questions over A2A gRPC"):
            results = asyncio.run(_ask_all(nodes))
        report.table(_answers_table(results))
        with report.status(f"{nodes[0].org_id} asks {nodes[-1].org_id} across organizations"):
            across, across_task = _across(nodes[0], nodes[-1])
            report.table(across)
        with report.status(f"{nodes[0].org_id} sends a name and an email to {nodes[-1].org_id}"):
            report.table(_redaction(nodes[0], nodes[-1], paths.roster))
        with report.status("routing a multiple-choice question: local draft, escalation, vote"):
            report.table(_collaboration(nodes[0]))
        with report.status(f"an app asks {nodes[0].org_id} through its OpenAI endpoint"):
            report.table(_from_an_app(nodes[0]))
        _train_and_route(nodes, paths, base, report, seed)
        swapped = [n for n in nodes if n.org_id == SWAPPED]
        if questions and swapped:
            _trust(nodes[0], swapped[0], questions, report)
        _audit(nodes, across_task, base, report)
    finally:
        for node in nodes:
            code = node.stop()
            report.line(f"  stopped {node.org_id} (exit {code})")
        launcher.stop()
