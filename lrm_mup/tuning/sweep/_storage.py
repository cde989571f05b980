"""Where a sweep lives: Optuna storages (journal file or an RDB URL), its studies, samplers and pruners, and the
locks that let many workers share them."""
from __future__ import annotations

import contextlib
import importlib.util
import re
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from sqlalchemy import text

from ..._files import FileLock
from ...errors import SweepError
from ._spec import JOURNAL, SweepSpec


def _quiet_optuna() -> None:
    """Optuna's INFO lines and two warnings that do not apply to how we drive it, off for the whole process."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # we run the trial loop ourselves (ask/tell under a claim lock) and keep the heartbeat going ourselves
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


_quiet_optuna()


def _mask(url: str) -> str:
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def _is_url(storage) -> bool:
    return isinstance(storage, str) and "://" in storage


def _open_storage(spec: SweepSpec | None, out: Path | None, url: str | None):
    if url is None:
        # flock: the kernel drops it when its holder dies, so a SIGKILLed worker never leaves the journal locked
        # (optuna's default symlink lock would stall every other process for its 30 s grace)
        return JournalStorage(JournalFileBackend(str(out / JOURNAL), lock_obj=FileLock(out / (JOURNAL + ".flock"))))
    kw = {}
    if spec is not None:
        hb = spec.heartbeat
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=hb["max_retry"])
        kw = {"heartbeat_interval": hb["interval"], "grace_period": hb["grace"],
              "heartbeat_stale_trial_callback": retry}
    last = None
    for attempt in range(4):  # workers starting together on an empty database race to create its tables
        try:
            return optuna.storages.RDBStorage(_driver_url(url), **kw)
        except Exception as e:  # noqa: BLE001 - sqlalchemy/driver errors, reported in one line below
            last = e
            time.sleep(0.5 * (attempt + 1))
    first = str(last).strip().splitlines()[0] if str(last).strip() else type(last).__name__
    raise SweepError(f"cannot open storage {_mask(url)}: {first}")


def _driver_url(url: str) -> str:
    """postgresql:// (or postgres://) -> postgresql+psycopg2:// when psycopg2 is what is installed: SQLAlchemy 2.1
    would otherwise look for psycopg 3."""
    scheme, sep, rest = url.partition("://")
    if scheme in ("postgresql", "postgres"):
        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return f"postgresql+psycopg2{sep}{rest}"
        return f"postgresql{sep}{rest}"
    return url


def _sampler(spec: SweepSpec, recipe: str, worker: int):
    s = spec.sampler
    if s["type"] == "grid":
        class Grid(optuna.samplers.GridSampler):
            def after_trial(self, study, trial, state, values):  # the worker loop stops on exhaustion itself
                pass

        return Grid(spec.grid_space(recipe), seed=s["seed"])  # the same seed in every worker
    seed = s["seed"] + 1000 * worker  # distinct streams per worker; constant liar keeps them apart
    if s["type"] == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s["startup_trials"])


def _pruner(spec: SweepSpec):
    p = spec.pruner
    if p["type"] == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p["startup_trials"], n_warmup_steps=p["warmup_steps"],
                                           interval_steps=p["interval"])
    return optuna.pruners.NopPruner()


def _studies(spec: SweepSpec, storage, worker: int = 0, create: bool = True) -> dict:
    studies = {}
    for recipe in spec.recipes:
        name = spec.study_name(recipe)
        kw = {"study_name": name, "storage": storage, "sampler": _sampler(spec, recipe, worker),
              "pruner": _pruner(spec)}
        if create:
            study = optuna.create_study(direction="minimize", load_if_exists=True, **kw)
            if study.metric_names is None:  # optuna-dashboard and Optuna's plots name the objective
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    study.set_metric_names(["val bits/byte"])
            if "lrm_mup_sweep" not in study.user_attrs:
                study.set_user_attr("description", spec.description)
                study.set_user_attr("lrm_mup_sweep", spec.name)
                study.set_user_attr("recipe", recipe)
                study.set_user_attr("spec", spec.to_dict())
        else:
            study = optuna.load_study(**kw)
        studies[recipe] = study
    return studies


class _ClaimLock:
    """Serializes claiming a trial: a PostgreSQL advisory lock for postgresql:// storages (any machine), an
    flock on <out>/.claim.lock otherwise (processes of one machine)."""

    def __init__(self, storage, out: Path, name: str):
        self.storage, self.key = storage, f"lrm_mup:{name}"
        self.file = FileLock(out / ".claim.lock")
        url = getattr(storage, "url", "") or ""
        self.pg = str(url).startswith("postgres")

    def __enter__(self):
        if self.pg:
            self.conn = self.storage.engine.connect()
            self.conn.execute(text("SELECT pg_advisory_lock(hashtext(:k))"), {"k": self.key})
            self.conn.commit()
        else:
            self.file.acquire()
        return self

    def __exit__(self, *exc):
        if self.pg:
            try:
                self.conn.execute(text("SELECT pg_advisory_unlock(hashtext(:k))"), {"k": self.key})
                self.conn.commit()
            finally:
                self.conn.close()
        else:
            self.file.release()


def _has_room(spec: SweepSpec, recipe: str, trials) -> bool:
    if any(t.state == TrialState.WAITING for t in trials):
        return True
    if spec.grid:  # a grid point is taken once any trial holds it (a failed one is retried with its params)
        return len({t.system_attrs["grid_id"] for t in trials if "grid_id" in t.system_attrs}) < spec.budget(recipe)
    active = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return sum(t.state in active for t in trials) < spec.budget(recipe)


def _requeue_failed(study, spec: SweepSpec, fail_running: bool) -> int:
    """Retry (same params, state WAITING) every failed trial that has no retry yet; with `fail_running`, first
    fail the trials left RUNNING by a dead run (journal storage has no heartbeats). Call under the claim lock."""
    if fail_running:
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    orphans = [t for t in trials if t.state == TrialState.FAIL and t.number not in retried]
    held = {t.system_attrs.get("grid_id") for t in trials if t.state != TrialState.FAIL}
    active = sum(t.state != TrialState.FAIL for t in trials)
    count = 0
    for t in orphans:
        if (t.system_attrs.get("grid_id") in held) if spec.grid else active >= spec.budget(study.user_attrs["recipe"]):
            continue  # another trial already holds its grid point / its budget slot
        optuna.storages.RetryHeartbeatStaleTrialCallback()(study, t)
        held.add(t.system_attrs.get("grid_id"))
        active += 1
        count += 1
    return count


@contextlib.contextmanager
def _run_lock(out: Path):
    """Shared flock on <out>/.run.lock for the run's duration; yields True if no other run holds it (alone)."""
    lock = FileLock(out / ".run.lock", blocking=False)
    try:
        lock.acquire()
        lock.share()
        alone = True
    except BlockingIOError:
        lock = FileLock(out / ".run.lock", shared=True)
        lock.acquire()
        alone = False
    try:
        yield alone
    finally:
        lock.release()

