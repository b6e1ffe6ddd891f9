"""The live part of `consortium bench trust`: real node processes on loopback, real
llama.cpp models, one Byzantine member, and the origin's trust layer as shipped.

    PYTHONPATH=. .venv/bin/python benchmarks/trust_live.py --json      # 60 tasks per arm

Four organizations (consortium/launch/local.py), each its own node process: the origin
`acme` (smollm2-135m) with a vote group `panel` over three peers, `globex` (gemma3-270m,
honest), `initech` (smollm2-135m, honest) and `umbrella`, which declares gemma3-270m and
behaves, per arm:

- `honest`: runs gemma3-270m;
- `substituted`: its node.toml's `[model]` names gemma3-270m but its `path` is the
  smollm2-135m GGUF (configuration only: it claims Gemma while SmolLM2 answers);
- `half_wrong`: benchmarks/byzantine_node.py runs the real node on gemma3-270m with its
  option scores rotated on half of the scoring calls (by prompt hash).

acme's `[trust] canaries` is a pool of ARC-Easy dev items cached for both bundled models
(~/.cache/consortium/eval), calibrated per model from those cached outputs (no model
runs); the tasks are the first N ARC-Easy *test* items, so canaries and tasks are
disjoint. Each task is sent to acme, signed with acme's key, as a multiple-choice task
with route "panel"; after each one the script reads the peers' standings from acme's
DATA_DIR/trust.sqlite3. Arms: the three behaviours with the trust layer, and half_wrong
again with `[trust] enabled = false` (no reputations, no canaries, equal weights): the
vote's accuracy without the trust layer. The honest arm is the all-honest baseline.

Per arm it reports: the tasks sent to umbrella until it was quarantined (or null),
honest peers quarantined (false quarantines), the vote's accuracy, the task tokens
(provenance `tokens`) and the canaries' estimated tokens (canary evidence in acme's
store times the mean estimated cost of the pool's canaries for the peer's declared
model; also the scheduler's own log of what it sent), each member's own accuracy (its
choice in the vote), per-task records (choice, answer, members' tokens and choices,
verdicts, standings) with `--records`, and each peer's final standing.
One JSON object with `--json`, else a readable summary. `--backend echo` runs every node
on the echo backend instead of llama.cpp (the smoke test: tests/test_benchmarks.py);
`--data DIR` reads the ARC splits from DIR.

The Byzantine behaviour lives here and in byzantine_node.py, never in the package.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# The node processes import the same consortium package as this script.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
)

from consortium.evaluation.canaries import (  # noqa: E402
    backend_choices,
    cached_choices,
    cached_outputs,
    calibrate,
    canaries_from_arc,
)
from consortium.evaluation.datasets import Item, load_arc, split_path  # noqa: E402
from consortium.launch.local import LocalFederation, Organization, RunningNode  # noqa: E402
from consortium.node.client import Answer, ask, fetch_agent_card, open_client  # noqa: E402
from consortium.node.config import load_config  # noqa: E402
from consortium.trust.canaries import Canary, write_pool  # noqa: E402

GEMMA, SMOLLM = "gemma3-270m", "smollm2-135m"
ORIGIN = "acme"
BAD = "umbrella"
HONEST = ("globex", "initech")
DECLARED = {"globex": GEMMA, "initech": SMOLLM, BAD: GEMMA}
BEHAVIOURS = ("honest", "substituted", "half_wrong")
# (behaviour of umbrella, trust layer on acme)
ARMS: tuple[tuple[str, bool], ...] = (
    ("honest", True),
    ("substituted", True),
    ("half_wrong", True),
    ("half_wrong", False),
)
TASK_TIMEOUT_S = 300.0
GROUP = """
[groups.panel]                  # a vote over the three peers
protocol = "vote"
members = ["globex", "initech", "umbrella"]
"""


@dataclass
class ArmResult:
    behaviour: str
    trust: bool
    tasks: int = 0
    correct: int = 0
    failed: int = 0
    task_tokens: int = 0
    sent_to_bad: int = 0
    bad_quarantined_after: int | None = None  # tasks sent to umbrella until quarantined
    bad_quarantined_at_task: int | None = None
    false_quarantines: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    standings: dict[str, dict[str, Any]] = field(default_factory=dict)
    canaries_by_evidence: dict[str, int] = field(default_factory=dict)
    canary_tokens_estimate: int = 0
    canaries_logged: int = 0
    canary_tokens_logged: int = 0
    cross_checks: dict[str, dict[str, int]] = field(default_factory=dict)
    # Per member: [its own answers right, its answers] (the vote's contributions).
    members_right: dict[str, list[int]] = field(default_factory=dict)
    start_s: float = 0.0
    run_s: float = 0.0

    def summary(self, with_records: bool) -> dict[str, Any]:
        acc = self.correct / self.tasks if self.tasks else None
        lat = sorted(self.latencies_s)
        out: dict[str, Any] = {
            "umbrella": self.behaviour,
            "trust": self.trust,
            "tasks": self.tasks,
            "failed_tasks": self.failed,
            "vote_accuracy": None if acc is None else round(acc, 4),
            "tasks_sent_to_umbrella": self.sent_to_bad,
            "umbrella_quarantined_after_tasks": self.bad_quarantined_after,
            "umbrella_quarantined_at_task": self.bad_quarantined_at_task,
            "false_quarantines": self.false_quarantines,
            "task_tokens": self.task_tokens,
            "canaries_sent_by_evidence": self.canaries_by_evidence,
            "canary_tokens_estimate": self.canary_tokens_estimate,
            "canary_overhead": round(self.canary_tokens_estimate / self.task_tokens, 4)
            if self.task_tokens
            else None,
            "canaries_logged": self.canaries_logged,
            "canary_tokens_logged": self.canary_tokens_logged,
            "cross_checks": self.cross_checks,
            "member_accuracy": {
                m: {"right": r, "answered": n, "accuracy": round(r / n, 4)}
                for m, (r, n) in sorted(self.members_right.items())
            },
            "latency_s": {
                "mean": round(statistics.fmean(lat), 3) if lat else None,
                "p50": round(lat[len(lat) // 2], 3) if lat else None,
                "max": round(lat[-1], 3) if lat else None,
            },
            "final_standings": self.standings,
            "start_s": round(self.start_s, 1),
            "run_s": round(self.run_s, 1),
        }
        if with_records:
            out["records"] = self.records
        return out


# -- data -----------------------------------------------------------------------------


def canary_pool(data: Path | None, backend: str) -> list[Canary]:
    """ARC-Easy dev items as canaries, calibrated per bundled model: from the evaluation
    caches (only items cached for both models), or, on the echo backend, by scoring with
    echo backends named like the models (what the echo nodes answer)."""
    items = load_arc(split_path("arc_easy_dev", data))
    pool: list[Canary]
    if backend == "echo":
        from consortium.llm.echo import EchoBackend

        pool = list(canaries_from_arc(items))
        for model in (GEMMA, SMOLLM):
            pool, _ = calibrate(pool, model, choose=backend_choices(EchoBackend(model)))
    else:
        cached = {m: cached_outputs(m) for m in (GEMMA, SMOLLM)}
        pool = [c for c in canaries_from_arc(items) if all(c.id in cached[m] for m in cached)]
        for model in (GEMMA, SMOLLM):
            pool, _ = calibrate(pool, model, choose=cached_choices(cached[model]))
    return [c for c in pool if c.models]


def mean_cost(pool: Sequence[Canary], model: str) -> float:
    costs = [c.cost for c in pool if model in c.models]
    return statistics.fmean(costs) if costs else 0.0


# -- the federation -----------------------------------------------------------------


def set_model(config: Path, backend: str, name: str, path: str = "") -> None:
    """Rewrites the [model] section's backend, name and path in a node.toml."""
    text = config.read_text()
    start = text.index("[model]")
    end = text.find("\n[", start + 1)
    end = len(text) if end < 0 else end
    section = text[start:end]
    section = re.sub(r'(?m)^backend = "[^"]*"', f'backend = "{backend}"', section)
    section = re.sub(r'(?m)^path = "[^"]*"\n', "", section)
    line = f'name = "{name}"' + (f'\npath = "{path}"' if path else "")
    section = re.sub(r'(?m)^name = "[^"]*"', lambda _: line, section)
    config.write_text(text[:start] + section + text[end:])


def organizations(
    behaviour: str, trust: bool, pool_path: Path
) -> tuple[list[Organization], dict[str, str]]:
    """The four organizations, and the model each node really runs (umbrella's
    substitute: its GGUF path)."""
    acme = GROUP + f"\n[trust]\nenabled = {'true' if trust else 'false'}\n"
    acme += f'canaries = "{pool_path}"\n'
    command: tuple[str, ...] = ()
    if behaviour == "half_wrong":
        command = (
            sys.executable,
            str(ROOT / "benchmarks" / "byzantine_node.py"),
            "--config",
            "{config}",
            "--behaviour",
            "half_wrong",
        )
    orgs = [
        Organization(ORIGIN, "Acme", SMOLLM, acme),
        Organization("globex", "Globex", GEMMA),
        Organization("initech", "Initech", SMOLLM),
        Organization(BAD, "Umbrella", GEMMA, command=command),
    ]
    runs = {o.org_id: o.model for o in orgs}
    if behaviour == "substituted":
        runs[BAD] = SMOLLM
    return orgs, runs


def configure(fed: LocalFederation, org: Organization, runs: str, backend: str) -> None:
    config = fed.prepare(org)
    if backend == "echo":
        set_model(config, "echo", org.model)
    elif runs != org.model:
        from consortium.llm.registry import BUNDLED

        set_model(config, "llama_cpp", org.model, str(BUNDLED[runs].resolve()))


# -- reading acme's trust store ---------------------------------------------------------


def read_standings(trust_path: Path) -> dict[str, dict[str, Any]]:
    """Each peer's state, score, bound and evidence counts, from acme's trust.sqlite3
    (what `consortium trust show --json` prints), read without changing it."""
    from consortium.trust.reputation_engine import ReputationAssessor
    from consortium.trust.reputation_store import ReputationStore

    if not trust_path.exists():
        return {}
    assessor = ReputationAssessor(ReputationStore(trust_path, must_exist=True))
    try:
        reps = assessor.reputations()
    finally:
        assessor.close()
    out: dict[str, dict[str, Any]] = {}
    for rep in reps:
        if rep.model:
            continue
        out[rep.peer] = {
            "state": rep.state,
            "score": round(rep.score, 4),
            "bound": round(rep.bound, 4),
            "answers_bound": round(rep.answers_bound, 4),
            "offences": rep.offences,
            "evidence": {f"{k}:{'good' if g else 'bad'}": n for (k, g), n in rep.counts.items()},
            "reason": rep.reason,
        }
    return out


def canaries_logged(trust_path: Path) -> tuple[int, int]:
    """The canaries acme's scheduler logged as sent (table canaries_sent) and their
    estimated tokens."""
    if not trust_path.exists():
        return 0, 0
    conn = sqlite3.connect(f"file:{trust_path}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT count(*), coalesce(sum(cost), 0) FROM canaries_sent").fetchone()
    except sqlite3.OperationalError:  # no canary was ever drawn: no table
        return 0, 0
    finally:
        conn.close()
    return int(row[0]), int(row[1])


# -- one arm ------------------------------------------------------------------------------


async def _ask_all(
    origin: RunningNode, tasks: Sequence[Item], trust_path: Path, result: ArmResult, log: bool
) -> None:
    client = open_client(await fetch_agent_card(origin.http_url))
    try:
        for n, item in enumerate(tasks, 1):
            options = {"choices": list(item.question.choices), "route": "panel"}
            answer: Answer = await ask(
                client,
                item.question.stem,
                options=options,
                timeout=TASK_TIMEOUT_S,
                sign=origin.signer,
            )
            _record(n, item, answer, read_standings(trust_path), result)
            if log:
                r = result.records[-1]
                states = " ".join(f"{p}={s['state'][:4]}" for p, s in r["standings"].items())
                print(
                    f"  task {n:3}/{len(tasks)} {'ok ' if r['correct'] else 'bad'} "
                    f"{answer.latency_s:5.2f}s members={','.join(r['members'])} {states}",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        await client.close()


def _record(
    n: int, item: Item, answer: Answer, standings: dict[str, dict[str, Any]], result: ArmResult
) -> None:
    p = answer.provenance
    result.tasks += 1
    result.latencies_s.append(answer.latency_s)
    completed = answer.state == "completed" and p.choice is not None
    if not completed:
        result.failed += 1
    correct = completed and p.choice == item.answer
    result.correct += int(correct)
    result.task_tokens += p.tokens or 0
    members = {org: m.tokens for org, m in (p.members or {}).items()}
    if BAD in members:
        result.sent_to_bad += 1
    choices = {c.member: c.choice for c in p.contributions or () if c.round == 0}
    for member, choice in choices.items():
        tally = result.members_right.setdefault(member, [0, 0])
        tally[0] += int(choice == item.answer)
        tally[1] += 1
    verdicts = {org: v.wire() for org, v in (p.verdicts or {}).items()}
    for org, v in verdicts.items():
        if "crossCheck" in v:
            row = result.cross_checks.setdefault(org, {"agreed": 0, "disagreed": 0})
            row[v["crossCheck"]] += 1
    bad_state = standings.get(BAD, {}).get("state")
    if bad_state == "quarantined" and result.bad_quarantined_after is None:
        result.bad_quarantined_after = result.sent_to_bad
        result.bad_quarantined_at_task = n
    for peer in HONEST:
        quarantined = standings.get(peer, {}).get("state") == "quarantined"
        if quarantined and peer not in result.false_quarantines:
            result.false_quarantines.append(peer)
    result.records.append(
        {
            "task": n,
            "item": item.id,
            "answer": item.answer,
            "choice": p.choice,
            "correct": correct,
            "state": answer.state,
            "members": members,
            "choices": choices,
            "tokens": p.tokens,
            "verdicts": verdicts,
            "reputation": p.reputation,
            "latency_s": round(answer.latency_s, 3),
            "standings": {
                peer: {k: s[k] for k in ("state", "score", "bound")}
                for peer, s in standings.items()
            },
        }
    )


def run_arm(
    behaviour: str,
    trust: bool,
    tasks: Sequence[Item],
    pool: Sequence[Canary],
    base: Path,
    backend: str,
    log: bool,
) -> ArmResult:
    result = ArmResult(behaviour, trust)
    base.mkdir(parents=True, exist_ok=True)
    pool_path = base / "canaries.jsonl"
    write_pool(pool, pool_path)
    orgs, runs = organizations(behaviour, trust, pool_path)
    started = time.perf_counter()
    with LocalFederation(base, "Trust Live", local_nodes=len(orgs)) as fed:
        trust_path = load_config(fed.prepare(orgs[0])).trust_path
        try:
            for org in orgs:
                configure(fed, org, runs[org.org_id], backend)
                fed.start(org)
            fed.admit()
            result.start_s = time.perf_counter() - started
            origin = fed.nodes[0]
            t0 = time.perf_counter()
            asyncio.run(_ask_all(origin, tasks, trust_path, result, log))
            result.run_s = time.perf_counter() - t0
        finally:
            for node in fed.nodes:
                node.stop()
    # After the nodes stopped: every canary in flight was recorded or cancelled.
    result.standings = read_standings(trust_path)
    for peer, s in result.standings.items():
        ev = s["evidence"]
        sent = ev.get("canary:good", 0) + ev.get("canary:bad", 0)
        result.canaries_by_evidence[peer] = sent
        result.canary_tokens_estimate += round(sent * mean_cost(pool, DECLARED.get(peer, "")))
    result.canaries_logged, result.canary_tokens_logged = canaries_logged(trust_path)
    return result


# -- the run ---------------------------------------------------------------------------


def run(
    n_tasks: int,
    arms: Sequence[tuple[str, bool]],
    backend: str,
    data: Path | None,
    workdir: Path | None,
    log: bool,
) -> tuple[list[ArmResult], dict[str, Any]]:
    pool = canary_pool(data, backend)
    tasks = load_arc(split_path("arc_easy_test", data), limit=n_tasks)
    base = workdir or Path(tempfile.mkdtemp(prefix="consortium-trust-live-"))
    results = []
    for behaviour, trust in arms:
        name = f"{behaviour}-{'trust' if trust else 'notrust'}"
        if log:
            print(f"arm {name} ({len(tasks)} tasks) in {base / name}", file=sys.stderr)
        results.append(run_arm(behaviour, trust, tasks, pool, base / name, backend, log))
    info = {
        "tasks": len(tasks),
        "task_split": "arc_easy_test",
        "canary_split": "arc_easy_dev",
        "canaries_calibrated": {m: sum(m in c.models for c in pool) for m in (GEMMA, SMOLLM)},
        "canary_mean_cost": {m: round(mean_cost(pool, m), 1) for m in (GEMMA, SMOLLM)},
        "backend": backend,
        "workdir": str(base),
    }
    return results, info


def report(
    results: Sequence[ArmResult], info: dict[str, Any], with_records: bool
) -> dict[str, Any]:
    arms = {
        f"{r.behaviour}-{'trust' if r.trust else 'notrust'}": r.summary(with_records)
        for r in results
    }
    by = {(r.behaviour, r.trust): r for r in results}

    def acc(key: tuple[str, bool]) -> float | None:
        r = by.get(key)
        return round(r.correct / r.tasks, 4) if r and r.tasks else None

    task_tokens = sum(r.task_tokens for r in results if r.trust)
    canary_tokens = sum(r.canary_tokens_estimate for r in results if r.trust)
    return {
        **info,
        "arms": arms,
        "vote_accuracy": {
            "all_honest": acc(("honest", True)),
            "half_wrong_with_trust": acc(("half_wrong", True)),
            "half_wrong_without_trust": acc(("half_wrong", False)),
            "substituted_with_trust": acc(("substituted", True)),
        },
        "false_quarantines": sum(len(r.false_quarantines) for r in results),
        "canary_overhead_trust_arms": round(canary_tokens / task_tokens, 4)
        if task_tokens
        else None,
        "total_s": round(sum(r.start_s + r.run_s for r in results), 1),
    }


def readable(out: dict[str, Any]) -> str:
    lines = [
        f"{out['tasks']} tasks ({out['task_split']}) per arm; canaries calibrated: "
        + ", ".join(f"{m} {n}" for m, n in out["canaries_calibrated"].items()),
        f"{'arm':24} {'accuracy':>8} {'to umbrella':>11} {'quarantined after':>17} "
        f"{'false q.':>8} {'task tok':>8} {'canary tok':>10} {'s/task':>6}",
    ]
    for name, a in out["arms"].items():
        q = a["umbrella_quarantined_after_tasks"]
        acc = a["vote_accuracy"]
        lines.append(
            f"{name:24} {'-' if acc is None else f'{acc:.1%}':>8} "
            f"{a['tasks_sent_to_umbrella']:>11} {'never' if q is None else q:>17} "
            f"{len(a['false_quarantines']):>8} {a['task_tokens']:>8} "
            f"{a['canary_tokens_estimate']:>10} {a['latency_s']['mean'] or 0:>6.2f}"
        )
        for peer, s in a["final_standings"].items():
            lines.append(
                f"    {peer:9} {s['state']:11} score {s['score']:.3f} bound {s['bound']:.3f} "
                f"{s['evidence']}"
            )
    v = out["vote_accuracy"]
    lines.append(
        f"vote accuracy: all-honest {v['all_honest']}, half_wrong with trust "
        f"{v['half_wrong_with_trust']}, without {v['half_wrong_without_trust']}; "
        f"canary overhead {out['canary_overhead_trust_arms']}; total {out['total_s']} s"
    )
    return "\n".join(lines)


def parse_arms(text: str) -> list[tuple[str, bool]]:
    """`honest,substituted,half_wrong,half_wrong:notrust` -> arms."""
    arms = []
    for part in text.split(","):
        behaviour, _, mode = part.strip().partition(":")
        if behaviour not in BEHAVIOURS or mode not in ("", "trust", "notrust"):
            raise argparse.ArgumentTypeError(f"unknown arm {part!r}")
        arms.append((behaviour, mode != "notrust"))
    return arms


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=60, help="Tasks per arm.")
    parser.add_argument(
        "--arms",
        type=parse_arms,
        default=list(ARMS),
        help="Comma-separated: honest, substituted, half_wrong, each optionally :notrust.",
    )
    parser.add_argument("--backend", choices=("llama_cpp", "echo"), default="llama_cpp")
    parser.add_argument("--data", type=Path, default=None, help="Directory of the ARC splits.")
    parser.add_argument("--workdir", type=Path, default=None, help="Default: a temporary one.")
    parser.add_argument("--json", action="store_true", help="One JSON object on stdout.")
    parser.add_argument("--records", action="store_true", help="Per-task records in the JSON.")
    parser.add_argument("--quiet", action="store_true", help="No progress on stderr.")
    args = parser.parse_args(argv)
    results, info = run(
        args.tasks, args.arms, args.backend, args.data, args.workdir, not args.quiet
    )
    out = report(results, info, args.records)
    if args.json:
        print(json.dumps(out, separators=(",", ":")))
    else:
        print(readable(out))


if __name__ == "__main__":
    main()
