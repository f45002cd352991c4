"""What every counter store does, the same way: memory, SQLite, PostgreSQL and Redis.

Each test runs once per store, on counts of its own. The clock is an explicit ``now``.
"""

from __future__ import annotations

import multiprocessing
import threading
from decimal import Decimal

import pytest

from pdp.counters import BUCKETS, FITS, Charge, CounterError, Tally
from tests.counters.workers import NOW, Place, hammer, hammer_in_process

WINDOW = 60.0  # seconds; one bucket is WINDOW / BUCKETS = 1 s


def calls(key: str = "calls/agent-1", cap: int = 3, amount: int = 1) -> Charge:
    return Charge(key=key, subject="agent-1", window=WINDOW, amount=amount, cap=cap)


def spend(amount: str, cap: str = "5005.00", key: str = "spend/usd/agent-1") -> Charge:
    return Charge(
        key=key, subject="agent-1", window=86_400.0, amount=Decimal(amount), cap=Decimal(cap)
    )


def test_a_charge_that_fits_is_recorded(where: Place) -> None:
    store = where.open()
    assert store.charge((calls(),), NOW) == FITS
    assert store.usage(calls(), NOW) == 1


def test_a_charge_over_its_cap_is_refused_and_not_recorded(where: Place) -> None:
    store = where.open()
    assert store.charge((calls(amount=2),), NOW) == FITS
    assert store.charge((calls(amount=2),), NOW) == 0
    assert store.usage(calls(), NOW) == 2
    assert store.charge((calls(amount=1),), NOW) == FITS  # exactly the cap still fits
    assert store.usage(calls(), NOW) == 3


def test_the_answer_names_the_first_charge_that_does_not_fit(where: Place) -> None:
    store = where.open()
    fits, over, also_over = calls("a/agent-1"), calls("b/agent-1", cap=0), calls("c/agent-1", cap=0)
    assert store.charge((fits, over, also_over), NOW) == 1
    assert store.charge((fits, fits, also_over), NOW) == 2


def test_nothing_is_recorded_when_one_charge_does_not_fit(where: Place) -> None:
    store = where.open()
    first, second = calls("a/agent-1"), calls("b/agent-1", amount=5)
    assert store.charge((first, second), NOW) == 1
    assert store.usage(first, NOW) == 0
    assert store.usage(second, NOW) == 0


def test_two_charges_on_one_key_each_count(where: Place) -> None:
    store = where.open()
    assert store.charge((calls(), calls()), NOW) == FITS
    assert store.usage(calls(), NOW) == 2


def test_a_tally_tells_what_each_key_held_before_the_call(where: Place) -> None:
    store = where.open()
    assert store.tally((calls(amount=2),), NOW) == Tally(FITS, (0,))
    assert store.tally((calls(amount=2),), NOW) == Tally(0, (2,))  # over: 2 + 2 > 3
    assert store.tally((calls(),), NOW) == Tally(FITS, (2,))
    assert store.usage(calls(), NOW) == 3


def test_a_tally_reads_up_to_the_first_charge_that_does_not_fit(where: Place) -> None:
    store = where.open()
    first, full, last = calls("a/agent-1"), calls("b/agent-1", cap=0), calls("c/agent-1")
    assert store.tally((first, full, last), NOW) == Tally(1, (0, 0))
    assert store.tally((first, last), NOW, record=False) == Tally(FITS, (0, 0))


def test_a_tally_of_money_is_exact_and_a_retry_reads_nothing(where: Place) -> None:
    store = where.open()
    assert store.tally((spend("100.10"),), NOW, once="call-1") == Tally(FITS, (0,))
    assert store.tally((spend("100.10"),), NOW, once="call-1") == Tally(FITS, ())
    assert store.tally((spend("0.05"),), NOW) == Tally(FITS, (Decimal("100.10"),))
    assert store.tally((), NOW) == Tally(FITS, ())


def test_a_check_without_record_records_nothing(where: Place) -> None:
    store = where.open()
    assert store.charge((calls(),), NOW, record=False) == FITS
    assert store.usage(calls(), NOW) == 0
    assert store.charge((calls(amount=4),), NOW, record=False) == 0


def test_the_window_slides_by_buckets(where: Place) -> None:
    store = where.open()
    assert store.charge((calls(cap=1),), NOW) == FITS
    assert store.charge((calls(cap=1),), NOW + WINDOW - 0.5) == 0  # the same window
    assert store.usage(calls(), NOW + WINDOW - 0.5) == 1
    later = NOW + WINDOW  # the bucket of NOW has left the window
    assert store.usage(calls(), later) == 0
    assert store.charge((calls(cap=1),), later) == FITS
    assert store.usage(calls(), later) == 1


def test_usage_adds_the_buckets_of_the_window(where: Place) -> None:
    store = where.open()
    step = WINDOW / BUCKETS
    for i in range(5):
        assert store.charge((calls(cap=10),), NOW + i * step) == FITS
    assert store.usage(calls(), NOW + 4 * step) == 5
    assert store.usage(calls(), NOW + WINDOW + 2 * step) == 2  # the first three left


def test_a_retry_with_the_same_once_is_recorded_once(where: Place) -> None:
    store = where.open()
    assert store.charge((calls(),), NOW, once="call-1") == FITS
    assert store.charge((calls(),), NOW, once="call-1") == FITS
    assert store.usage(calls(), NOW) == 1


def test_the_same_once_for_other_charges_is_a_new_charge(where: Place) -> None:
    store = where.open()
    assert store.charge((calls(),), NOW, once="call-1") == FITS
    assert store.charge((calls(amount=2),), NOW, once="call-1") == FITS
    assert store.usage(calls(), NOW) == 3
    assert store.charge((calls(),), NOW, once="call-2") == 0  # a new call, over the cap


def test_a_refused_charge_leaves_no_once_record(where: Place) -> None:
    store = where.open()
    assert store.charge((calls(amount=5),), NOW, once="call-1") == 0
    assert store.charge((calls(amount=5, cap=5),), NOW, once="call-1") == FITS
    assert store.usage(calls(), NOW) == 5


def test_money_sums_exactly(where: Place) -> None:
    store = where.open()
    fitted = sum(store.charge((spend("100.10"),), NOW) == FITS for _ in range(51))
    assert fitted == 50
    assert store.usage(spend("100.10"), NOW) == Decimal("5005.00")


def test_cents_that_floats_would_drift_on_sum_exactly(where: Place) -> None:
    store = where.open()
    for _ in range(10):
        assert store.charge((spend("0.10", cap="1.00"),), NOW) == FITS
    assert store.charge((spend("0.01", cap="1.00"),), NOW) == 0
    assert store.usage(spend("0.10"), NOW) == Decimal("1.00")


def test_counts_stay_whole_numbers(where: Place) -> None:
    store = where.open()
    store.charge((calls(),), NOW)
    used = store.usage(calls(), NOW)
    assert used == 1
    assert isinstance(used, int)


def test_an_unknown_key_has_used_nothing(where: Place) -> None:
    assert where.open().usage(calls("never/agent-1"), NOW) == 0


def test_no_charges_fit(where: Place) -> None:
    assert where.open().charge((), NOW) == FITS


def test_keys_count_apart(where: Place) -> None:
    store = where.open()
    store.charge((calls("a/agent-1", cap=1),), NOW)
    assert store.charge((calls("a/agent-1", cap=1),), NOW) == 0
    assert store.charge((calls("b/agent-1", cap=1),), NOW) == FITS


def test_threads_with_stores_of_their_own_never_overshoot(where: Place) -> None:
    where.open()  # memory's one store, before the threads share it
    charges = (spend("0.10", cap="3.00"),)
    start = threading.Barrier(4)
    fitted: list[int] = []
    threads = [
        threading.Thread(target=lambda: fitted.append(hammer(where, charges, 30, start)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sum(fitted) == 30
    assert where.open().usage(charges[0], NOW) == Decimal("3.00")


def test_processes_with_stores_of_their_own_never_overshoot(shared: Place) -> None:
    # Fresh interpreters, as with spawn (no connection or lock of this process copied),
    # but forked from one server that imported the stores once: fast to start.
    spawn = multiprocessing.get_context("forkserver")
    spawn.set_forkserver_preload(["tests.counters.workers"])
    charges = (spend("0.10", cap="3.00"),)
    start, out = spawn.Barrier(3), spawn.Queue()
    workers = [
        spawn.Process(target=hammer_in_process, args=(shared, charges, 30, start, out))
        for _ in range(3)
    ]
    for worker in workers:
        worker.start()
    fitted = [out.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    assert sum(fitted) == 30
    assert shared.open().usage(charges[0], NOW) == Decimal("3.00")


def test_a_cap_a_shared_store_cannot_count_exactly_is_refused(shared: Place) -> None:
    store = shared.open()
    with pytest.raises(CounterError, match="largest"):
        store.charge((calls(cap=10**12),), NOW)
    assert store.charge((calls(),), NOW) == FITS  # the store itself is fine


def test_an_amount_finer_than_a_ten_thousandth_is_rounded_up(shared: Place) -> None:
    store = shared.open()
    tiny = spend("0.00001", cap="0.0002")
    assert store.charge((tiny,), NOW) == FITS
    assert store.usage(tiny, NOW) == Decimal("0.0001")
    assert store.charge((tiny,), NOW) == FITS
    assert store.charge((tiny,), NOW) == 0  # 0.0003 > 0.0002


def test_another_store_object_sees_the_same_counts(shared: Place) -> None:
    assert shared.open().charge((calls(cap=1),), NOW) == FITS
    assert shared.open().charge((calls(cap=1),), NOW) == 0
