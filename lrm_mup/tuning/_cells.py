"""A check's cells (one short training run each: recipe × width × seed) run in forked worker processes.

Why processes: an OpenMP team waits at a barrier after every parallel region, so on a machine where other processes
hold cores a multi-threaded run stalls (`lrm_mup._threads`), and one thread gets only its time-slice share. Cells are
independent, so k single-threaded processes get k shares and have no barrier to wait at: on 2 cores beside 2 busy
loops, 4 workers get 4/3 of a core where 1 thread gets 2/3 (`lrm_mup._threads.workers_for_load`).

Why fork: the cells close over the caller's model constructor (often a lambda) and the corpus, which a spawned
process could not receive by pickling; a forked child inherits them, copy-on-write. Two traps, both handled here:
- GNU OpenMP's thread pool does not survive a fork: a child forked by a thread that has run a multi-threaded torch op
  hangs at its first parallel region with more than one thread (measured with torch 2.13's CPU build; setting the
  child's threads after the fork does not help). The pool is created by a fresh Python thread that has never run a
  torch op, so its children start with OpenMP untouched;
- a child that dies (killed, out of memory) would leave a multiprocessing.Pool waiting for good;
  concurrent.futures' pool notices (BrokenProcessPool), and the caller gets one line.
Results come back in the cells' order whatever order they finish in, so the records equal those of one process.
"""
from __future__ import annotations

import concurrent.futures as futures
import multiprocessing
import sys
import threading
import warnings
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Sequence

from ..errors import CoordCheckError
from ..training.threads import apply_threads

__all__ = ["run_cells", "can_fork"]

_JOB: list = []  # the (function, cells) being run: set before the fork, inherited by the children
_LOCK = threading.Lock()  # one forked run at a time per process (the children read _JOB)


def can_fork() -> bool:
    """Whether worker processes can be forked here (Linux: the fork start method is reliable there)."""
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


def _cell(index: int) -> tuple[int, Any]:
    fn, cells = _JOB[0]
    return index, fn(cells[index])


def run_cells(fn: Callable[[Any], Any], cells: Sequence[Any], *, workers: int, threads: int,
              cost: Callable[[Any], float] = lambda cell: 0.0, done: Callable[[Any], None] = lambda cell: None,
              what: str = "cell") -> list:
    """[fn(cell) for cell in cells], in `workers` forked processes at `threads` torch threads each (with workers=1:
    here, in order). The costliest cells (`cost`) start first so that the last to finish is a cheap one;
    `done(cell)` runs here as each finishes. An error raised in a cell is raised here (the other cells are cancelled
    and the workers stopped); a worker that dies is one `CoordCheckError` line naming the unfinished `what`s."""
    if workers <= 1 or len(cells) <= 1:
        results = []
        for cell in cells:
            results.append(fn(cell))
            done(cell)
        return results
    if not can_fork():
        raise CoordCheckError(f"workers={workers} needs the fork start method (Linux); run with workers=1")
    order = sorted(range(len(cells)), key=lambda i: -cost(cells[i]))  # stable: equal costs keep their order
    with _LOCK:
        _JOB[:] = [(fn, list(cells))]
        started: dict = {}

        def start() -> None:  # in a thread that has never run a torch op: its children's OpenMP is untouched
            try:
                with warnings.catch_warnings():  # Python >= 3.12 warns on fork from a threaded process
                    warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
                    pool = futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                                       initializer=apply_threads, initargs=(threads,))
                    started["pool"] = pool
                    started["futures"] = {pool.submit(_cell, i): i for i in order}  # the first submit forks all
            except BaseException as e:  # raised again in the caller's thread
                started["error"] = e

        forker = threading.Thread(target=start, name="lrm-mup-cells")
        forker.start()
        forker.join()
        if "error" in started:  # a fork or a submit failed: end what started, then say why
            if "pool" in started:
                _stop(started["pool"], kill=True)
            _JOB.clear()
            raise started["error"]
        pool, pending = started["pool"], started["futures"]
        results: dict[int, Any] = {}
        finished = False
        try:
            for future in futures.as_completed(pending):
                index, result = future.result()
                results[index] = result
                done(cells[index])
            finished = True
        except BrokenProcessPool:
            left = [cells[i] for i in order if i not in results]
            raise CoordCheckError(
                f"a worker process ended abruptly (killed, or out of memory) with {len(left)} {what}(s) unfinished, "
                f"the first {left[0]}: rerun with workers=1 (--workers 1) to see where") from None
        finally:
            _stop(pool, kill=not finished)
            _JOB.clear()
    return [results[i] for i in range(len(cells))]


def _stop(pool: futures.ProcessPoolExecutor, kill: bool) -> None:
    """End the workers: when all is done, as the pool ends them; with `kill` (an error, an interrupt) now, the
    cells not started cancelled and those still running killed, not waited for."""
    if not kill:
        pool.shutdown(wait=True)
        return
    processes = list((getattr(pool, "_processes", None) or {}).values())
    manager = getattr(pool, "_executor_manager_thread", None)
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        if p.is_alive():
            p.terminate()
    if manager is not None:  # it sees the workers end, reaps them and ends: joining them beside it races on waitpid
        manager.join()
    for p in processes:
        p.join()
