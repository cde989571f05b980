"""Where a sweep lives: Optuna storages (journal file or an RDB URL), the folder's manifest that names them, its
studies, samplers and pruners, and the locks that let many workers share them. A storage URL is shown only masked
(`lrm_mup._secrets`), and a database's or a damaged journal's errors become one-line SweepErrors."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from sqlalchemy import text
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from ..._files import FileLock, write_json_atomic
from ..._names import STORAGE_ENV
from ..._secrets import driver_url, mask_text, mask_url
from ...errors import LrmMupError, MissingError, SweepError
from ._spec import JOURNAL, MANIFEST, SweepSpec


def _quiet_optuna() -> None:
    """Optuna's INFO lines and two warnings that do not apply to how we drive it, off for the whole process."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # we run the trial loop ourselves (ask/tell under a claim lock) and keep the heartbeat going ourselves
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


_quiet_optuna()


_CORRUPT = (ValueError, KeyError, TypeError, IndexError, AttributeError)  # what replaying a damaged journal raises


def _is_url(storage) -> bool:
    return isinstance(storage, str) and "://" in storage


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _db_error(url: str, e: BaseException) -> SweepError:
    """A database error as one line, its driver's text masked (drivers echo the URL or parts of it)."""
    return SweepError(f"storage {mask_url(url)}: {mask_text(_first_line(e), url)}")


def _open_storage(spec: SweepSpec | None, out: Path | None, url: str | None):
    if url is None:
        # flock: the kernel drops it when its holder dies, so a SIGKILLed worker never leaves the journal locked
        # (optuna's default symlink lock would stall every other process for its 30 s grace)
        journal = out / JOURNAL
        with _journal_errors(journal):
            return JournalStorage(JournalFileBackend(str(journal), lock_obj=FileLock(out / (JOURNAL + ".flock"))))
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
            if isinstance(e, OperationalError) and getattr(e.orig, "pgcode", None) is None:
                break  # no connection at all (a wrong password, no server; no SQL state): not a race, no retry
            time.sleep(0.5 * (attempt + 1))
    raise SweepError(f"cannot open storage {mask_url(url)}: {mask_text(_first_line(last), url)}")


@contextlib.contextmanager
def _journal_errors(journal: Path):
    """A journal that optuna cannot replay (damaged, or not a journal at all) as one line with the remedy."""
    try:
        yield
    except LrmMupError:
        raise
    except _CORRUPT as e:
        raise SweepError(f"{journal} is corrupt, optuna cannot read it ({type(e).__name__}: {_first_line(e)}); "
                         "restore it from a copy, or run the sweep again with another --out") from None


@contextlib.contextmanager
def storage_errors(url: str | None):
    """A database's errors while a sweep reads or writes it, as one-line SweepErrors, the driver's text masked
    (`url`: the storage's URL; None for a journal, whose damage `_open_storage` reports when it replays it)."""
    try:
        yield
    except SQLAlchemyError as e:
        raise _db_error(str(url or "(database)"), e) from None


def _driver_url(url: str) -> str:
    """The URL SQLAlchemy is given: `driver_url` (a raw @ in the password encoded), and postgresql:// (or
    postgres://) -> postgresql+psycopg2:// when psycopg2 is what is installed: SQLAlchemy 2.1 would otherwise look
    for psycopg 3."""
    scheme, sep, rest = driver_url(url).partition("://")
    if scheme in ("postgresql", "postgres"):
        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return f"postgresql+psycopg2{sep}{rest}"
        return f"postgresql{sep}{rest}"
    return f"{scheme}{sep}{rest}"


# ----------------------------------------------------------------------------------------------------------
# the manifest: which sweep a folder holds, and where its trials are


@dataclass(frozen=True)
class Manifest:
    """<out>/sweep.json: the sweep's spec (its dict) and its storage, JOURNAL or the URL masked (`mask_url`)."""

    spec: dict
    storage: str

    @property
    def journal(self) -> bool:
        return self.storage == JOURNAL


def _rewrite_hint(out: Path) -> str:
    return (f"re-run the `lrm-mup sweep` command that made {out} (same sweep file, --out and --storage): it rewrites "
            f"{MANIFEST} and re-runs nothing that finished")


def read_manifest(out: str | os.PathLike) -> Manifest | None:
    """The manifest of the sweep folder `out`, None without one; a damaged one raises SweepError with the remedy."""
    path = Path(out) / MANIFEST
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise SweepError(f"{path} is corrupt ({type(e).__name__}: {_first_line(e)}); {_rewrite_hint(Path(out))}") \
            from None
    if not (isinstance(raw, dict) and isinstance(raw.get("spec"), dict) and isinstance(raw.get("storage"), str)):
        raise SweepError(f"{path} is corrupt (not an object with a spec and a storage); {_rewrite_hint(Path(out))}")
    return Manifest(raw["spec"], raw["storage"])


def write_manifest(out: Path, spec: SweepSpec, url: str | None, *, check_only: bool = False) -> None:
    """Write <out>/sweep.json, or check that the one there is this sweep's (a resume); a damaged one is rewritten."""
    manifest = Manifest(spec.to_dict(), mask_url(url) if url else JOURNAL)
    try:
        old = read_manifest(out)
    except SweepError:
        old = None
    if old is not None:
        if old.storage != manifest.storage:
            raise SweepError(f"{out} was swept with storage {old.storage}, not {manifest.storage}; pass the same "
                             f"--storage (or {STORAGE_ENV}) or another --out")
        if old.spec != manifest.spec:
            a, b = old.spec, manifest.spec
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise SweepError(f"{out} holds sweep {a.get('name')!r} with other settings ({', '.join(diff)} "
                             "differ); use the same sweep file to resume, or another --out")
        return
    if not check_only:
        write_json_atomic(out / MANIFEST, {"spec": manifest.spec, "storage": manifest.storage})


def folder_storage(out: str | os.PathLike, storage: str | None = None) -> tuple[str | None, Manifest | None]:
    """(URL or None for the journal, manifest) of the sweep folder `out`: the storage its manifest names. A folder
    swept into a database needs its URL when the manifest's is masked: `storage`, else the environment variable
    LRM_MUP_STORAGE; either must mask to the manifest's URL (the same database)."""
    out = Path(out)
    if not out.exists():
        raise MissingError(f"sweep folder {str(out)!r} does not exist")
    if not out.is_dir():
        raise SweepError(f"{str(out)!r} is a file, not a sweep folder (runs/NAME from `lrm-mup sweep`)")
    manifest = read_manifest(out)
    if manifest is None or manifest.journal:
        if storage is not None:
            raise SweepError(f"{out} was swept into its own {JOURNAL}, not a database: leave --storage out")
        if not (out / JOURNAL).is_file():
            what = f"{MANIFEST} names {JOURNAL}, but it is missing" if manifest else f"no {JOURNAL} nor {MANIFEST}"
            raise SweepError(f"{str(out)!r} holds no sweep results ({what}); pass the folder `lrm-mup sweep --out` "
                             "wrote, or run the sweep again")
        return None, manifest
    url = storage or os.environ.get(STORAGE_ENV) or (None if "***" in manifest.storage else manifest.storage)
    if url is None:
        raise SweepError(f"{out} was swept into the database {manifest.storage}: pass its URL with --storage URL "
                         f"or in the environment variable {STORAGE_ENV}")
    if not _is_url(url):
        raise SweepError(f"storage {mask_url(url)!r} is not a database URL (postgresql://user@host/db)")
    if mask_url(url) != manifest.storage:
        raise SweepError(f"{out} was swept into {manifest.storage}, not {mask_url(url)}: pass the URL it was swept "
                         f"with (--storage or {STORAGE_ENV})")
    return url, manifest


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

