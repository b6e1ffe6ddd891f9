"""The model's bounded fair queue and its slot policy (llm/worker.py): pure, no model.

The policy: one lane holds at most caller_slots, all peer lanes together at most
peer_slots, and the defaults leave one slot (or half) to others. The queue: round-robin
between lanes, skipping (not reordering) a lane at its cap; bounded; a job either runs
or is withdrawn, never both.
"""

from __future__ import annotations

import threading

import pytest

from consortium.llm.worker import Lane, SlotPolicy, _Entry, _FairQueue

KEY_A = Lane("key:a")
KEY_B = Lane("key:b")
PEER_X = Lane("org:x", peer=True)
PEER_Y = Lane("org:y", peer=True)


def entry(tag: str, log: list[str] | None = None) -> _Entry:
    def job() -> None:
        if log is not None:
            log.append(tag)

    return _Entry(job, timed=True)


class Waits:
    """A LoadObserver that records queue waits by lane."""

    def __init__(self) -> None:
        self.waits: list[tuple[float, str]] = []

    def queue_wait(self, seconds: float, lane: str) -> None:
        self.waits.append((seconds, lane))

    def refused(self, reason: str) -> None:
        pass

    def step(self, sequences: int, tokens: int) -> None:
        pass

    def prefix(self, reused: int, prompt: int) -> None:
        pass


# -- the policy -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slots", "caller", "peers"),
    [(1, 1, 1), (2, 1, 1), (3, 2, 2), (8, 7, 4), (16, 15, 8)],
)
def test_the_default_caps_leave_room_for_others(slots: int, caller: int, peers: int) -> None:
    policy = SlotPolicy.of(slots)
    assert (policy.slots, policy.caller_slots, policy.peer_slots) == (slots, caller, peers)


def test_configured_caps_are_kept_and_never_exceed_the_slots() -> None:
    assert SlotPolicy.of(8, caller_slots=2, peer_slots=3) == SlotPolicy(8, 2, 3)
    assert SlotPolicy.of(4, caller_slots=10, peer_slots=10) == SlotPolicy(4, 4, 4)


@pytest.mark.parametrize(("slots", "caller", "peers"), [(0, 0, 0), (4, -1, 0), (4, 0, -1)])
def test_an_impossible_policy_is_refused(slots: int, caller: int, peers: int) -> None:
    with pytest.raises(ValueError, match="slot policy"):
        SlotPolicy.of(slots, caller, peers)


def test_one_caller_never_takes_every_slot() -> None:
    policy = SlotPolicy.of(4)  # caller_slots 3
    assert policy.admits(KEY_A, {KEY_A: 2})
    assert not policy.admits(KEY_A, {KEY_A: 3})  # the fourth stays free for others
    assert policy.admits(KEY_B, {KEY_A: 3})
    assert not policy.admits(KEY_B, {KEY_A: 3, KEY_B: 1})  # all four held


def test_peers_together_hold_at_most_peer_slots() -> None:
    policy = SlotPolicy.of(4)  # peer_slots 2
    assert policy.admits(PEER_Y, {PEER_X: 1})
    assert not policy.admits(PEER_Y, {PEER_X: 1, PEER_Y: 1})  # peers hold their half
    assert not policy.admits(PEER_X, {PEER_X: 2})
    assert policy.admits(KEY_A, {PEER_X: 1, PEER_Y: 1})  # local callers keep the rest
    # Local callers do not count against the peers' share.
    assert policy.admits(PEER_X, {KEY_A: 2})


def test_one_slot_serves_anyone_when_free() -> None:
    policy = SlotPolicy.of(1)
    for lane in (KEY_A, PEER_X, Lane()):
        assert policy.admits(lane, {})
        assert not policy.admits(lane, {KEY_B: 1})


# -- the queue --------------------------------------------------------------------------


def drain(queue: _FairQueue) -> list[str]:
    """Takes and runs everything, one slot at a time; the tags in order."""
    log: list[str] = []
    while (e := queue.take()) is not None:
        log.append(e.lane.name)
        queue.release(e)
    return log


def test_lanes_are_served_in_turn() -> None:
    queue = _FairQueue()
    for lane in ("a", "a", "a", "b", "c", "c"):
        assert queue.put(lane, entry(lane))
    assert queue.ahead("b") == 4  # a b c a, then a new b
    assert drain(queue) == ["a", "b", "c", "a", "c", "a"]
    assert len(queue) == 0


def test_a_plain_string_names_a_local_lane() -> None:
    queue = _FairQueue()
    e = entry("x")
    queue.put("key:a", e)
    assert e.lane == Lane("key:a", peer=False)


def test_a_lane_at_its_cap_is_skipped_and_keeps_its_turn() -> None:
    queue = _FairQueue(SlotPolicy.of(3))  # caller_slots 2
    for lane in (KEY_A, KEY_A, KEY_A, KEY_B):
        queue.put(lane, entry(lane.name))
    first, second = queue.take(), queue.take()
    assert first is not None and second is not None
    assert (first.lane, second.lane) == (KEY_A, KEY_B)
    third = queue.take()
    assert third is not None and third.lane == KEY_A
    assert queue.busy() == {KEY_A: 2, KEY_B: 1}
    queue.release(second)
    # A free slot, but key:a holds two, its cap, and is the only lane waiting.
    assert queue.take() is None
    assert not queue.wait(timeout=0)
    queue.release(first)
    last = queue.take()
    assert last is not None and last.lane == KEY_A
    assert len(queue) == 0


def test_one_caller_alone_still_gets_at_most_its_cap() -> None:
    queue = _FairQueue(SlotPolicy.of(4))
    for i in range(6):
        queue.put(KEY_A, entry(str(i)))
    taken = [queue.take() for _ in range(4)]
    assert [e is not None for e in taken] == [True, True, True, False]
    assert queue.slots_busy == 3 and len(queue) == 3


def test_peers_wait_while_local_callers_take_the_other_slots() -> None:
    queue = _FairQueue(SlotPolicy.of(4))  # peers 2 in all
    for lane in (PEER_X, PEER_Y, PEER_X, KEY_A, KEY_A):
        queue.put(lane, entry(lane.name))
    names = []
    while (e := queue.take()) is not None:
        names.append(e.lane.name)
    assert names == ["org:x", "org:y", "key:a", "key:a"]
    assert len(queue) == 1  # org:x's second waits for a peer slot


def test_a_full_queue_refuses_and_counts_free_slots_as_room() -> None:
    queue = _FairQueue(SlotPolicy.of(2), max_waiting=1)  # caller_slots 1
    # Two free slots: two jobs are about to be taken, one more may wait.
    assert [queue.put(KEY_A, entry("a")) for _ in range(3)] == [True, True, True]
    assert not queue.put(KEY_B, entry("b"))
    assert len(queue) == 3
    taken = queue.take()
    assert taken is not None  # one slot busy: room for one about to run, one waiting
    assert not queue.put(KEY_B, entry("b"))
    queue.release(taken)
    assert len(queue) == 2 and queue.slots_busy == 0
    assert queue.put(KEY_B, entry("b"))
    assert not queue.put(KEY_B, entry("b"))
    assert len(queue) == 3  # never more than max_waiting + slots


def test_a_queue_without_room_refuses_whenever_no_slot_is_free() -> None:
    queue = _FairQueue(max_waiting=0)
    first = entry("first")
    assert queue.put(KEY_A, first)  # the free slot takes it
    assert not queue.put(KEY_B, entry("second"))  # it would wait
    taken = queue.take()
    assert taken is first
    assert not queue.put(KEY_B, entry("second"))  # the slot is busy
    queue.release(taken)
    assert queue.put(KEY_B, entry("second"))


def test_a_withdrawn_job_is_never_taken_and_a_taken_one_cannot_be_withdrawn() -> None:
    queue = _FairQueue()
    a1, a2, b = entry("a1"), entry("a2"), entry("b")
    for lane, e in ((KEY_A, a1), (KEY_A, a2), (KEY_B, b)):
        queue.put(lane, e)
    assert queue.withdraw(a2)
    assert not queue.withdraw(a2)  # once
    taken = queue.take()
    assert taken is a1
    assert not queue.withdraw(a1)  # it runs
    queue.release(a1)
    assert queue.take() is b
    assert queue.withdraw(entry("never queued")) is False
    assert len(queue) == 0


def test_the_wait_in_the_queue_is_reported_per_lane() -> None:
    waits = Waits()
    queue = _FairQueue(observer=waits)
    queue.put(KEY_A, entry("a"))
    taken = queue.take()
    assert taken is not None
    assert len(waits.waits) == 1
    seconds, lane = waits.waits[0]
    assert lane == "key:a" and seconds >= 0


def test_wait_blocks_until_a_job_may_be_taken_or_the_queue_stops() -> None:
    queue = _FairQueue()
    seen: list[bool] = []
    started = threading.Event()

    def waiter() -> None:
        started.set()
        seen.append(queue.wait())

    t = threading.Thread(target=waiter)
    t.start()
    started.wait(10)
    queue.put(KEY_A, entry("a"))
    t.join(10)
    assert seen == [True]
    busy = queue.take()
    assert busy is not None
    # A job waits behind the busy slot; stopping does not end `wait` while one is left.
    queue.put(KEY_B, entry("b"))
    queue.stop()
    assert not queue.finished
    released: list[bool] = []
    t2 = threading.Thread(target=lambda: released.append(queue.wait()))
    t2.start()
    queue.release(busy)
    t2.join(10)
    assert released == [True]
    last = queue.take()
    assert last is not None
    queue.release(last)
    assert queue.finished
    assert not queue.wait()
    assert queue.get() is None


def test_get_serves_one_slot_at_a_time_across_threads() -> None:
    queue = _FairQueue()
    log: list[str] = []
    for i in range(20):
        queue.put(KEY_A if i % 2 else KEY_B, entry(str(i), log))
    queue.stop()
    inside = 0
    most = 0
    lock = threading.Lock()

    def serve() -> None:
        nonlocal inside, most
        while (e := queue.get()) is not None:
            with lock:
                inside += 1
                most = max(most, inside)
            e.job()
            with lock:
                inside -= 1
            queue.release(e)

    threads = [threading.Thread(target=serve) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(log, key=int) == [str(i) for i in range(20)]
    assert most == 1
