"""Waiting on events, not on time: tests that run real worker processes wait for a trial in state RUNNING, a lock
queued on, a process exited, never for a wall-clock window, so the suite passes on a machine with load 10 on 2 cores.
`DEADLINE` is the last-resort bound on such a wait: a failure, never a measurement."""
import fcntl
import multiprocessing.connection
import multiprocessing.context
import os
import signal
import threading
import time

import pytest
from optuna.trial import TrialState

DEADLINE = 900.0  # seconds: only a hung test ever reaches it
POLL = 0.02  # seconds between looks at a storage or /proc while waiting for an event


def wait_for(event, what: str, *, procs=(), deadline: float = DEADLINE):
    """Poll `event()` until it returns something truthy and return that. Fails (with the process's stderr) if one
    of `procs` (subprocess.Popen) exits first, and only after `deadline` seconds if nothing happens at all."""
    end = time.monotonic() + deadline
    while True:
        got = event()
        if got:
            return got
        for p in procs:
            if p.poll() is not None:
                err = p.stderr.read().decode()[-2000:] if p.stderr else ""
                pytest.fail(f"process {p.pid} exited ({p.returncode}) while waiting for {what}: {err}")
        if time.monotonic() > end:
            pytest.fail(f"gave up after {deadline:.0f} s waiting for {what}")
        time.sleep(POLL)


def _stopped(pid: int) -> bool:
    """Every thread of `pid` is stopped (or gone): /proc/PID/task/TID/stat's state is T, t, Z or X. `kill` returns
    once SIGSTOP is queued, before a running thread has stopped; a check made then can see a state the process
    goes on to change (a checkpoint's temporary file, renamed a moment later)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return True
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if state not in "TtZX":
            return False
    return True


def stop_if(pid: int, still_true) -> bool:
    """SIGSTOP `pid`, then check `still_true()` against the storage: True (the process stays stopped, frozen in the
    state just checked, so a SIGKILL now lands exactly there), or SIGCONT and False. Checking after the stop, not
    before, is what removes the race between looking at a trial and killing its worker."""
    os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: _stopped(pid), f"process {pid} to stop")  # the signal is delivered asynchronously
    if still_true():
        return True
    os.kill(pid, signal.SIGCONT)
    return False


def mid_trial(t, steps: int) -> bool:
    """A RUNNING trial whose training has begun (its config is recorded) and has at most 4/5 of its steps reported:
    its worker is far from the final `tell`, so a worker stopped now holds it mid-trial."""
    return (t.state == TrialState.RUNNING and "config" in t.user_attrs
            and max(t.intermediate_values, default=0) <= steps * 4 // 5)


# ------------------------------------------------------------------------------------------------------------
# the processes a sweep starts, and a gate on its claim lock


def _flocks() -> list[tuple[bool, str, int, str]]:
    """/proc/locks as (waiting, mode, pid, lock id) for every flock: waiting lines are the ones marked "->"."""
    rows = []
    with open("/proc/locks") as f:
        for line in f:
            parts = line.split()[1:]
            waiting = parts[0] == "->"
            parts = parts[1:] if waiting else parts
            if parts[0] == "FLOCK":
                rows.append((waiting, parts[2], int(parts[3]), parts[4]))
    return rows


class FlockGate:
    """The journal sweep's claim lock (<out>/.claim.lock, an exclusive flock: sweep._storage._ClaimLock), held by the
    test: `queued(pids)` counts the processes blocked on it, read from /proc/locks."""

    def __init__(self, path):
        self.path, self.fd, self.lock_id = str(path), None, None

    def close(self):
        mine = {i for w, m, p, i in _flocks() if not w and p == os.getpid()}
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        new = {i for w, m, p, i in _flocks() if not w and p == os.getpid() and m == "WRITE"} - mine
        assert len(new) == 1, f"cannot find the gate's lock in /proc/locks: {new}"
        self.lock_id = new.pop()

    def queued(self, pids) -> int:
        return len({p for w, m, p, i in _flocks() if w and i == self.lock_id and p in pids})

    def open(self):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


class Spawns:
    """Every worker process that `run_sweep` starts in this process (multiprocessing's spawn context), recorded as
    it starts: `procs`. With `gate(lock, n)`, the test takes the sweep's claim lock just before the first worker
    starts (after the parent's own use of it) and releases it only once all `n` workers are blocked on it, so that
    every worker is ready before any trial is claimed: which worker claims first is still the kernel's choice, but
    none can take the whole grid while another is still importing torch. `all_queued` says the gate opened because
    every worker was queued (and not because one exited or the deadline passed). `when_queued(procs)`, if given to
    `gate`, runs at that moment, before the gate opens (e.g. to kill a worker that holds no trial)."""

    def __init__(self, monkeypatch):
        self.procs, self.all_queued, self._gate, self._n, self._thread = [], False, None, 0, None
        self._when_queued = None
        self._stop = threading.Event()
        original = multiprocessing.context.SpawnProcess.start

        def start(proc):
            if self._gate is not None and not self.procs:
                self._gate.close()
            original(proc)
            self.procs.append(proc)
            if self._gate is not None and len(self.procs) == self._n:
                self._thread = threading.Thread(target=self._open_when_queued, daemon=True)
                self._thread.start()

        monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", start)

    def gate(self, lock, n: int, when_queued=None):
        self._gate, self._n, self._when_queued = lock, n, when_queued

    def _open_when_queued(self):
        end = time.monotonic() + DEADLINE
        sentinels = [p.sentinel for p in self.procs]  # readable once its process exits (read without reaping it)
        try:
            while time.monotonic() < end and not self._stop.is_set():
                if self._gate.queued({p.pid for p in self.procs}) == self._n:
                    self.all_queued = True
                    if self._when_queued is not None:
                        self._when_queued(self.procs)
                    return
                if multiprocessing.connection.wait(sentinels, timeout=POLL):
                    return  # a worker exited before it queued: open the gate, the test's asserts say the rest
        finally:
            self._gate.open()

    def join(self):
        """Wait until the gate has opened."""
        if self._thread is not None:
            self._thread.join()

    def close(self):
        """The test is over: open the gate now if it is still shut (a failed test must not leave workers blocked)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        elif self._gate is not None and self.procs:  # shut, but fewer than n workers ever started
            self._gate.open()
