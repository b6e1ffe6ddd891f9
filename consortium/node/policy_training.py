"""`consortium federation train`: one federated training run of the routing policy, on
Flower's simulation engine or on a deployed SuperLink, ending with the artifact signed by
the federation admin and written where nodes load it.

The Flower ServerApp writes the unsigned artifact next to the requested path; this side,
which holds the admin key, stamps it with the federation id and signs it, so the key
never passes through Flower. A node refuses an unsigned artifact.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from consortium.errors import ConfigError
from consortium.evaluation.routing_eval import SplitData
from consortium.federation.policy import PolicyArtifact, load_policy, sign_policy, write_policy
from consortium.federation.routing_data import RoutingRecords
from consortium.federation.training import TrainSettings
from consortium.llm.embeddings import DIMENSION, MODEL_NAME
from consortium.node.config import NodeConfig
from consortium.node.orchestrator import DRAFT_NORMALISATION
from consortium.protocols.routing_features import feature_names

if TYPE_CHECKING:
    from consortium.evaluation.harness import Progress


@dataclass(frozen=True)
class TrainRequest:
    out: Path
    rounds: int = 10
    strategy: Literal["fedavg", "fedprox"] = "fedavg"
    proximal_mu: float = 0.1
    label: Literal["local_correct", "escalation_helps"] = "local_correct"
    local_steps: int = TrainSettings.local_steps
    learning_rate: float = TrainSettings.learning_rate
    l2: float = TrainSettings.l2
    version: str = ""
    history: Path | None = None
    roster: Path | None = None
    admin_key: Path | None = None
    dp_noise: float = 0.0
    dp_clip: float = 1.0
    dp_delta: float = 1e-5


def node_feature_names() -> tuple[str, ...]:
    """The features a node computes (and so the ones a policy must be trained on)."""
    return feature_names(DIMENSION)


def unsigned_path(out: Path) -> Path:
    return out.with_name(out.name + ".unsigned")


def run_config(req: TrainRequest, orgs: int) -> dict[str, Any]:
    """The Flower run config of this request (keys of the app's pyproject.toml)."""
    if req.rounds < 1 or orgs < 1:
        raise ConfigError("--rounds and --orgs must be at least 1")
    return {
        "rounds": req.rounds,
        "strategy": req.strategy,
        "proximal-mu": req.proximal_mu,
        "local-steps": req.local_steps,
        "learning-rate": req.learning_rate,
        "l2": req.l2,
        "label": req.label,
        "feature-names": json.dumps(list(node_feature_names())),
        "min-nodes": orgs,
        "out": str(unsigned_path(req.out).resolve()),
        "history": str(req.history.resolve()) if req.history else "",
        "version": req.version,
        "embedding-model": MODEL_NAME,
        "normalisation": DRAFT_NORMALISATION,
        "dp-noise": req.dp_noise,
        "dp-clip": req.dp_clip,
        "dp-delta": req.dp_delta,
    }


def finish(req: TrainRequest) -> tuple[PolicyArtifact, bool]:
    """Stamps and signs the run's artifact (when a roster is given) and writes it to
    req.out; returns it and whether it is signed."""
    from consortium.federation.roster import load_roster, now_iso

    unsigned = unsigned_path(req.out)
    if not unsigned.exists():
        raise ConfigError(f"the run wrote no policy at {unsigned} (see the Flower log)")
    artifact = load_policy(unsigned, None)
    signed = False
    if req.roster is not None:
        from consortium.federation.admin import default_paths, load_admin_key

        fed = load_roster(req.roster).federation_id
        artifact = artifact.model_copy(update={"federation_id": fed, "created_at": now_iso()})
        key = load_admin_key(req.admin_key or default_paths(req.roster).admin_private)
        artifact = sign_policy(artifact, [key])
        signed = True
    write_policy(req.out, artifact)
    unsigned.unlink(missing_ok=True)
    return artifact, signed


def check_data_dir(data_dir: Path, orgs: int) -> list[int]:
    """The record count of each simulated organization's database; refuses a missing or
    empty one by name."""
    sizes = []
    for i in range(orgs):
        path = data_dir / f"org-{i}.sqlite3"
        if not path.exists():
            raise ConfigError(f"no routing records for organization {i}", path=str(path))
        store = RoutingRecords(path)
        try:
            sizes.append(int(store.counts()["records"]))
        finally:
            store.close()
        if sizes[-1] == 0:
            raise ConfigError("no routing records", path=str(path))
    return sizes


@dataclass(frozen=True)
class Seeded:
    stored: int
    adequate: int
    total: int


def _store_part(
    data: SplitData, owners: Any, index: int, path: Path, owner: str
) -> tuple[int, int, int]:
    """Stores the items of part `index` as routing records in the database at `path`:
    (stored, of which the local answer was right, records now in the database)."""
    from consortium.evaluation.seeding import records

    chosen = [i for i in range(len(data.items)) if owners[i] == index]
    rows, names = records(
        data,
        (DRAFT_NORMALISATION, DRAFT_NORMALISATION),
        owner=owner,
        indices=chosen,
        topics=owners,
    )
    store = RoutingRecords(path)
    try:
        store.add_many(rows, names, replace=True)
        total = int(store.counts()["records"])
    finally:
        store.close()
    return len(rows), sum(1 for r in rows if r.local_adequate), total


def _split(
    split: str, local: str, strong: str, limit: int | None, progress: Progress | None
) -> SplitData:
    from consortium.evaluation.harness import no_progress, split_data

    return split_data(split, local, strong, limit=limit, progress=progress or no_progress)


def seed_node_records(
    cfg: NodeConfig,
    split: str,
    index: int,
    parts: int,
    limit: int | None = None,
    how: Literal["topic", "iid"] = "topic",
    local: str = "smollm2-135m",
    strong: str = "gemma3-270m",
    progress: Progress | None = None,
) -> Seeded:
    """Part `index` of `parts` of a benchmark split as this node's routing records, as
    if it had routed those questions (`consortium federation seed-routing-data`); model
    outputs missing from the cache are computed, shown on `progress`."""
    from consortium.evaluation.seeding import partition

    if not 0 <= index < parts:
        raise ConfigError(f"part {index + 1} of {parts} does not exist")
    data = _split(split, local, strong, limit, progress)
    owners = partition(data, parts, how)
    return Seeded(*_store_part(data, owners, index, cfg.database_path, f"seed:{cfg.node.org_id}"))


def seed_simulation(
    directory: Path,
    orgs: int,
    split: str,
    local: str,
    strong: str,
    limit: int | None,
    progress: Progress | None = None,
) -> list[int]:
    """org-0..org-{orgs-1}.sqlite3 from the benchmark caches, split by topic."""
    from consortium.evaluation.seeding import partition

    data = _split(split, local, strong, limit, progress)
    owners = partition(data, orgs, "topic")
    directory.mkdir(parents=True, exist_ok=True)
    sizes = []
    for org in range(orgs):
        path = directory / f"org-{org}.sqlite3"
        path.unlink(missing_ok=True)
        sizes.append(_store_part(data, owners, org, path, f"org-{org}")[0])
    return sizes


def train_simulated(req: TrainRequest, orgs: int, data_dir: Path) -> tuple[PolicyArtifact, bool]:
    from consortium.federation.simulation import simulate

    check_data_dir(data_dir, orgs)
    unsigned_path(req.out).unlink(missing_ok=True)
    simulate(run_config(req, orgs), orgs, data_dir)
    return finish(req)


def train_deployed(
    req: TrainRequest, orgs: int, superlink: str, ca: Path | None, timeout: float
) -> tuple[PolicyArtifact, bool]:
    """Submits the run to a SuperLink (run on the coordinator's host: the ServerApp
    writes the artifact on the SuperLink's machine)."""
    from consortium.federation.deployment import submit, write_connection

    unsigned_path(req.out).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="consortium-flwr-") as home:
        write_connection(Path(home), superlink, ca)
        submit(run_config(req, orgs), Path(home), timeout=timeout)
    return finish(req)
