"""Micro-batching: concurrent requests collected for a bounded wait, then handled in one call.

Requests arrive one by one (each HTTP request submits one); a worker thread takes the first
waiting request, keeps collecting until `max_wait_s` has passed since it arrived or `max_size`
requests are waiting, and hands the whole batch to `handler`, which sets each request's future.
A lone request therefore waits at most `max_wait_s`; under load one model call serves many.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

__all__ = ["MicroBatcher", "Pending"]

P = TypeVar("P")
R = TypeVar("R")


@dataclass
class Pending(Generic[P, R]):
    """One submitted request: its payload and the future its result goes to."""

    payload: P
    future: Future[R] = field(default_factory=Future)


class MicroBatcher(Generic[P, R]):
    """Collects submitted payloads into batches for `handler` (see the module docstring).

    `handler` receives the batch and must resolve every future (result or exception); a handler
    that raises fails the futures it left unresolved with that exception. `on_batch` (optional) is
    told each batch's size (metrics). The worker thread starts on the first `submit`."""

    def __init__(
        self,
        handler: Callable[[Sequence[Pending[P, R]]], None],
        *,
        max_wait_s: float = 0.002,
        max_size: int = 64,
        on_batch: Callable[[int], None] | None = None,
        name: str = "dynrec-batcher",
    ) -> None:
        self.handler = handler
        self.max_wait_s = max(0.0, float(max_wait_s))
        self.max_size = max(1, int(max_size))
        self.on_batch = on_batch
        self.name = name
        self._queue: queue.SimpleQueue[Pending[P, R] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._stopped = False

    def submit(self, payload: P) -> Future[R]:
        """Queue `payload`; the future resolves once its batch has been handled."""
        if self._stopped:
            raise RuntimeError("the micro-batcher is stopped")
        self._ensure_started()
        p: Pending[P, R] = Pending(payload)
        self._queue.put(p)
        return p.future

    def _ensure_started(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Handle what is queued, then end the worker thread."""
        self._stopped = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.max_wait_s
            stop = False
            while len(batch) < self.max_size:
                left = deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._handle(batch)
            if stop:
                return

    def _handle(self, batch: list[Pending[P, R]]) -> None:
        if self.on_batch is not None:
            self.on_batch(len(batch))
        try:
            self.handler(batch)
        except BaseException as exc:  # a bug in the handler must not strand the waiting requests
            log.exception("micro-batch handler failed")
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
