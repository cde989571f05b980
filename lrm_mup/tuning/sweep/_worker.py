"""Running a sweep: the manifest, the parent that starts workers, and the worker loop that claims and runs trials."""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import optuna

from ... import data as data_mod
from ..._files import check_out_folder, undo_on_error
from ..._secrets import mask_text, mask_url
from ..._threads import choose_threads
from ...errors import LrmMupError, SweepError
from ...training import TrainConfig
from ...training.threads import apply_threads, threads_set
from ._spec import SweepSpec, _is_int
from ._storage import (
    _ClaimLock,
    _has_room,
    _is_url,
    _open_storage,
    _requeue_failed,
    _run_lock,
    _studies,
    storage_errors,
    write_manifest,
)
from ._trial import _run_trial, _warm_up


def _check_start(spec: SweepSpec, out: Path, progress: bool):
    """What a sweep needs that can be checked before its first byte is written: a folder that can be written, the
    corpus, and every recipe's context fitting both of its splits. Returns the corpus."""
    check_out_folder(out, "sweep folder")
    corpus = data_mod.load_corpus(spec.model.get("data"), progress=progress,
                                  tokenizer=spec.model.get("tokenizer"))
    sample = {r: {p.name: (p.values[0] if p.values is not None else p.low) for p in spec.params_for(r)}
              for r in spec.recipes}
    for context in sorted({TrainConfig(**spec.config(r, min(spec.widths), spec.seeds[0], sample[r])).context
                           for r in spec.recipes}):
        corpus.check_context(context)
    return corpus


def run_sweep(spec: SweepSpec, out_dir: str | os.PathLike, *, storage: str | None = None, workers: int = 1,
              progress: bool = True) -> None:
    """Run (or resume) every study of the sweep until each recipe's budget is used.

    `storage`: None for ``<out_dir>/optuna.journal``, or an RDB URL (``postgresql://user@host/db``) shared by
    workers on many machines; it is shown and recorded (``<out_dir>/sweep.json``) masked only (`lrm_mup._secrets`).
    `workers`: local worker processes (spawned; each opens its own storage), so a script that calls this with
    workers > 1 needs the usual ``if __name__ == "__main__":`` guard.

    Bad input (the folder, the data, the storage, another sweep in the folder) is refused before anything is
    written, and a start that fails before the first trial leaves nothing in `out_dir`. A worker that dies (killed,
    or an error) does not stop the others: when they finish every trial (with heartbeats, retrying the dead one's)
    this ends normally with a warning line on stderr; otherwise it raises SweepError saying which worker died how,
    and re-running the same call retries the trials left.
    """
    if not _is_int(workers) or workers < 1:
        raise SweepError(f"workers must be a positive integer, not {workers!r}")
    if storage is not None and not _is_url(storage):
        raise SweepError(f"storage {mask_url(storage)!r} is not a database URL (postgresql://user@host/db); leave it "
                         "out to use the journal file in the run folder")
    out = Path(out_dir)
    write_manifest(out, spec, storage, check_only=True)  # another sweep in the folder: refused before any work
    corpus = _check_start(spec, out, progress)
    store = _open_storage(spec, out, storage) if storage is not None else None
    with contextlib.ExitStack() as held:
        with undo_on_error(out), storage_errors(storage):  # a failed start leaves no folder, no journal
            out.mkdir(parents=True, exist_ok=True)
            write_manifest(out, spec, storage)
            alone = held.enter_context(_run_lock(out))  # held until the workers are done
            store = store or _open_storage(spec, out, storage)
            studies = _studies(spec, store)
            with _ClaimLock(store, out, spec.name):
                for s in studies.values():
                    if storage is not None:
                        optuna.storages.fail_stale_trials(s)  # dead workers' trials come back as WAITING retries
                requeued = sum(_requeue_failed(s, spec, fail_running=alone and storage is None)
                               for s in studies.values())
            pending = _pending(spec, studies, heartbeat=storage is not None)
            if hasattr(store, "engine"):
                store.engine.dispose()  # the workers open their own connections
            del studies, store
        if requeued and progress:
            print(f"{spec.name}: retrying {requeued} failed or interrupted trial(s)", flush=True)
        if not pending:  # finished already: resuming a finished sweep starts no worker
            return
        if workers == 1:
            with storage_errors(storage), threads_set():  # the caller's threads, or $LRM_MUP_THREADS
                _worker(spec, str(out), storage, 0, 1, progress, corpus)
            return
        del corpus  # each worker loads its own
        ctx = multiprocessing.get_context("spawn")
        threads = choose_threads(workers)  # chosen once, here, before the workers add their own load
        if progress:
            print(threads.line(), file=sys.stderr, flush=True)
        procs = [ctx.Process(target=_worker_process,
                             args=(spec, str(out), storage, i, workers, progress, threads.threads),
                             name=f"lrm-mup-sweep-{i}") for i in range(workers)]
        try:
            for p in procs:
                p.start()
            for p in procs:
                p.join()
        except BaseException:
            for p in procs:
                if p.pid is not None:
                    p.join(timeout=30)  # Ctrl-C reaches the workers too: they fail their trial and exit
                    if p.is_alive():
                        p.terminate()
            raise
    dead = [_death(i, p) for i, p in enumerate(procs) if p.exitcode != 0]
    if dead:
        left = _unfinished(spec, out, storage)
        if not left:
            print(f"lrm-mup sweep: warning: {'; '.join(dead)}; the other workers finished every trial",
                  file=sys.stderr, flush=True)
            return
        raise SweepError(f"{'; '.join(dead)}, and {left} trial(s) are unfinished: re-run the same command to retry "
                         "them (finished trials are kept)")


def _pending(spec: SweepSpec, studies: dict, heartbeat: bool) -> bool:
    """Whether a worker has anything to do: a recipe with room in its budget, or (with heartbeats) a RUNNING trial
    that may go stale and come back to be retried."""
    running = optuna.trial.TrialState.RUNNING
    return any(_has_room(spec, r, s.get_trials(deepcopy=False)) or
               (heartbeat and s.get_trials(deepcopy=False, states=(running,)))
               for r, s in studies.items())


def _unfinished(spec: SweepSpec, out: Path, url: str | None) -> int:
    """Trials the sweep still lacks: per recipe its budget minus its finished (COMPLETE or PRUNED) trials."""
    store = _open_storage(spec, out, url)
    with storage_errors(url):
        done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        left = sum(max(0, spec.budget(r) - len(s.get_trials(deepcopy=False, states=done)))
                   for r, s in _studies(spec, store, create=False).items())
    if hasattr(store, "engine"):
        store.engine.dispose()
    return left


def _death(index: int, proc) -> str:
    """How a worker process ended, in words."""
    code = proc.exitcode
    if code < 0:
        try:
            how = f"was killed by signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            how = f"was killed by signal {-code}"
    elif code == 2:
        how = "stopped on the error printed above"
    else:
        how = f"exited with status {code} (its traceback is above)"
    return f"sweep worker {index} (pid {proc.pid}) {how}"


def _worker_process(spec: SweepSpec, out: str, url: str | None, index: int, workers: int, progress: bool,
                    threads: int) -> None:
    try:
        with _run_lock(Path(out)), storage_errors(url):
            # a worker that outlives its parent is a live run
            _worker(spec, out, url, index, workers, progress, threads=threads)
    except LrmMupError as e:  # one line, as the CLI says it; the parent names the worker and what to do
        print(f"lrm-mup sweep: worker {index}: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C reaches every worker: its trial is marked failed, retried on resume
        sys.exit(130)


def _worker(spec: SweepSpec, out: str, url: str | None, index: int, workers: int, progress: bool,
            corpus=None, threads: int | None = None) -> None:
    if threads is not None:  # a spawned worker: the parent's choice (lrm_mup._threads)
        apply_threads(threads)
    out = Path(out)
    store = _open_storage(spec, out, url)
    studies = _studies(spec, store, worker=index, create=False)
    lock = _ClaimLock(store, out, spec.name)
    heartbeat = url is not None
    if corpus is None:
        corpus = data_mod.load_corpus(spec.model.get("data"), progress=progress and index == 0,
                                      tokenizer=spec.model.get("tokenizer"))
    _warm_up(spec, corpus)
    me = f"{socket.gethostname()}:{os.getpid()}"
    while (claim := _claim(spec, studies, lock, heartbeat)) is not None:
        recipe, study, trial = claim
        beat = _Heartbeat(store, trial._trial_id) if heartbeat else contextlib.nullcontext()
        try:
            with beat:
                trial.set_user_attr("worker", me)
                state, value, attrs = _run_trial(spec, recipe, trial, corpus)
                if study.tell(trial, value, state=state, skip_if_finished=True).state != state:
                    raise optuna.exceptions.UpdateFinishedTrialError
        except optuna.exceptions.UpdateFinishedTrialError:
            if progress:  # this worker stalled past heartbeat.grace: the trial was failed and retried meanwhile
                print(f"[{recipe}] trial {trial.number} was failed by the heartbeat check while it ran (a stall "
                      f"longer than heartbeat.grace); its retry runs it again", flush=True)
            continue
        except BaseException as e:
            with contextlib.suppress(Exception):
                trial.set_user_attr("error", mask_text(f"{type(e).__name__}: {e}", *filter(None, [url]))[:500])
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        if progress:
            done = len(study.get_trials(deepcopy=False, states=(state.COMPLETE, state.PRUNED)))
            print(_progress_line(spec, recipe, trial, attrs, done) + _time_left(spec, studies, workers), flush=True)


def _claim(spec: SweepSpec, studies: dict, lock: _ClaimLock, heartbeat: bool):
    """(recipe, study, trial) of the next trial to run, or None when every budget is used."""
    while True:
        running = False
        for recipe, study in studies.items():
            with lock:
                if heartbeat:
                    optuna.storages.fail_stale_trials(study)
                trials = study.get_trials(deepcopy=False)
                if _has_room(spec, recipe, trials):
                    return recipe, study, study.ask()
            running |= any(t.state == optuna.trial.TrialState.RUNNING for t in trials)
        if not (heartbeat and running):
            return None
        time.sleep(spec.heartbeat["interval"])  # another worker's trial may go stale and come back to be retried


class _Heartbeat:
    def __init__(self, storage, trial_id: int):
        self.storage, self.trial_id, self.stop = storage, trial_id, threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self):
        interval = self.storage.get_heartbeat_interval()
        while True:
            with contextlib.suppress(Exception):
                self.storage.record_heartbeat(self.trial_id)
            if self.stop.wait(interval):
                return

    def __enter__(self):
        self.thread.start()

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _time_left(spec: SweepSpec, studies: dict, workers: int) -> str:
    """'; about N s left': the mean wall time of the finished trials (a grid runs its points in a shuffled order,
    so they are a fair sample of the rest) × the trials left over the local workers ('' when none is left)."""
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    seconds, left = [], 0
    for recipe, study in studies.items():
        done = study.get_trials(deepcopy=False, states=finished)
        seconds += [t.user_attrs["seconds"] for t in done if isinstance(t.user_attrs.get("seconds"), (int, float))]
        left += max(0, spec.budget(recipe) - len(done))
    if not left or not seconds:
        return ""
    return f"; about {sum(seconds) / len(seconds) * left / workers:.0f} s left ({left} trials)"


def _progress_line(spec: SweepSpec, recipe: str, trial, attrs: dict, done: int) -> str:
    params = " ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
    result = f"val {attrs['val_bpb']:.4f} bits/byte" if attrs["val_bpb"] is not None else "no final value"
    why = f" ({attrs['reason']})" if attrs["status"] != "ok" else ""
    return (f"[{recipe} {done}/{spec.budget(recipe)}] trial {trial.number}: {params} -> {result}, "
            f"{attrs['status']}{why}, {attrs['seconds']:.1f} s")

