"""Routing records from the benchmark caches: what `consortium federation
seed-routing-data` stores so a fresh federation can train at once, and how
`consortium bench federated` splits one dataset across organizations.

Each item becomes the record a node would have kept had it routed the question: the
learned router's features computed from the local model's cached draft, and both
outcomes (the local model right; escalating to the peer helps), which the benchmark
knows. Items are split across organizations by topic (k-means clusters of the question
embeddings: non-IID, each organization sees different subjects) or uniformly at random.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from consortium.errors import ConfigError
from consortium.evaluation.embedding_cache import question_text
from consortium.evaluation.routing_eval import SplitData, correct, draft_of
from consortium.learning.records import RoutingRecord, RoutingRecords
from consortium.node.config import NodeConfig
from consortium.protocols.multiple_choice import Normalisation
from consortium.protocols.routing_features import DRAFT_NORMALISATION, feature_names, features

if TYPE_CHECKING:
    from consortium.evaluation.harness import Progress

Partition = Literal["topic", "iid"]


def partition(
    data: SplitData, parts: int, how: Partition = "topic", seed: int = 0
) -> npt.NDArray[np.int64]:
    """The organization (0..parts-1) each item of the split goes to."""
    if parts < 1:
        raise ValueError("parts must be at least 1")
    if parts == 1:
        return np.zeros(len(data.items), dtype=np.int64)
    if how == "iid":
        return np.asarray(
            [
                int.from_bytes(hashlib.sha256(f"{seed}:{it.id}".encode()).digest()[:4], "big")
                % parts
                for it in data.items
            ],
            dtype=np.int64,
        )
    from sklearn.cluster import KMeans

    emb = np.asarray([data.embeddings[it.id] for it in data.items], dtype=np.float64)
    labels = KMeans(n_clusters=parts, n_init=10, random_state=seed).fit_predict(emb)
    return np.asarray(labels, dtype=np.int64)


def records(
    data: SplitData,
    norms: tuple[Normalisation, Normalisation],
    *,
    owner: str,
    indices: Sequence[int] | None = None,
    topics: npt.NDArray[np.int64] | None = None,
) -> tuple[list[RoutingRecord], tuple[str, ...]]:
    """The records of the chosen items (all by default) and their feature names."""
    local_right = correct(data.local, data.items, norms[0])
    strong_right = correct(data.strong, data.items, norms[1])
    chosen = range(len(data.items)) if indices is None else indices
    out: list[RoutingRecord] = []
    dim = 0
    for i in chosen:
        it = data.items[i]
        cached = data.local[it.id]
        embedding = data.embeddings[it.id].tolist()
        dim = len(embedding)
        draft = draft_of(cached, norms[0])
        vec = features(question_text(it), draft, embedding, cached.generated.choice)
        local_choice = int(np.argmax(draft.option_probs))
        out.append(
            RoutingRecord(
                record_id=f"seed:{data.name}:{it.id}",
                owner=owner,
                features=tuple(vec),
                router="seed",
                route="local",
                local_choice=local_choice,
                final_choice=local_choice,
                local_adequate=bool(local_right[i]),
                escalation_helps=bool(strong_right[i] and not local_right[i]),
                label_source="seed",
                topic="" if topics is None else f"topic-{int(topics[i])}",
            )
        )
    return out, feature_names(dim)


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
    data = _split(split, local, strong, limit, progress)
    owners = partition(data, orgs, "topic")
    directory.mkdir(parents=True, exist_ok=True)
    sizes = []
    for org in range(orgs):
        path = directory / f"org-{org}.sqlite3"
        path.unlink(missing_ok=True)
        sizes.append(_store_part(data, owners, org, path, f"org-{org}")[0])
    return sizes
