"""Applying the thread rule of `lrm_mup._threads` to this process's torch: intra-op threads (OpenMP) and, once per
process, inter-op threads; and handing an override down to the worker processes.

Who sets threads, and when:
- the CLI, for every command that trains or checks: the rule (one line on stderr saying the choice), or
  `--threads N`, which also reaches every worker process the command starts (as `LRM_MUP_THREADS`);
- the worker processes that sweeps and transfers start: the rule for their number, chosen once by the parent before
  they start, or the override; `run_demo`: the rule for its own process (one thread with `quick`), or `threads=`;
- in a Python caller's own process (`coord_check`, `depth_coord_check`, `run_sweep` / `run_transfer` with one
  worker): only when asked, by `threads=` where offered or `LRM_MUP_THREADS` in the environment, and put back
  afterwards. A library call does not change its caller's torch.set_num_threads unasked.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys

import torch

from .._threads import THREADS_ENV, choose_threads, env_threads, parse_threads

_INTEROP = []  # the inter-op count this process fixed (torch allows it once, before any inter-op work)


def apply_threads(threads: int) -> None:
    """torch.set_num_threads(threads), and the inter-op pool to the same size the first time (later calls, or one
    after inter-op work started, leave it as it is: torch raises on a second set). Picklable: a pool initializer."""
    torch.set_num_threads(threads)
    if not _INTEROP:
        with contextlib.suppress(RuntimeError):  # set already, by torch's own start of inter-op work or the user
            torch.set_num_interop_threads(threads)
        _INTEROP.append(torch.get_num_interop_threads())


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def threads_set(override=None, *, rule: bool = False, workers: int = 1, where: str = "threads", log=None,
                say_at_end: bool = False):
    """For the block: `override` threads (checked; also handed down to worker processes as `LRM_MUP_THREADS`), else
    `LRM_MUP_THREADS` if set, else with `rule` the rule for `workers` processes (`lrm_mup._threads`), else nothing
    changes. With `log`, the choice is said in one line (`True`: on stderr), at the start, or with `say_at_end` when
    the block has run to its end (one stopped by bad input, an `LrmMupError`, says its one-line error only). torch's
    intra-op count and the environment are put back afterwards. Yields the count set, or None."""
    given = parse_threads(override, where)
    before, env_before = torch.get_num_threads(), os.environ.get(THREADS_ENV)
    choice = None
    if given is not None or env_threads() is not None or rule:
        choice = choose_threads(workers, given, where)
        apply_threads(choice.threads)
    say = None if choice is None or not log else functools.partial(_stderr if log is True else log, choice.line())
    if say is not None and not say_at_end:
        say()
    if given is not None:
        os.environ[THREADS_ENV] = str(given)
    try:
        yield None if choice is None else choice.threads
        if say is not None and say_at_end:
            say()
    finally:
        torch.set_num_threads(before)
        if env_before is None:
            os.environ.pop(THREADS_ENV, None)
        else:
            os.environ[THREADS_ENV] = env_before


def threads_argument(fn):
    """Decorator: `fn(..., threads=None)` runs under `threads_set(threads)`: a count, or None (`LRM_MUP_THREADS` if
    set, else the caller's torch threads), put back afterwards."""
    @functools.wraps(fn)
    def wrapper(*args, threads=None, **kwargs):
        with threads_set(threads, where=f"{fn.__name__}(threads=...)"):
            return fn(*args, **kwargs)
    wrapper.__doc__ = (fn.__doc__ or "") + (f"\n\n    threads: torch threads for this call (default: ${THREADS_ENV} "
                                            "if set, else the caller's), put back afterwards (lrm_mup._threads).")
    return wrapper
