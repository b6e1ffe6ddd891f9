"""`consortium trust show | reset`: the reputations this node keeps of its peers
(DATA_DIR/trust.sqlite3, or the PostgreSQL database of its [storage] url). Both work
while the node runs: a reset takes effect on the node's next call, without a restart (on
PostgreSQL, on every replica within the store's refresh bound: trust/reputation_store.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from consortium.cli.common import out, run, write_through
from consortium.errors import ConfigError
from consortium.node.config import NodeConfig, load_config

if TYPE_CHECKING:
    from consortium.trust.reputation import EvidenceKind
    from consortium.trust.reputation_engine import Reputation, ReputationAssessor

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="Path to node.toml.")]
KINDS: tuple[EvidenceKind, ...] = ("canary", "cross_check", "protocol", "report")


def trust_show(
    config: ConfigOption,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Each peer's state, score and lower bound, evidence by kind, the members' reports'
    opinion, last change and why."""

    def go() -> None:
        assessor = _open(load_config(config))
        try:
            records = assessor.reputations()
        finally:
            assessor.close()
        peers = _peers_json(records)
        if as_json:
            write_through(json.dumps({"peers": peers}, separators=(",", ":")) + "\n")
        else:
            _table(peers)

    run(go)


def trust_reset(
    org: Annotated[str, typer.Argument(help="The peer organization to reset.")],
    config: ConfigOption,
) -> None:
    """Put a peer back to the prior: healthy, no offences, no evidence."""

    def go() -> None:
        cfg = load_config(config)
        assessor = _open(cfg)
        try:
            known = _members(cfg) | {r.peer for r in assessor.reputations()}
            if org == cfg.node.org_id or org not in known:
                raise ConfigError(
                    f"unknown organization {org!r}: not a peer in the roster or the trust database",
                    key="ORG",
                )
            rep = assessor.reset(org)
        finally:
            assessor.close()
        write_through(f"reset {org}: {rep.state}, score {rep.score:.3f}, bound {rep.bound:.3f}\n")

    run(go)


def _open(cfg: NodeConfig) -> ReputationAssessor:
    """The node's trust store where its [storage] url keeps it: the SQLite file (which
    must exist), or the PostgreSQL database its replicas share (left open until the
    command's process ends)."""
    from consortium.cli.stores import store_of
    from consortium.trust.reputation_engine import ReputationAssessor
    from consortium.trust.reputation_store import ReputationStore

    store = ReputationStore(store_of(cfg, "trust"), must_exist=True)
    return ReputationAssessor(store, cfg.trust.settings())


def _members(cfg: NodeConfig) -> set[str]:
    """The roster's members, when the node is in a federation."""
    if cfg.federation is None:
        return set()
    from consortium.federation.roster import load_roster

    return {m.org_id for m in load_roster(cfg.resolve(cfg.federation.roster)).members}


def _when(t: float) -> str | None:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if t else None


def _evidence(rep: Reputation) -> dict[str, dict[str, int]]:
    return {
        kind: {"good": rep.counts.get((kind, True), 0), "bad": rep.counts.get((kind, False), 0)}
        for kind in KINDS
        if (kind, True) in rep.counts or (kind, False) in rep.counts
    }


def _peers_json(records: list[Reputation]) -> list[dict[str, Any]]:
    peers: dict[str, dict[str, Any]] = {}
    for rep in records:  # sorted: each peer's row ("") before its models
        scores = {
            "score": round(rep.score, 6),
            "bound": round(rep.bound, 6),
            "answers_bound": round(rep.answers_bound, 6),
            "protocol_bound": round(rep.protocol_bound, 6),
        }
        if not rep.model:
            peers[rep.peer] = {
                "peer": rep.peer,
                "state": rep.state,
                **scores,
                "offences": rep.offences,
                "quarantined_until": _when(rep.quarantined_until)
                if rep.state == "quarantined"
                else None,
                "evidence": _evidence(rep),
                # The members' reports' opinion, in pseudo-answers (in score and bound).
                "reports": {"good": round(rep.opinion[0], 6), "bad": round(rep.opinion[1], 6)}
                if any(rep.opinion)
                else None,
                "changed_at": _when(rep.changed_at),
                "reason": rep.reason,
                "models": [],
            }
        elif rep.peer in peers:
            peers[rep.peer]["models"].append(
                {"model": rep.model, **scores, "evidence": _evidence(rep)}
            )
    return list(peers.values())


def _table(peers: list[dict[str, Any]]) -> None:
    from rich.table import Table

    if not peers:
        out.print("no peer has a reputation yet")
        return
    table = Table()
    columns = ("peer", "state", "score", "bound", "evidence (good/bad)", "reports", "last change")
    for column in columns:
        table.add_column(column, justify="right" if column in ("score", "bound") else "left")

    def counts(evidence: dict[str, dict[str, int]]) -> str:
        return " ".join(f"{k} {v['good']}/{v['bad']}" for k, v in evidence.items()) or "-"

    for p in peers:
        state = p["state"]
        if p["quarantined_until"]:
            state += f" until {p['quarantined_until']}"
        change = f"{p['changed_at'] or '-'} {p['reason']}".strip()
        table.add_row(
            p["peer"],
            state,
            f"{p['score']:.3f}",
            f"{p['bound']:.3f}",
            counts(p["evidence"]),
            f"{p['reports']['good']:.2f}/{p['reports']['bad']:.2f}" if p["reports"] else "-",
            change,
        )
        for m in p["models"]:
            table.add_row(
                f"  {m['model']}",
                "",
                f"{m['score']:.3f}",
                f"{m['bound']:.3f}",
                counts(m["evidence"]),
                "",
                "",
            )
    out.print(table)
