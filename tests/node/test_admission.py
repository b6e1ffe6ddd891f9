"""The node's admission (node/admission.py) at a known model pace: the bound on requests
in flight, the wait estimated from the requests admitted before (fairly, one per other
caller), refusals against a caller's deadline and the node's own bound."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from consortium.errors import NodeOverloaded, NodeUnavailableError
from consortium.llm.echo import EchoBackend
from consortium.llm.worker import ModelWorker
from consortium.node.admission import Admission


@dataclass
class Pace:
    """A model that takes `job_s` a job and has no work of its own queued."""

    job_s: float | None = 2.0
    slots: int = 1

    def jobs_ahead(self, lane: str = "") -> int:
        return 0

    def refuse_if_full(self, admitted: int = 0) -> None:
        pass  # an unbounded queue


def test_a_full_node_refuses_until_a_place_is_given_back() -> None:
    admission = Admission(Pace(), max_pending=2, max_wait_s=0)
    first = admission.admit("a", local_model=False)
    admission.admit("b", local_model=True)
    with pytest.raises(NodeOverloaded) as refused:
        admission.admit("c", local_model=False)
    assert refused.value.reason == "overloaded"
    assert isinstance(refused.value, NodeUnavailableError)  # nothing was done
    assert "server.max_pending_requests" in str(refused.value)
    first.release()
    first.release()  # once only
    admission.admit("c", local_model=False)
    assert admission.counts()["in_flight"] == 2
    assert admission.counts()["refused"] == {"overloaded": 1}


def test_a_request_that_cannot_be_answered_before_its_deadline_is_refused_busy() -> None:
    """Six of a member's local generations admitted (2 s each): another caller waits for
    one of them (fair share), the flooding caller for all six."""
    admission = Admission(Pace(2.0), max_pending=0, max_wait_s=0)
    for _ in range(6):
        admission.admit("local", local_model=True)
    admission.admit("org:peer", local_model=True, deadline_s=4.5)  # 2 s + its own 2 s
    with pytest.raises(NodeOverloaded) as refused:
        admission.admit(
            "org:other", local_model=True, deadline_s=3.0
        )  # one of each lane, 2 s each, then its own
    assert str(refused.value) == (
        "busy: estimated wait 6.0 s for an answer exceeds your deadline 3.0 s"
    )
    assert refused.value.reason == "busy" and refused.value.retry_after_s >= 1
    with pytest.raises(NodeOverloaded):
        admission.admit("local", local_model=True, deadline_s=13.0)  # 12 s + 2 s
    # A request a peer serves does not wait for the model.
    admission.admit("local", local_model=False, deadline_s=1.0)


def test_the_model_queue_is_bounded_by_max_queue_wait() -> None:
    admission = Admission(Pace(2.0), max_pending=0, max_wait_s=5.0)
    for _ in range(3):  # waits of 0, 2 and 4 s
        admission.admit("a", local_model=True)
    with pytest.raises(NodeOverloaded) as refused:
        admission.admit("a", local_model=True)
    assert "server.max_queue_wait_s" in str(refused.value)
    assert admission.counts()["model_queue"] == 3


def test_before_the_model_has_a_pace_only_the_request_bound_holds() -> None:
    admission = Admission(Pace(None), max_pending=0, max_wait_s=1.0)
    for _ in range(20):
        admission.admit("a", local_model=True, deadline_s=0.1)
    assert admission.counts()["refused"] == {}


def test_a_full_model_queue_is_refused_before_any_work() -> None:
    """A serial model with max_queue 1 takes one running and one waiting request;
    admission counts the requests it let through (not yet queued) and refuses a third
    with queue_full, counted; requests for a peer are not the model's."""
    worker = ModelWorker(EchoBackend, max_queue=1)
    admission = Admission(worker, max_pending=0, max_wait_s=0)
    first = admission.admit("a", local_model=True)
    admission.admit("b", local_model=True)
    with pytest.raises(NodeOverloaded) as refused:
        admission.admit("c", local_model=True)
    assert refused.value.reason == "queue_full"
    assert "model.max_queue" in str(refused.value)
    admission.admit("c", local_model=False)
    first.release()
    admission.admit("c", local_model=True)
    assert admission.counts()["refused"] == {"queue_full": 1}
    assert worker.load().refused == 1


def test_a_model_of_several_slots_waits_in_rounds_of_them() -> None:
    """Eight generations in flight on a model of 8 slots (a remote server with
    `model.parallel = 8`): the ninth waits for one round, not for eight jobs."""
    admission = Admission(Pace(2.0, slots=8), max_pending=0, max_wait_s=0)
    for _ in range(7):
        admission.admit("local", local_model=True, deadline_s=2.5)  # a free slot each
    admission.admit("local", local_model=True, deadline_s=2.5)
    admission.admit("local", local_model=True, deadline_s=4.5)  # one round, then its own
    with pytest.raises(NodeOverloaded, match=r"estimated wait 4\.0 s"):
        admission.admit("local", local_model=True, deadline_s=2.5)
