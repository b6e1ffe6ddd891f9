"""Routing records from the benchmark caches: their features and outcomes, the split
across organizations, and `consortium federation seed-routing-data`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from consortium.evaluation.routing_eval import correct, feature_matrix
from consortium.evaluation.seeding import partition, records
from consortium.learning.records import RoutingRecords
from consortium.llm.embeddings import DIMENSION
from consortium.node.config import load_config
from consortium.protocols.routing_features import feature_names
from tests.evaluation.conftest import Splits


def test_records_carry_the_routers_features_and_both_outcomes(splits: Splits) -> None:
    dev = splits.dev
    rows, names = records(dev, ("none", "none"), owner="seed:acme")
    assert names == feature_names(DIMENSION) and len(rows) == len(dev.items)
    # The same features the routing benchmark trains the learned router on.
    np.testing.assert_allclose(
        np.asarray([r.features for r in rows]), feature_matrix(dev, "none"), rtol=1e-6
    )
    local = correct(dev.local, dev.items, "none")
    strong = correct(dev.strong, dev.items, "none")
    assert [r.local_adequate for r in rows] == local.tolist()
    assert [r.escalation_helps for r in rows] == (strong & ~local).tolist()
    assert all(r.record_id.startswith("seed:arc_easy_dev:") for r in rows)


def test_partitions_cover_every_item_once(splits: Splits) -> None:
    for how in ("topic", "iid"):
        parts = partition(splits.dev, 3, how)  # type: ignore[arg-type]
        assert len(parts) == len(splits.dev.items) and set(parts.tolist()) <= {0, 1, 2}
        assert len(set(parts.tolist())) > 1
    assert (partition(splits.dev, 3, "topic") == partition(splits.dev, 3, "topic")).all()


def test_seed_routing_data_cli(splits: Splits, tmp_path: Path) -> None:
    cache_home = tmp_path / "cache"
    (cache_home / "consortium").mkdir(parents=True)
    (cache_home / "consortium" / "eval").symlink_to(splits.cache)
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home), "CONSORTIUM_DATA_DIR": str(splits.data)}
    (tmp_path / "node.toml").write_text('[node]\norg_id = "acme"\n')

    def seed(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "consortium.cli", "federation", "seed-routing-data",
             "--config", str(tmp_path / "node.toml"), *args],
            capture_output=True, text=True, timeout=300, env=env, check=False,
        )  # fmt: skip

    parts = []
    for i in (1, 2):
        done = seed("--part", f"{i}/2")
        assert done.returncode == 0, done.stderr
        parts.append(int(done.stdout.split("stored ")[1].split()[0]))
    assert sum(parts) == len(splits.dev.items)
    store = RoutingRecords(load_config(tmp_path / "node.toml").database_path)
    assert store.counts()["records"] == len(splits.dev.items)
    assert store.counts()["sources"] == {"seed": len(splits.dev.items)}
    store.close()
    again = seed("--part", "1/2")  # re-running replaces, never duplicates
    assert again.returncode == 0 and f"{len(splits.dev.items)} records" in again.stdout

    bad_part = seed("--part", "3/2")
    assert bad_part.returncode == 2 and "--part must be I/N" in bad_part.stderr
    bad_how = seed("--partition", "alphabetical")
    assert bad_how.returncode == 2 and "--partition must be topic or iid" in bad_how.stderr
