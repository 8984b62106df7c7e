"""hmpcl_lib.retrieval.batching: the decode budget with its bounded wait queue, and the dynamic batcher. Every test
waits on events or futures with generous deadlines: nothing depends on how fast the machine is."""

from __future__ import annotations

import threading

import pytest

from hmpcl_lib.retrieval.batching import DynamicBatcher, Overloaded, WorkLimit

DEADLINE = 60.0  # seconds a test may wait for another thread on a busy machine


def test_the_budget_admits_what_fits_queues_the_rest_and_refuses_beyond_the_queue():
    limit = WorkLimit(capacity=10, queue=1, timeout=DEADLINE)
    entered, release, done = threading.Event(), threading.Event(), threading.Event()
    with limit.acquire(6):
        with limit.acquire(4):  # fits beside the first: no wait
            assert limit.in_flight == 10

        def waiter():
            with limit.acquire(7):  # does not fit beside the 6 held: waits in the queue
                entered.set()
                release.wait(DEADLINE)
            done.set()

        thread = threading.Thread(target=waiter)
        thread.start()
        while limit.waiting != 1:  # the waiter is queued (poll: no timing assumption)
            assert thread.is_alive()
            threading.Event().wait(0.01)
        with pytest.raises(Overloaded, match="1 requests waiting"):  # the queue (1) is full: refused at once
            with limit.acquire(7):
                pass
        assert not entered.is_set()
    assert entered.wait(DEADLINE)  # the 6 went back: the waiter got its 7
    release.set()
    assert done.wait(DEADLINE)
    thread.join(DEADLINE)
    assert limit.in_flight == 0 and limit.waiting == 0


def test_a_request_larger_than_the_budget_takes_all_of_it_and_a_full_budget_times_out():
    limit = WorkLimit(capacity=10, queue=4, timeout=0.05)
    with limit.acquire(10**9):  # clamped to the capacity: an image at the pixel limit always fits alone
        assert limit.in_flight == 10
        with pytest.raises(Overloaded, match="no slot freed"):
            with limit.acquire(1):
                pass
    assert limit.in_flight == 0
    with pytest.raises(ValueError):
        WorkLimit(capacity=0, queue=1)


def test_concurrent_submissions_share_one_call_and_keep_their_order():
    started, release = threading.Event(), threading.Event()
    calls = []

    def double(items):
        calls.append(list(items))
        if len(calls) == 1:  # hold the first batch until everything else is queued behind it
            started.set()
            release.wait(DEADLINE)
        return [2 * x for x in items]

    batcher = DynamicBatcher(double, max_batch=8, window_s=0.0)
    try:
        first = batcher.submit(0)
        assert started.wait(DEADLINE)
        rest = [batcher.submit(i) for i in range(1, 12)]
        release.set()
        assert first.result(DEADLINE) == 0
        assert [f.result(DEADLINE) for f in rest] == [2 * i for i in range(1, 12)]
    finally:
        batcher.close()
    assert calls == [[0], list(range(1, 9)), list(range(9, 12))]  # 11 waiting items: batches of 8 and 3
    assert (batcher.batches, batcher.items) == (3, 12)


def test_a_failing_batch_fails_each_caller_and_the_batcher_goes_on():
    def fn(items):
        if "bad" in items:
            raise ValueError("cannot embed")
        return [x.upper() for x in items]

    batcher = DynamicBatcher(fn, max_batch=4, window_s=0.0)
    try:
        with pytest.raises(ValueError, match="cannot embed"):
            batcher("bad", timeout=DEADLINE)
        assert batcher("ok", timeout=DEADLINE) == "OK"
    finally:
        batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit("late")


def test_a_function_giving_the_wrong_number_of_results_is_an_error():
    batcher = DynamicBatcher(lambda items: [], max_batch=2, window_s=0.0)
    try:
        with pytest.raises(RuntimeError, match="0 results for 1 items"):
            batcher("x", timeout=DEADLINE)
    finally:
        batcher.close()


def test_two_streams_run_a_second_batch_while_the_first_is_held_and_each_runs_on_start():
    started, release = threading.Event(), threading.Event()
    threads_seen = set()
    lock = threading.Lock()

    def on_start():
        with lock:
            threads_seen.add(threading.current_thread().name)

    def fn(items):
        if items == ["hold"]:
            started.set()
            release.wait(DEADLINE)
        return items

    batcher = DynamicBatcher(fn, max_batch=4, window_s=0.0, streams=2, on_start=on_start, name="t")
    try:
        held = batcher.submit("hold")
        assert started.wait(DEADLINE)
        assert batcher("free", timeout=DEADLINE) == "free"  # the other stream answered while the first is held
        assert not held.done()
        release.set()
        assert held.result(DEADLINE) == "hold"
    finally:
        release.set()
        batcher.close()
    assert threads_seen == {"t-0", "t-1"}
    assert (batcher.batches, batcher.items) == (2, 2)
    with pytest.raises(ValueError):
        DynamicBatcher(fn, streams=0)
