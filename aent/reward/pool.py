"""A pool of math-verify worker processes with a hard per-call time limit.

Why not ``concurrent.futures.ProcessPoolExecutor``: a future that times out keeps its worker busy forever (sympy
in a C-level big-integer loop cannot be interrupted), one crashed worker breaks the whole executor, and
math-verify's own timeout (``signal.alarm``) raises outside the main thread. Here every call owns one worker for its
duration; on timeout that worker is killed and the call returns at once, the next call takes a warm spare, and a
background thread reaps the dead worker and starts its replacement. After a fork the child builds its own pool. Workers are fresh interpreters (``python aent/reward/_worker.py``), so they work the
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

    def kill_nowait(self) -> None:
        """Close the pipes and send SIGKILL; returns at once (see :meth:`reap`)."""
        for conn in (self._send, self._recv):
            try:
                conn.close()
            except OSError:
                pass
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except OSError:
                pass

    def reap(self) -> None:
        """Wait for the killed process to exit (no zombie left behind)."""
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL not delivered within 5 s
            logger.warning("math-verify worker pid %d did not exit after SIGKILL", self.pid)


class VerifyPool:
    """``num_workers`` concurrent math-verify checks, shared by any number of threads, plus warm spare workers.

    :meth:`verify` blocks the calling thread until one of the ``num_workers`` slots is free, takes a worker that has
    already started, and waits at most ``timeout`` seconds for its verdict. A worker that times out or dies is killed
    and handed to a background thread, which reaps it and starts its replacement; the caller returns at once, and the
    next caller takes one of the ``spares`` idle workers instead of waiting for a start-up. Start-up of a fresh
    worker is never counted against ``timeout``.
    """

    def __init__(self, num_workers: int, startup_timeout: float = 120.0, spares: int = 1):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers} (set AENT_REWARD_WORKERS to a positive int)")
        if spares < 0:
            raise ValueError(f"spares must be >= 0, got {spares}")
        self.num_workers = num_workers
        self.spares = spares
        self.startup_timeout = startup_timeout
        self.owner_pid = os.getpid()
        self._slots = threading.BoundedSemaphore(num_workers)
        self._ready: queue.LifoQueue[_Worker] = queue.LifoQueue()  # started and idle
        self._cond = threading.Condition()
        self._live: List[_Worker] = []  # starting, idle and busy
        self._dead: List[_Worker] = []  # killed, to be reaped by the spawner thread
        self._spawner: Optional[threading.Thread] = None
        self._startup_error: Optional[str] = None
        self._request_ids = itertools.count()
        self._closed = False
        self.restarts = 0  # workers killed for a timeout or found dead; read by tests and benchmarks
        self.spawns = 0  # workers started, first ones included

    @property
    def target(self) -> int:
        """Workers kept alive: one per slot plus the spares."""
        return self.num_workers + self.spares

    # -- the background thread: reap killed workers, keep ``target`` workers alive --------------------------------

    def _ensure_started(self) -> None:
        with self._cond:
            if self._startup_error is not None:
                self._startup_error = None  # a new call retries a failed start-up
                self._cond.notify_all()
            if self._spawner is None and not self._closed:
                self._spawner = threading.Thread(target=self._spawn_loop, name="aent-reward-spawner", daemon=True)
                self._spawner.start()

    def _spawn_loop(self) -> None:
        while True:
            with self._cond:
                while (
                    not self._closed
                    and not self._dead
                    and (self._startup_error is not None or len(self._live) >= self.target)
                ):
                    self._cond.wait()
                if self._closed:
                    return
                dead, self._dead = self._dead, []
                missing = 0 if self._startup_error is not None else self.target - len(self._live)
            for worker in dead:
                worker.reap()
            started = []
            for _ in range(max(missing, 0)):
                try:
                    worker = _Worker(self.startup_timeout)
                except OSError as exc:  # e.g. out of processes
                    self._fail(f"could not start a math-verify worker: {exc}")
                    break
                with self._cond:
                    self._live.append(worker)
                    self.spawns += 1
                started.append(worker)
            for worker in started:
                try:
                    worker.wait_ready()
                except RuntimeError as exc:
                    if self._closed:
                        return  # killed by close() while starting
                    self._retire(worker, count=False)
                    self._fail(str(exc))
                    continue
                if self._closed:
                    return
                self._ready.put(worker)

    def _fail(self, message: str) -> None:
        logger.warning("%s", message)
        with self._cond:
            self._startup_error = message
            self._cond.notify_all()

    def _retire(self, worker: _Worker, count: bool = True) -> None:
        """Kill ``worker`` now (SIGKILL frees its CPU at once); reaping and the replacement happen in the background."""
        worker.kill_nowait()
        with self._cond:
            if worker in self._live:
                self._live.remove(worker)
            self._dead.append(worker)
            if count:
                self.restarts += 1
            self._cond.notify_all()

    def _take_ready(self, deadline: float) -> _Worker:
        while True:
            try:
                return self._ready.get(timeout=0.05)
            except queue.Empty:
                pass
            if self._closed:
                raise RuntimeError("the math-verify pool was shut down")
            error = self._startup_error
            if error is not None:
                raise RuntimeError(error)  # a setup problem (math-verify missing, host overloaded): never score 0
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"no math-verify worker became ready within {self.startup_timeout:.0f} s; raise "
                    "AENT_REWARD_STARTUP_TIMEOUT on a busy host"
                )

    # -- public ----------------------------------------------------------------------------------------------------

    def worker_pids(self) -> List[int]:
        with self._cond:
            return [w.pid for w in self._live]

    def idle_workers(self) -> int:
        """Workers started and waiting for a request (the spares among them)."""
        return self._ready.qsize()

    def warmup(self) -> None:
        """Start every worker (and the spares) and wait until each has imported math-verify."""
        self._ensure_started()
        deadline = time.monotonic() + self.startup_timeout
        while True:
            with self._cond:
                done = len(self._live) >= self.target and all(w.ready for w in self._live)
                error = self._startup_error
            if error is not None:
                raise RuntimeError(error)
            if done:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"math-verify workers did not start within {self.startup_timeout:.0f} s")
            time.sleep(0.02)

    def verify(self, gold: str, prediction: Optional[str], timeout: float) -> Tuple[str, str]:
        """(verdict, detail): verdict is the worker's ("correct", "wrong", "parse_error", "gold_parse_error",
        "error"), or TIMEOUT, or CRASHED (the worker died twice in a row on this input). With ``prediction`` None,
        only checks that ``gold`` parses: "parsed" or "parse_error".

        Returns within ``timeout`` plus a small constant once a worker is ready; never waits for a worker to start
        when a spare is idle."""
        if self._closed:
            raise RuntimeError("the math-verify pool was shut down")
        self._ensure_started()
        with self._slots:
            start_deadline = time.monotonic() + self.startup_timeout
            remaining = timeout  # time spent checking counts against it, waiting for a worker to start does not
            for attempt in range(2):
                worker = self._take_ready(start_deadline)
                while worker.proc.poll() is not None:  # died while idle (OOM killer): not this input's fault
                    self._retire(worker)
                    worker = self._take_ready(start_deadline)
                sent = time.monotonic()
                try:
                    verdict = worker.request(next(self._request_ids), gold, prediction, max(remaining, 0.0))
                except TimeoutError:
                    self._retire(worker)
                    return TIMEOUT, f"no verdict within {timeout:g} s; worker restarted"
                except (EOFError, OSError):
                    # The worker died (killed by the OS, out of memory, a crash in a C extension).
                    remaining -= time.monotonic() - sent
                    try:  # its pipe closed, so it is exiting: its code names the cause
                        code = worker.proc.wait(timeout=1.0)
                    except subprocess.TimeoutExpired:
                        code = None
                    self._retire(worker)
                    if attempt == 1:
                        return CRASHED, f"worker exited with code {code} twice on this input"
                    logger.warning("math-verify worker exited with code %s; retrying on another one", code)
                    continue
                self._ready.put(worker)
                return verdict
            raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        with self._cond:
            self._closed = True
            workers, self._live = list(self._live), []
            dead, self._dead = self._dead, []
            self._cond.notify_all()
        if os.getpid() != self.owner_pid:
            return  # after a fork, the workers belong to the parent
        for worker in workers + dead:
            worker.kill_nowait()
            worker.reap()


_pool: Optional[VerifyPool] = None
_pool_lock = threading.Lock()


#: Default cap on the number of concurrent checks (each worker holds sympy: about 100 MB).
MAX_DEFAULT_WORKERS = 32


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def env_seconds(name: str, default: float) -> float:
    """The environment variable ``name`` as a number of seconds > 0 (``default`` when unset or empty), read when it
    is used; anything else is an error that names the variable."""
    value = os.environ.get(name, "").strip()
    if not value:
        return float(default)
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not (seconds > 0 and seconds < float("inf")):
        raise ValueError(f"the environment variable {name} must be a number of seconds > 0, got {value!r}")
    return seconds


def default_num_workers() -> int:
    """``AENT_REWARD_WORKERS``, or one worker per usable CPU (at most ``MAX_DEFAULT_WORKERS``)."""
    value = os.environ.get("AENT_REWARD_WORKERS")
    if value:
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"AENT_REWARD_WORKERS must be an integer, got {value!r}") from None
    return max(1, min(MAX_DEFAULT_WORKERS, usable_cpus()))


def get_pool() -> VerifyPool:
    """The process-wide pool, created on first use (and again in a forked child)."""
    global _pool
    pool = _pool
    if pool is not None and pool.owner_pid == os.getpid() and not pool._closed:
        return pool
    with _pool_lock:
        if _pool is None or _pool.owner_pid != os.getpid() or _pool._closed:
            startup = env_seconds("AENT_REWARD_STARTUP_TIMEOUT", 120.0)
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
