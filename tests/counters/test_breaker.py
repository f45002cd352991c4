"""The circuit breaker: a failed store fails fast for its back-off, then tries once more."""

from __future__ import annotations

import pytest

from pdp.counters import CounterError
from pdp.counters.breaker import Breaker, CounterBusy


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Server:
    """Answers, or fails, as the test says; counts what reached it."""

    def __init__(self) -> None:
        self.down = False
        self.asked = 0

    def ask(self) -> str:
        self.asked += 1
        if self.down:
            raise CounterError("the server is down")
        return "answer"


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_a_closed_breaker_passes_calls_through(clock: Clock) -> None:
    breaker, server = Breaker("store", 1.0, clock), Server()
    assert breaker.call(server.ask) == "answer"
    assert (server.asked, breaker.errors, breaker.open) == (1, 0, False)


def test_a_failure_opens_it_and_calls_fail_fast_without_asking(clock: Clock) -> None:
    breaker, server = Breaker("the Redis counter store", 1.0, clock), Server()
    server.down = True
    with pytest.raises(CounterError, match="the server is down"):
        breaker.call(server.ask)
    clock.now += 0.5
    with pytest.raises(CounterError, match=r"the Redis counter store .*0\.50 s"):
        breaker.call(server.ask)
    assert (server.asked, breaker.errors, breaker.rejected, breaker.open) == (1, 1, 1, True)


def test_after_the_back_off_one_call_tries_and_its_success_closes_it(clock: Clock) -> None:
    breaker, server = Breaker("store", 1.0, clock), Server()
    server.down = True
    with pytest.raises(CounterError):
        breaker.call(server.ask)
    server.down = False
    clock.now += 1.0
    assert breaker.call(server.ask) == "answer"
    assert breaker.call(server.ask) == "answer"
    assert (server.asked, breaker.open) == (3, False)


def test_a_failed_trial_opens_it_for_another_back_off(clock: Clock) -> None:
    breaker, server = Breaker("store", 1.0, clock), Server()
    server.down = True
    for _ in range(2):
        with pytest.raises(CounterError):
            breaker.call(server.ask)
        clock.now += 1.0
    clock.now -= 0.5
    with pytest.raises(CounterError):
        breaker.call(server.ask)
    assert (server.asked, breaker.errors, breaker.rejected) == (2, 2, 1)


def test_while_a_trial_runs_other_calls_fail_fast(clock: Clock) -> None:
    breaker, server = Breaker("store", 1.0, clock), Server()
    server.down = True
    with pytest.raises(CounterError):
        breaker.call(server.ask)
    clock.now += 1.0
    server.down = False

    def trial() -> str:
        with pytest.raises(CounterError, match="not asked again"):
            breaker.call(server.ask)  # another caller, during the trial
        return server.ask()

    assert breaker.call(trial) == "answer"
    assert (server.asked, breaker.rejected, breaker.open) == (2, 1, False)


def test_a_busy_process_does_not_open_it(clock: Clock) -> None:
    breaker = Breaker("store", 1.0, clock)

    def busy() -> str:
        raise CounterBusy("every connection is in use")

    with pytest.raises(CounterBusy):
        breaker.call(busy)
    assert (breaker.errors, breaker.open) == (1, False)
