"""The circuit breaker per peer (node/breaker.py), on a clock the test moves: when it
opens, how long it stays open, what a probe and a half-open call do, and which failures
count."""

from __future__ import annotations

from consortium.node.breaker import BreakerSettings, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(failures: int = 2) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    return CircuitBreaker(BreakerSettings(failures, 1.0, 8.0), clock), clock


def test_connection_failures_in_a_row_open_it_and_a_success_in_between_does_not() -> None:
    b, _ = breaker()
    assert not b.failed("unreachable", conn=0)
    b.succeeded(conn=1)
    assert not b.failed("unreachable", conn=1)
    assert b.available()
    assert b.failed("unreachable", conn=2)
    assert (b.state, b.available()) == ("open", False)


def test_one_timeout_opens_it() -> None:
    b, _ = breaker(failures=5)
    assert b.failed("timeout", conn=0)
    assert b.state == "open"


def test_one_broken_connection_counts_once() -> None:
    """Every call a reset connection carried fails at once: one failure, not many."""
    b, _ = breaker()
    for _ in range(10):
        b.failed("unreachable", conn=3)
    assert b.state == "closed"
    b.succeeded(conn=4)
    assert not b.failed("unreachable", conn=3)  # counted already
    assert b.state == "closed"


def test_a_timeout_counts_though_another_connection_succeeded_since() -> None:
    """A peer has a connection per kind of call: the streamed one timing out in a
    partition right after the other answered (a background call) opens the circuit."""
    b, _ = breaker()
    b.succeeded(conn=9)  # the non-streamed connection, opened later
    assert b.failed("timeout", conn=5)
    assert b.state == "open"


def test_answers_that_are_not_connection_failures_are_not_counted() -> None:
    b, _ = breaker(failures=1)
    for failure in ("busy", "no_reply", "circuit_open", ""):
        assert not b.failed(failure, conn=1)
    assert b.state == "closed"


def test_open_then_probe_then_half_open_then_closed() -> None:
    b, clock = breaker()
    b.failed("timeout", conn=0)
    assert b.retry_in() == 1.0 and not b.probe_due()
    clock.now += 1.0
    assert b.probe_due() and b.state == "probing" and not b.available()
    b.probed(connected=True)
    assert b.state == "half_open" and b.available()
    b.succeeded(conn=1)
    assert b.state == "closed" and b.available()


def test_failed_probes_and_half_open_calls_double_the_open_period_up_to_the_cap() -> None:
    b, clock = breaker()
    b.failed("timeout", conn=0)
    periods = []
    for _ in range(6):
        periods.append(b.retry_in())
        clock.now += b.retry_in()
        assert b.probe_due()
        b.probed(connected=False)
    assert periods == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    clock.now += b.retry_in()
    b.probe_due()
    b.probed(connected=True)
    assert b.failed("timeout", conn=5)  # a half-open call failed: open again, still long
    assert b.retry_in() == 8.0
    clock.now += 8.0
    b.probe_due()
    b.probed(connected=True)
    b.succeeded(conn=6)  # only a call that succeeds resets the period
    b.failed("timeout", conn=7)
    assert b.retry_in() == 1.0
