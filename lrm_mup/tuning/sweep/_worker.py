"""Running a sweep: the manifest, the parent that starts workers, and the worker loop that claims and runs trials."""
from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import socket
import sys
import threading
import time
from pathlib import Path

import optuna
import torch

from ... import data as data_mod
from ..._files import threads_per_worker
from ...errors import SweepError
from ._spec import JOURNAL, MANIFEST, SweepSpec, _is_int
from ._storage import _ClaimLock, _has_room, _is_url, _mask, _open_storage, _requeue_failed, _run_lock, _studies
from ._trial import _run_trial, _warm_up


def _write_manifest(out: Path, spec: SweepSpec, url: str | None, *, check_only: bool = False) -> None:
    """Write <out>/sweep.json, or check that the one there is this sweep's (a resume)."""
    manifest = {"spec": spec.to_dict(), "storage": _mask(url) if url else JOURNAL}
    path = out / MANIFEST
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None
        if old is not None:
            if old.get("storage") != manifest["storage"]:
                raise SweepError(f"{out} was swept with storage {old.get('storage')}, not {manifest['storage']}; "
                                 "pass the same --storage or another --out")
            if old.get("spec") != manifest["spec"]:
                a, b = old.get("spec") or {}, manifest["spec"]
                diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                raise SweepError(f"{out} holds sweep {a.get('name')!r} with other settings ({', '.join(diff)} "
                                 "differ); use the same sweep file to resume, or another --out")
            return
    if check_only:
        return
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, path)


def run_sweep(spec: SweepSpec, out_dir: str | os.PathLike, *, storage: str | None = None, workers: int = 1,
              progress: bool = True) -> None:
    """Run (or resume) every study of the sweep until each recipe's budget is used.

    `storage`: None for ``<out_dir>/optuna.journal``, or an RDB URL (``postgresql://user@host/db``) shared by
    workers on many machines. `workers`: local worker processes (spawned; each opens its own storage), so a script
    that calls this with workers > 1 needs the usual ``if __name__ == "__main__":`` guard.
    """
    if not _is_int(workers) or workers < 1:
        raise SweepError(f"workers must be a positive integer, not {workers!r}")
    if storage is not None and not _is_url(storage):
        raise SweepError(f"storage {storage!r} is not a database URL (postgresql://user@host/db); leave it out to "
                         "use the journal file in the run folder")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SweepError(f"out {str(out)!r} is a file, not a folder")
    _write_manifest(out, spec, storage, check_only=True)  # nothing is written before the storage opens
    store = _open_storage(spec, out, storage) if storage is not None else None
    _write_manifest(out, spec, storage)
    with _run_lock(out) as alone:
        store = store or _open_storage(spec, out, storage)
        studies = _studies(spec, store)
        with _ClaimLock(store, out, spec.name):
            for s in studies.values():
                if storage is not None:
                    optuna.storages.fail_stale_trials(s)  # dead workers' trials come back as WAITING retries
            requeued = sum(_requeue_failed(s, spec, fail_running=alone and storage is None)
                           for s in studies.values())
        if requeued and progress:
            print(f"{spec.name}: retrying {requeued} failed or interrupted trial(s)", flush=True)
        running = optuna.trial.TrialState.RUNNING
        pending = any(_has_room(spec, r, s.get_trials(deepcopy=False)) or
                      (storage is not None and s.get_trials(deepcopy=False, states=(running,)))
                      for r, s in studies.items())  # with heartbeats, a worker stays to retry stale trials
        if hasattr(store, "engine"):
            store.engine.dispose()  # the workers open their own connections
        del studies, store
        if not pending:  # finished already: resuming a finished sweep starts no worker
            return
        if workers == 1:
            _worker(spec, str(out), storage, 0, 1, progress)
            return
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_worker_process, args=(spec, str(out), storage, i, workers, progress),
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
    bad = [f"worker {i} exited with {'signal ' + str(-p.exitcode) if p.exitcode < 0 else 'status ' + str(p.exitcode)}"
           for i, p in enumerate(procs) if p.exitcode != 0]
    if bad:
        raise RuntimeError(f"{'; '.join(bad)} (its error is printed above); re-run the same command to retry the "
                           "trials it left")


def _worker_process(spec: SweepSpec, out: str, url: str | None, index: int, workers: int, progress: bool) -> None:
    try:
        with _run_lock(Path(out)):  # a worker that outlives its parent still counts as a live run
            _worker(spec, out, url, index, workers, progress)
    except KeyboardInterrupt:  # Ctrl-C reaches every worker: its trial is marked failed, retried on resume
        sys.exit(130)


def _worker(spec: SweepSpec, out: str, url: str | None, index: int, workers: int, progress: bool) -> None:
    if workers > 1:
        torch.set_num_threads(threads_per_worker(workers))
    out = Path(out)
    store = _open_storage(spec, out, url)
    studies = _studies(spec, store, worker=index, create=False)
    lock = _ClaimLock(store, out, spec.name)
    heartbeat = url is not None
    corpus = data_mod.load_corpus(spec.model.get("data"), progress=progress and index == 0)
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
                trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:500])
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

