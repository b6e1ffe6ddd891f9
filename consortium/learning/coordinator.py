"""`consortium federation train`: one federated training run of the routing policy, on
Flower's simulation engine or on a deployed SuperLink, ending with the artifact signed by
the federation admin and written where nodes load it.

The Flower ServerApp writes the unsigned artifact next to the requested path; this side,
which holds the admin key, stamps it with the federation id and signs it, so the key
never passes through Flower. A node refuses an unsigned artifact.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from consortium.errors import ConfigError
from consortium.learning.policy import PolicyArtifact, load_policy, sign_policy, write_policy
from consortium.learning.records import RoutingRecords
from consortium.learning.settings import ConfigValue, RunSettings, TrainOptions
from consortium.llm.embeddings import DIMENSION, MODEL_NAME
from consortium.protocols.routing_features import DRAFT_NORMALISATION, feature_names


@dataclass(frozen=True)
class TrainRequest:
    """One run as the coordinator asks for it: the options chosen, and what is not a run
    setting (where the signed artifact goes, the roster and admin key that sign it)."""

    out: Path
    options: TrainOptions = field(default_factory=TrainOptions)
    version: str = ""
    history: Path | None = None
    roster: Path | None = None
    admin_key: Path | None = None


def node_feature_names() -> tuple[str, ...]:
    """The features a node computes (and so the ones a policy must be trained on)."""
    return feature_names(DIMENSION)


def unsigned_path(out: Path) -> Path:
    return out.with_name(out.name + ".unsigned")


def run_settings(req: TrainRequest, orgs: int) -> RunSettings:
    """The settings of this request's run across `orgs` organizations: the options, the
    features a node computes, and the unsigned artifact next to the requested path."""
    return RunSettings.of(
        req.options,
        feature_names=node_feature_names(),
        min_nodes=orgs,
        out=str(unsigned_path(req.out).resolve()),
        history=str(req.history.resolve()) if req.history else "",
        version=req.version,
        embedding_model=MODEL_NAME,
        normalisation=DRAFT_NORMALISATION,
    )


def run_config(req: TrainRequest, orgs: int) -> dict[str, ConfigValue]:
    """The Flower run config of this request (the keys of the app's pyproject.toml)."""
    return run_settings(req, orgs).to_config()


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


def train_deployed(
    req: TrainRequest, orgs: int, superlink: str, ca: Path | None, timeout: float
) -> tuple[PolicyArtifact, bool]:
    """Submits the run to a SuperLink (run on the coordinator's host: the ServerApp
    writes the artifact on the SuperLink's machine)."""
    from consortium.learning.deployment import submit, write_connection

    unsigned_path(req.out).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="consortium-flwr-") as home:
        write_connection(Path(home), superlink, ca)
        submit(run_config(req, orgs), Path(home), timeout=timeout)
    return finish(req)
