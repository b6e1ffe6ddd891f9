"""Routing records in SQLite: storing, labelling by feedback, datasets, restart safety."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from consortium.learning.records import (
    RoutingDataError,
    RoutingRecord,
    RoutingRecords,
    feature_set_digest,
)

NAMES = ("a", "b", "c")


def rec(i: int, **kw: object) -> RoutingRecord:
    base: dict[str, object] = {
        "record_id": f"task-{i}",
        "owner": "user:alice",
        "features": (float(i), 0.5, -1.0),
        "router": "self:margin",
        "route": "local",
        "local_choice": 1,
        "final_choice": 1,
        "created": 1000.0 + i,
    }
    base.update(kw)
    return RoutingRecord(**base)  # type: ignore[arg-type]


def test_records_survive_a_restart_and_only_labelled_ones_train(tmp_path: Path) -> None:
    db = tmp_path / "node.sqlite3"
    records = RoutingRecords(db)
    records.add(rec(0, route="escalated", final_choice=2, local_adequate=False), NAMES)
    records.add(rec(1), NAMES)  # kept local: no outcome yet
    records.add(rec(2, local_adequate=True, escalation_helps=False, label_source="seed"), NAMES)
    records.close()

    again = RoutingRecords(db)
    data = again.dataset(NAMES, "local_correct")
    assert data.record_ids == ("task-0", "task-2")
    assert data.y.tolist() == [0, 1]
    np.testing.assert_allclose(data.x[1], [2.0, 0.5, -1.0])
    assert again.dataset(NAMES, "escalation_helps").record_ids == ("task-2",)
    assert again.counts() == {
        "records": 3,
        "labelled": {"local_correct": 2, "escalation_helps": 1},
        "sources": {"seed": 1},
    }
    # Another feature layout is a different dataset.
    assert len(again.dataset(("x", "y", "z"), "local_correct")) == 0
    assert again.feature_sets() == {feature_set_digest(NAMES): NAMES}


def test_feedback_labels_only_the_owners_record(tmp_path: Path) -> None:
    records = RoutingRecords(tmp_path / "db.sqlite3")
    records.add(rec(1, route="escalated", local_choice=0, final_choice=2), NAMES)
    records.add(rec(2), NAMES)

    with pytest.raises(RoutingDataError, match="no routed task task-1 of yours"):
        records.feedback("task-1", "user:mallory", adequate=True)
    with pytest.raises(RoutingDataError, match="no routed task nope"):
        records.feedback("nope", "user:alice", adequate=True)
    with pytest.raises(ValueError, match="exactly one"):
        records.feedback("task-1", "user:alice", adequate=True, correct_choice=1)

    # The correct option labels both outcomes of an escalated task.
    r1 = records.feedback("task-1", "user:alice", correct_choice=2)
    assert (r1.local_adequate, r1.escalation_helps, r1.label_source) == (False, True, "verified")
    r2 = records.feedback("task-2", "user:alice", adequate=True)
    assert (r2.local_adequate, r2.escalation_helps, r2.label_source) == (True, None, "feedback")
    assert records.get("task-1").features == (1.0, 0.5, -1.0)


def test_bad_records_are_refused_and_nothing_is_half_written(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite3"
    records = RoutingRecords(db)
    with pytest.raises(ValueError, match="2 features for 3 names"):
        records.add(rec(1, features=(1.0, 2.0)), NAMES)
    with pytest.raises(ValueError, match="finite"):
        records.add(rec(1, features=(1.0, float("nan"), 0.0)), NAMES)
    records.add(rec(1), NAMES)
    with pytest.raises(RoutingDataError, match="task-1 exists already"):
        records.add_many([rec(2), rec(1)], NAMES)  # duplicate id: the batch rolls back
    assert records.counts()["records"] == 1
    records.add_many([rec(1, local_adequate=True), rec(2)], NAMES, replace=True)
    assert records.counts()["records"] == 2
    assert records.get("task-1").local_adequate is True
