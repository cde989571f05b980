"""How many torch (OpenMP) threads each process gets: one rule, from the cores this process may use, the load other
processes put on them, and the number of worker processes that share them; a user override wins. Torch-free (the
CLI's parser and the sweep parent decide before any torch work); `lrm_mup.training.threads` applies the choice.

The rule. With `cores` usable cores, `others` cores' worth of runnable work from other processes and `workers` of our
processes, each process gets

    threads = max(1, min(cores // workers, (cores - round(others)) // workers))

i.e. our threads never outnumber the cores left free, and never fewer than one.

The reason: oversubscription. An OpenMP team of k threads meets at a barrier after every parallel region (every
matmul, every elementwise kernel), so it runs at the speed of its slowest thread. When another process holds one of
the team's cores, the thread on it is descheduled for a whole time slice and the other k-1 threads spin or sleep at
the barrier meanwhile: a step of a small model (many short regions) waits for the scheduler again and again. Measured
on a 2-core machine (benchmarks/bench_load.py, benchmarks/RESULTS.md "Issue 15"): the demo's coordinate check with
torch's default 2 threads under two CPU-bound background processes runs many times slower than with 1 thread,
while 1 thread loses only its fair share of the cores. Too few threads costs at most a factor cores/threads; too many
costs without bound, so the rule rounds towards fewer.

The load. `os.getloadavg()` (the 1-minute average of runnable tasks, threads counted one by one) lags a new load by
a minute, so the rule also samples the instantaneous count of runnable tasks (`/proc/loadavg`, field 4) a few times
and takes the larger of the two. This process's own share is taken out of both where it can be told: its own
runnable threads from the instantaneous count (`/proc/self/task/*/stat`), and from the average the part its own CPU
time since start contributes, u·(1 - e^(-t/60)) for a mean use u over t seconds (the kernel's 1-minute exponential
average of a constant load u started t seconds ago).

The override: `--threads N` on the command line, or the environment variable `LRM_MUP_THREADS` (which the CLI sets
for its worker processes, and a Python user may set), a whole number >= 1; it wins over the rule and is not capped.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

THREADS_ENV = "LRM_MUP_THREADS"
LOAD_WINDOW_S = 60.0  # the time constant of the kernel's 1-minute load average
_SAMPLES, _SAMPLE_GAP_S = 5, 0.02  # instantaneous runnable counts averaged: 0.1 s in all
_STARTED = time.monotonic()  # when this module (so roughly this process) started: the age of its own load share


def threads_for_load(cores: int, load: float, workers: int = 1, override: int | None = None) -> int:
    """The rule (module doc) as a pure function: threads per process for `workers` processes on `cores` cores that
    other processes load with `load` runnable tasks; `override` (already a valid count) wins."""
    if override is not None:
        return override
    cores, workers = max(1, int(cores)), max(1, int(workers))
    free = cores - round(max(0.0, load))
    return max(1, min(cores // workers, free // workers))


def workers_for_load(cores: int, load: float, cells: int) -> int:
    """Worker processes for `cells` independent single-threaded jobs (a coordinate check's runs) on `cores` cores
    that other processes load with `load` runnable tasks: one per core, plus one per core's worth of others' load,
    at most two per core and never more than the jobs,

        workers = max(1, min(cells, 2 * cores, cores + round(load))).

    The reason: the kernel shares the cores per runnable thread, and a single-threaded process has no barrier to
    wait at, so k of ours among `load` others' tasks get cores · k / (k + load) cores, without the OpenMP stall
    (module doc). One per core takes an idle machine whole; under load each extra worker claims one more share
    (2 cores, 2 busy loops: 4 workers get 4/3 of a core, 2 workers 1 core, 1 thread 2/3), as a job of that many
    threads would, and the cap of two per core bounds memory and cache pressure."""
    cores, cells = max(1, int(cores)), max(1, int(cells))
    return max(1, min(cells, 2 * cores, cores + round(max(0.0, load))))


def parse_threads(value, where: str = "--threads") -> int | None:
    """A thread count as the user gave it (an int, or the text of an environment variable): a whole number >= 1, or
    None when not given (None or ''). Anything else: one line naming the value and what is allowed."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    raw = value
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where} {raw!r} is invalid: give a whole number of threads >= 1 (or leave it unset: "
                          "chosen from the free cores)")
    return value


AUTO_WORKERS = "auto"


def parse_workers(value, where: str = "--workers") -> int | str:
    """A worker count as the user gave it: a whole number >= 1, or "auto" (`workers_for_load` on this machine now);
    None means 1. Anything else: one line naming the value and what is allowed."""
    if value is None:
        return 1
    raw = value
    if isinstance(value, str):
        value = value.strip().lower()
        if value == AUTO_WORKERS:
            return AUTO_WORKERS
        value = int(value) if value.isdigit() else value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where} {raw!r} is invalid: give a whole number of worker processes >= 1, or "
                          f"{AUTO_WORKERS!r} (one per free core, more under load)")
    return value


def choose_workers(value, cells: int, where: str = "--workers") -> int:
    """The worker processes for `cells` jobs: `value` checked (`parse_workers`), "auto" by `workers_for_load` over
    the measured cores and load; never more than the jobs."""
    value = parse_workers(value, where)
    if value == AUTO_WORKERS:
        return workers_for_load(available_cores(), other_load(), cells)
    return max(1, min(value, int(cells)))


def env_threads() -> int | None:
    """The override in the environment (`LRM_MUP_THREADS`), checked; None when unset."""
    return parse_threads(os.environ.get(THREADS_ENV), THREADS_ENV)


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, further capped by a cgroup v2 CPU quota (cpu.max: a container
    limited to 2 CPUs' time on a 64-core host has 2 cores' worth, however many it may be scheduled on)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 file (macOS, cgroup v1) or an odd one: the affinity alone
        pass
    return max(1, cores)


def _own_running_threads() -> int:
    """This process's threads in state R now (the reader among them)."""
    running = 0
    for stat in Path("/proc/self/task").glob("*/stat"):
        try:
            running += stat.read_text().rsplit(")", 1)[1].split()[0] == "R"
        except (OSError, IndexError):  # a thread that ended while we looked
            pass
    return running


def _instant_load() -> float | None:
    """Other processes' runnable tasks now: /proc/loadavg's running count, less this process's, averaged over a few
    samples (one sample is noisy: jobs sleep and wake); None where /proc is not there."""
    counts = []
    for i in range(_SAMPLES):
        try:
            running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return None
        counts.append(max(0, running - max(1, _own_running_threads())))
        if i + 1 < _SAMPLES:
            time.sleep(_SAMPLE_GAP_S)
    return sum(counts) / len(counts)


def _own_average_share() -> float:
    """This process's part of the 1-minute load average: its mean CPU use u since start (all its threads, and its
    worker processes that have ended) as the kernel's exponential average sees it, u·(1 - e^(-t/60))."""
    age = max(1e-3, time.monotonic() - _STARTED)
    times = os.times()
    use = (times.user + times.system + times.children_user + times.children_system) / age
    return use * (1 - math.exp(-age / LOAD_WINDOW_S))


def other_load() -> float:
    """Runnable tasks of other processes, in cores' worth: the larger of the 1-minute load average (less this
    process's share) and the instantaneous count (module doc). 0 where the OS tells neither."""
    try:
        average = max(0.0, os.getloadavg()[0] - _own_average_share())
    except (OSError, AttributeError):
        average = 0.0
    instant = _instant_load()
    return max(average, instant or 0.0)


@dataclass(frozen=True)
class ThreadChoice:
    """Threads per process, and why: `source` is "rule" (from `cores` and `load`), or where the override came from."""
    threads: int
    workers: int
    cores: int
    load: float | None  # None when overridden (not measured)
    source: str

    def line(self) -> str:
        """One line for stderr, e.g. 'threads: 1 per process (2 cores, load 7.9)'."""
        per = "per process" if self.workers == 1 else f"per worker, {self.workers} workers"
        why = (f"{self.cores} cores, load {self.load:.1f}" if self.source == "rule"
               else f"{self.source}; {self.cores} cores")
        return f"threads: {self.threads} {per} ({why})"


def choose_threads(workers: int = 1, override=None, where: str = "--threads") -> ThreadChoice:
    """The choice for `workers` processes on this machine now: `override` if given (checked), else
    `LRM_MUP_THREADS` if set, else the rule over the measured cores and load."""
    workers = max(1, int(workers))
    cores = available_cores()
    given = parse_threads(override, where)
    if given is not None:
        return ThreadChoice(given, workers, cores, None, where)
    given = env_threads()
    if given is not None:
        return ThreadChoice(given, workers, cores, None, THREADS_ENV)
    load = other_load()
    return ThreadChoice(threads_for_load(cores, load, workers), workers, cores, load, "rule")
