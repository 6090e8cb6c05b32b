"""The expert store's reads, run in order of need on a few I/O threads, and preempted between chunks.

A thread pool runs reads first come, first served: a layer step's demand miss would wait behind the next
layer's prefetches, which were asked for earlier but are needed later. Here every read has a priority (smaller
first): demand reads go before prefetches, and prefetches go in the order their layers come and, within a
layer, in the router's order of confidence. A read is a generator that reads one chunk per step; after each
chunk the thread checks the queue, and when a more urgent read waits, the running one goes back into the queue
and the urgent one takes the thread: a demand read waits for at most one chunk of a prefetch, not for a whole
expert. A queued read can be moved up when it turns out to be needed now (`promote`), and cancelled while it
has not started (`cancel`): a prefetch the layer step did not use then costs nothing.

Two threads reach the disk's O_DIRECT rate here (TOOLCHAIN: no gain from more readers); more threads only
split the bandwidth between more reads, so each finishes later.
"""

from __future__ import annotations

import heapq
import threading
from concurrent.futures import Future
from typing import Any, Generator

Steps = Generator[None, None, Any]  # one chunk per step; the return value is the read's result


class _Job:
    __slots__ = ("future", "steps", "priority", "queued", "started")

    def __init__(self, steps: Steps, priority: tuple):
        self.future: Future = Future()
        self.steps = steps
        self.priority = priority
        self.queued = True  # in the heap, waiting for a thread
        self.started = False


class ReadQueue:
    def __init__(self, num_threads: int, name: str = "kimi-expert-io"):
        if num_threads < 1:
            raise ValueError(f"ReadQueue needs num_threads >= 1, got {num_threads}")
        self._heap: list[tuple[tuple, int, _Job]] = []  # stale entries (taken, cancelled, promoted) are skipped
        self._jobs: dict[Future, _Job] = {}  # unfinished jobs (queued or running) by their future
        self._cond = threading.Condition()
        self._count = 0
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(num_threads)]
        for t in self._threads:
            t.start()

    def submit(self, priority: tuple, steps: Steps) -> Future:
        job = _Job(steps, priority)
        with self._cond:
            if self._closed:
                raise RuntimeError("ReadQueue: submit after shutdown")
            self._jobs[job.future] = job
            self._push(job)
            self._cond.notify()
        return job.future

    def promote(self, future: Future, priority: tuple) -> bool:
        """Raise an unfinished read to `priority` if that is sooner (a running one is then preempted only by
        reads more urgent than that); False if it has finished."""
        with self._cond:
            job = self._jobs.get(future)
            if job is None:
                return False
            if priority < job.priority:
                job.priority = priority
                if job.queued:
                    self._push(job)  # the older heap entry no longer matches job.priority: skipped
            return True

    def cancel(self, future: Future) -> bool:
        """Cancel a read that has not started; False if it has (it then completes as usual)."""
        with self._cond:
            job = self._jobs.get(future)
            if job is None or job.started or not job.queued or not future.cancel():
                return False
            del self._jobs[future]
            job.queued = False
            job.steps.close()
            return True

    def queued(self) -> int:
        with self._cond:
            return sum(job.queued for job in self._jobs.values())

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking new reads; queued ones still run to the end, then the threads end."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if wait:
            for t in self._threads:
                t.join()

    # -- internals -----------------------------------------------------------------------------------------
    def _push(self, job: _Job) -> None:
        self._count += 1
        heapq.heappush(self._heap, (job.priority, self._count, job))

    def _top(self) -> _Job | None:
        """The most urgent queued job (dropping stale heap entries above it); called with the lock held."""
        heap = self._heap
        while heap:
            priority, _, job = heap[0]
            if job.queued and priority == job.priority:
                return job
            heapq.heappop(heap)
        return None

    def _take(self) -> _Job | None:
        with self._cond:
            while True:
                job = self._top()
                if job is not None:
                    heapq.heappop(self._heap)
                    job.queued = False
                    return job
                if self._closed:
                    return None
                self._cond.wait()

    def _work(self) -> None:
        while (job := self._take()) is not None:
            if not job.started:
                if not job.future.set_running_or_notify_cancel():
                    continue
                job.started = True
            while True:
                try:
                    next(job.steps)
                except StopIteration as stop:
                    self._finish(job)
                    job.future.set_result(stop.value)
                    break
                except BaseException as exc:  # delivered to every waiter, as a thread pool does
                    self._finish(job)
                    job.future.set_exception(exc)
                    break
                with self._cond:
                    top = self._top()
                    if top is not None and top.priority < job.priority:  # preempted: back in the queue
                        job.queued = True
                        self._push(job)
                        break

    def _finish(self, job: _Job) -> None:
        with self._cond:
            del self._jobs[job.future]
