"""A pool of math-verify worker processes with a hard per-call time limit.

Why not ``concurrent.futures.ProcessPoolExecutor``: a future that times out keeps its worker busy forever (sympy
in a C-level big-integer loop cannot be interrupted), one crashed worker breaks the whole executor, and
math-verify's own timeout (``signal.alarm``) raises outside the main thread. Here every call owns one worker for its
duration; on timeout that worker is killed and a fresh one started, on a crash it is replaced, and after a fork the
child builds its own pool. Workers are fresh interpreters (``python aent/reward/_worker.py``), so they work the
same from Ray actors, daemon processes, threads and scripts without a ``__main__`` guard.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import List, Optional, Tuple

logger = logging.getLogger(__name__)

WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_worker.py")

# Outcomes of :meth:`VerifyPool.verify` besides the worker's own verdicts.
TIMEOUT = "timeout"
CRASHED = "crashed"


class _Worker:
    """One worker process and its two pipe ends. Used by one calling thread at a time."""

    def __init__(self, startup_timeout: float):
        self.startup_timeout = startup_timeout
        self.proc = subprocess.Popen(
            [sys.executable, WORKER_SCRIPT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        self._send = Connection(os.dup(self.proc.stdin.fileno()), readable=False)
        self._recv = Connection(os.dup(self.proc.stdout.fileno()), writable=False)
        self.proc.stdin.close()
        self.proc.stdout.close()
        self.ready = False
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self) -> None:
        """Block until the worker has imported math-verify; raise RuntimeError if it dies or takes too long."""
        if self.ready:
            return
        remaining = self.startup_timeout - (time.monotonic() - self.started_at)
        if not self._recv.poll(max(remaining, 0.0)):
            raise RuntimeError(
                f"math-verify worker (pid {self.pid}) did not start within {self.startup_timeout:.0f} s; "
                "is math-verify installed (pip install 'aent[math]')? Raise AENT_REWARD_STARTUP_TIMEOUT on a busy host."
            )
        try:
            message = self._recv.recv()
        except (EOFError, OSError):
            code = self.proc.wait(timeout=5)
            raise RuntimeError(
                f"math-verify worker (pid {self.pid}) exited with code {code} while starting (its error is printed "
                f"above); is math-verify installed in {sys.executable} (pip install 'aent[math]')?"
            ) from None
        if not (isinstance(message, tuple) and message[0] == "ready"):
            raise RuntimeError(f"math-verify worker (pid {self.pid}) sent {message!r} instead of its ready message")
        self.ready = True

    def request(self, request_id: int, gold: str, prediction: str, timeout: float) -> Tuple[str, str]:
        """(verdict, detail). Raises TimeoutError after ``timeout`` seconds, EOFError/OSError if the worker died."""
        self._send.send((request_id, gold, prediction))
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._recv.poll(remaining):
                raise TimeoutError
            reply_id, verdict, detail = self._recv.recv()
            if reply_id == request_id:  # an older reply can only exist if a caller gave up; skip it
                return verdict, detail

    def kill(self) -> None:
        for conn in (self._send, self._recv):
            try:
                conn.close()
            except OSError:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL not delivered within 5 s
            logger.warning("math-verify worker pid %d did not exit after SIGKILL", self.pid)


class VerifyPool:
    """``num_workers`` math-verify processes shared by any number of threads.

    :meth:`verify` blocks the calling thread until a worker is free, then for at most ``timeout`` seconds of
    checking (start-up of a fresh worker is not counted against it).
    """

    def __init__(self, num_workers: int, startup_timeout: float = 120.0):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers} (set AENT_REWARD_WORKERS to a positive int)")
        self.num_workers = num_workers
        self.startup_timeout = startup_timeout
        self.owner_pid = os.getpid()
        # Slots hold a live worker or None (start one on first use). Queue gives thread-safe hand-over.
        self._slots: queue.LifoQueue[Optional[_Worker]] = queue.LifoQueue()
        for _ in range(num_workers):
            self._slots.put(None)
        self._request_ids = itertools.count()
        self._lock = threading.Lock()
        self._live: List[_Worker] = []
        self._closed = False
        self.restarts = 0  # workers killed for a timeout or found dead; read by tests and benchmarks

    def _new_worker(self) -> _Worker:
        worker = _Worker(self.startup_timeout)
        with self._lock:
            self._live.append(worker)
        return worker

    def _discard(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            if worker in self._live:
                self._live.remove(worker)
            self.restarts += 1

    def worker_pids(self) -> List[int]:
        with self._lock:
            return [w.pid for w in self._live]

    def warmup(self) -> None:
        """Start every worker and wait until each has imported math-verify."""
        taken = [self._slots.get() for _ in range(self.num_workers)]
        try:
            for i, worker in enumerate(taken):
                if worker is None:
                    taken[i] = worker = self._new_worker()
            for worker in taken:
                worker.wait_ready()
        finally:
            for worker in taken:
                self._slots.put(worker)

    def verify(self, gold: str, prediction: Optional[str], timeout: float) -> Tuple[str, str]:
        """(verdict, detail): verdict is the worker's ("correct", "wrong", "parse_error", "gold_parse_error",
        "error"), or TIMEOUT, or CRASHED (the worker died twice in a row on this input). With ``prediction`` None,
        only checks that ``gold`` parses: "parsed" or "parse_error"."""
        if self._closed:
            raise RuntimeError("the math-verify pool was shut down")
        worker = self._slots.get()
        try:
            for attempt in range(2):
                if worker is None:
                    worker = self._new_worker()
                try:
                    worker.wait_ready()
                except RuntimeError:
                    self._discard(worker)
                    worker = None
                    raise  # a setup problem (math-verify missing, host overloaded): fail loudly, never score 0
                try:
                    return worker.request(next(self._request_ids), gold, prediction, timeout)
                except TimeoutError:
                    self._discard(worker)
                    worker = None
                    return TIMEOUT, f"no verdict within {timeout:g} s; worker restarted"
                except (EOFError, OSError):
                    # The worker died (killed by the OS, out of memory, a crash in a C extension).
                    code = worker.proc.poll()
                    self._discard(worker)
                    worker = None
                    if attempt == 1:
                        return CRASHED, f"worker exited with code {code} twice on this input"
                    logger.warning("math-verify worker exited with code %s; starting a new one and retrying", code)
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            # Start the replacement now so its start-up overlaps with other work.
            if worker is None and not self._closed:
                try:
                    worker = self._new_worker()
                except OSError as exc:  # e.g. out of processes: the next caller tries again
                    logger.warning("could not start a math-verify worker: %s", exc)
                    worker = None
            self._slots.put(worker)

    def close(self) -> None:
        self._closed = True
        with self._lock:
            workers, self._live = list(self._live), []
        if os.getpid() != self.owner_pid:
            return  # after a fork, the workers belong to the parent
        for worker in workers:
            worker.kill()


_pool: Optional[VerifyPool] = None
_pool_lock = threading.Lock()


def default_num_workers() -> int:
    value = os.environ.get("AENT_REWARD_WORKERS")
    if value:
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"AENT_REWARD_WORKERS must be an integer, got {value!r}") from None
    return max(1, min(4, os.cpu_count() or 1))


def get_pool() -> VerifyPool:
    """The process-wide pool, created on first use (and again in a forked child)."""
    global _pool
    pool = _pool
    if pool is not None and pool.owner_pid == os.getpid() and not pool._closed:
        return pool
    with _pool_lock:
        if _pool is None or _pool.owner_pid != os.getpid() or _pool._closed:
            startup = float(os.environ.get("AENT_REWARD_STARTUP_TIMEOUT", "120"))
            _pool = VerifyPool(default_num_workers(), startup_timeout=startup)
        return _pool


def shutdown() -> None:
    """Stop the worker processes (they are also stopped at interpreter exit). The next call starts new ones."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.close()


atexit.register(shutdown)
