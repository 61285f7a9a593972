"""Messages to stderr and progress bars that switch themselves off when quiet or not on a terminal."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing.managers import SyncManager

from tqdm import tqdm


def plural(n: int, word: str) -> str:
    """'1 cell bucket', '3 cell buckets', '12,148 non-zeros'."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


class Reporter:
    """Step logging (`step [n of N] ...`) and progress bars for one long operation."""

    def __init__(self, quiet: bool = False, steps: int | None = None):
        self.quiet = quiet
        self.steps = steps
        self.step_no = 0
        self.t0 = time.monotonic()

    def log(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def step(self, message: str) -> None:
        self.step_no += 1
        of = f" of {self.steps}" if self.steps else ""
        self.log(f"step [{self.step_no}{of}] {message}")

    def bar(
        self, total: float, desc: str, unit: str = "it", unit_scale: bool = True, position: int | None = None
    ) -> tqdm:
        # Bars only on an interactive terminal: logs and CI output stay readable.
        return tqdm(
            total=total,
            desc=desc,
            unit=unit,
            unit_scale=unit_scale,
            position=position,
            file=sys.stderr,
            disable=self.quiet or not sys.stderr.isatty(),
            leave=False,
            dynamic_ncols=True,
        )

    def elapsed(self) -> float:
        return time.monotonic() - self.t0


def run_pool(pool, q, tasks: dict, bar, on_done) -> None:
    """Run {key: (fn, args)} on a process pool, feeding what workers put on queue `q` to `bar` and calling
    on_done(key, result) as each finishes; a worker's error is raised here and cancels the rest."""
    futures = {pool.submit(fn, *args): key for key, (fn, args) in tasks.items()}
    pending = set(futures)
    try:
        while pending:
            done, pending = wait(pending, timeout=0.3, return_when=FIRST_COMPLETED)
            _drain(q, bar)
            for f in done:
                on_done(futures[f], f.result())
        _drain(q, bar)
    except BaseException:
        for f in pending:
            f.cancel()
        raise


def _drain(q, bar) -> None:
    while True:
        try:
            bar.update(q.get_nowait())
        except queue.Empty:
            return


def die_with_parent() -> None:
    """Linux: have the kernel kill this process when its parent dies; leave Ctrl-C to the parent.

    The fork server (see `_forkserver.py`), its pool workers and the queue's manager call it: without it
    they lived on after a `kill -9` of the build, ~930 MB after a killed full-scale build. Ctrl-C in a
    terminal reaches every process of the group: the workers printed a traceback each (~40 lines) while
    the parent, which stops them, printed its one line.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == 1:  # the parent died before the call: nobody is left to wait for us
            os._exit(1)


@contextlib.contextmanager
def worker_pool(jobs: int):
    """A process pool and a queue its workers report progress on; both end when this process ends.

    Workers come from a fork server, not from forking this process: a caller may hold DuckDB connections
    (or other threaded libraries) that a plain fork copies mid-flight, which crashed workers in testing.
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["__main__", "build_db._forkserver"])  # before the server starts
    manager = SyncManager(ctx=ctx)
    manager.start(die_with_parent)
    try:
        with ProcessPoolExecutor(
            max_workers=max(1, jobs), mp_context=ctx, initializer=die_with_parent
        ) as pool:
            yield pool, manager.Queue()
    finally:
        manager.shutdown()
