"""Serving under load: bounded work in flight and dynamic batching, for the search page and the MLflow pyfunc.

- `WorkLimit(capacity, queue)`: a budget of `capacity` units held while work runs (the servers count pixels: a
  decode holds its image's width x height); up to `queue` more requests wait for room (each at most `timeout`
  seconds); anything beyond is refused at once with `Overloaded`, which the servers answer as HTTP 503 with
  `Retry-After`. Decode memory is then bounded by the budget, whatever the number of clients (FastAPI's thread pool
  alone would let 40 decodes run at once).
- `DynamicBatcher(fn, max_batch, window_s, streams)`: concurrent callers' inputs are stacked and run through `fn`
  (the encoder) together: the first item of a batch waits at most `window_s` for company, then the batch runs on one
  of `streams` worker threads. On a CPU or GPU an encoder's images/s grows with the batch, so under load the server
  approaches the batched encoder's throughput instead of running batches of one (as Triton's dynamic batcher,
  TorchServe's batch aggregation and Ray Serve's `@serve.batch` do). With two streams one batch gathers while the
  other runs, and on a CPU two streams of half the cores each (`on_start` sets a stream's torch threads) beat one
  stream over all of them: measured on 2 cores, two 1-thread streams embed ≈ 1.5x the images/s of one 2-thread
  stream (`benchmarks/search_load.py` prints both ceilings), as Triton's CPU instance groups and TorchServe's
  one-thread workers do.

Pure threading: no web framework, no torch (the batched function brings its own).
"""

from __future__ import annotations

import functools
import queue as queue_module
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence


class Overloaded(Exception):
    """The server has no slot and no room in its wait queue for this request: retry later (HTTP 503)."""


class WorkLimit:
    """A counting semaphore with a bounded wait queue (see the module doc)."""

    def __init__(self, capacity: int, queue: int, timeout: float = 30.0):
        if capacity < 1 or queue < 0:
            raise ValueError(f"capacity must be >= 1 and queue >= 0, got {capacity}, {queue}")
        self.capacity, self.queue, self.timeout = capacity, queue, timeout
        self._used = 0
        self._waiting = 0
        self._cond = threading.Condition()

    @property
    def in_flight(self) -> int:
        return self._used

    @property
    def waiting(self) -> int:
        return self._waiting

    @contextmanager
    def acquire(self, n: int = 1) -> Iterator[None]:
        """Hold `n` units (at most `capacity`) for the block; Overloaded when the queue is full or the wait times out."""
        n = max(1, min(n, self.capacity))
        with self._cond:
            if self._used + n > self.capacity:
                if self._waiting >= self.queue:
                    raise Overloaded(f"{self._used} units in flight and {self._waiting} requests waiting "
                                     f"(limits {self.capacity} and {self.queue})")
                self._waiting += 1
                try:
                    free = self._cond.wait_for(lambda: self._used + n <= self.capacity, self.timeout)
                finally:
                    self._waiting -= 1
                if not free:
                    raise Overloaded(f"no slot freed within {self.timeout:g} s")
            self._used += n
        try:
            yield
        finally:
            with self._cond:
                self._used -= n
                self._cond.notify_all()


def release_freed_memory() -> bool:
    """glibc only: hand the free memory of every malloc arena back to the OS (`malloc_trim(0)`). A large decode's
    image blocks (Pillow allocates an image as blocks of up to 16 MB) are freed when the request ends, but they stay
    in the malloc arena of the thread that decoded them, so a server whose many decode threads each once held a large
    upload keeps their sum (issue 30: 1.85 GiB above idle under 96 uploads of 49 MP). Called after each large decode
    (`query_image.query_pixels`); a few ms against the seconds of such a decode, and nothing for small queries, whose
    allocations (and the encoder's) keep glibc's fast path. Returns whether it ran (False elsewhere)."""
    import sys

    if not sys.platform.startswith("linux"):
        return False
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0) >= 0)


@functools.cache
def _glibc():
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 (musl and others have no malloc_trim)
    except (OSError, AttributeError):
        return None
    return libc


def low_priority_executor(threads: int, niceness: int = 10, name: str = "low-priority"):
    """A thread pool whose threads run at a lower OS scheduling priority (Linux: `niceness` added to each thread's
    nice value, which Linux keeps per thread), for long CPU work that must not slow the short requests beside it:
    their threads keep the normal priority and the scheduler gives them the cores first. The work's C parts (PIL
    decoders, numpy) release the GIL, so the priority is what decides. Elsewhere the threads run at the normal
    priority (no per-thread nice value to set)."""
    import os
    import sys
    from concurrent.futures import ThreadPoolExecutor

    def lower_priority() -> None:
        if sys.platform.startswith("linux"):
            try:
                tid = threading.get_native_id()
                os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + niceness))
            except OSError:  # a sandbox that forbids it: run at the normal priority
                pass

    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name, initializer=lower_priority)


class DynamicBatcher:
    """Runs `fn(list_of_items) -> list_of_results` on `streams` worker threads over batches gathered from concurrent
    `submit` calls: up to `max_batch` items, the first waiting at most `window_s` for others. `on_start`, when given,
    runs first in each worker thread (e.g. to set that thread's torch threads)."""

    def __init__(self, fn: Callable[[list[Any]], Sequence[Any]], max_batch: int = 32, window_s: float = 0.005,
                 name: str = "hmpcl-batcher", streams: int = 1, on_start: Callable[[], None] | None = None):
        if max_batch < 1 or window_s < 0 or streams < 1:
            raise ValueError(f"max_batch and streams must be >= 1 and window_s >= 0, got {max_batch}, {streams}, "
                             f"{window_s}")
        self.fn, self.max_batch, self.window_s, self.on_start = fn, max_batch, window_s, on_start
        self._items: queue_module.Queue = queue_module.Queue()
        self._closed = False
        self._count = threading.Lock()
        self.batches = 0  # how many times fn ran, and over how many items: for tests and metrics
        self.items = 0
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(streams)]
        for thread in self._threads:
            thread.start()

    def submit(self, item: Any) -> Future:
        """Queue one item; the future resolves to fn's result for it (or fn's exception)."""
        if self._closed:
            raise RuntimeError("the batcher is closed")
        future: Future = Future()
        self._items.put((item, future))
        return future

    def __call__(self, item: Any, timeout: float | None = None) -> Any:
        return self.submit(item).result(timeout)

    def close(self) -> None:
        """Finish what is queued, then stop the worker threads."""
        self._closed = True
        self._items.put(None)  # each worker passes the stop signal on before it returns
        for thread in self._threads:
            thread.join()

    def _gather(self, first) -> list:
        """`first` plus whatever arrives within the window from now (or is already queued), up to max_batch."""
        batch, deadline = [first], time.monotonic() + self.window_s
        while len(batch) < self.max_batch:
            try:
                nxt = self._items.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue_module.Empty:
                break
            if nxt is None:  # closing: run this batch, then let the loop see the stop signal
                self._items.put(None)
                break
            batch.append(nxt)
        return batch

    def _run(self) -> None:
        if self.on_start is not None:
            self.on_start()
        while True:
            first = self._items.get()
            if first is None:
                self._items.put(None)  # for the next worker
                return
            batch = self._gather(first)
            items = [item for item, _ in batch]
            try:
                results = list(self.fn(items))
                if len(results) != len(items):
                    raise RuntimeError(f"batched function gave {len(results)} results for {len(items)} items")
            except BaseException as exc:  # noqa: BLE001 - every caller gets the failure
                results, failure = None, exc
            with self._count:  # counted before any caller wakes: whoever has a result sees its batch counted
                self.batches += 1
                self.items += len(items)
            for i, (_, future) in enumerate(batch):
                if results is None:
                    future.set_exception(failure)
                else:
                    future.set_result(results[i])
