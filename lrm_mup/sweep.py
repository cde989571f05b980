"""Hyperparameter sweeps on a cheap proxy: the recipes compared on equal budgets, with Optuna doing the bookkeeping.

A sweep file (TOML) names the model, the recipes, widths, seeds and steps, the search space and the sampler:

    name = "lr-transfer"                  # studies "<name>/<recipe>"; default folder runs/<name>
    recipes = ["sp", "lr-only", "mup", "lrm"]
    widths = [64, 128, 256]               # grid: a grid axis; tpe/random: exactly one proxy width
    seeds = [0, 1]                        # grid: a grid axis; tpe/random: every trial trains all seeds in lockstep
    steps = 200

    [model]                               # any other TrainConfig field, shared by every trial
    depth = 2
    context = 128
    schedule = "constant"

    [search]                              # grid: lists; tpe/random: {low, high[, log][, step]} ranges or lists
    log2_lr = [-12, -11, -10, -9, -8, -7]
    log2_mult_lr = {values = [-8, -6], recipes = ["lrm"]}

    [sampler]
    type = "grid"                         # or "tpe" / "random" with trials = N (per recipe: equal budgets)
    seed = 0

    [pruner]                              # tpe/random only
    type = "median"                       # or "none"
    warmup_steps = 50                     # no pruning before this training step: high-LR curves cross early
    startup_trials = 5
    interval = 10

    [trial]
    report_every = 10                     # trial.report(smoothed train loss in bits/byte, step) every N steps
    cap = 8.0                             # value of a diverged grid point: a uniform byte model
    diverge_bits = 10.0                   # smoothed train loss above this (and above step 1's) after warmup: diverged
    smoothing = 0.9                       # EMA of the train loss

    [heartbeat]                           # RDB storage (--storage postgresql://...) only
    interval = 60
    grace = 180
    max_retry = 3

Search keys: ``lr adam_lr mult_lr init_std weight_decay mult_wd clip`` (TrainConfig fields), ``alpha_in``
(embedding α), ``alpha_out`` (readout α) or ``alpha_<role or kind>``; each may be prefixed with ``log2_`` to
search its base-2 logarithm. ``*mult_*`` keys apply to ``lrm`` only and ``alpha_*`` keys to the fixed recipes (all
but ``lrm``, which learns its multipliers) unless the key's table says ``recipes = [...]``.

One study per recipe ("<name>/<recipe>") holds the trials. Storage: ``<out>/optuna.journal`` (JournalFileBackend:
many processes on one machine, no server), or an RDB URL (PostgreSQL for many machines) with heartbeats, where a
trial whose worker died is failed after the grace period and retried with the same params
(RetryHeartbeatStaleTrialCallback). Trials are claimed under a lock (flock on ``<out>/.claim.lock``, or a
PostgreSQL advisory lock), so N workers never run a grid point twice nor exceed a trial budget. Re-running the
same command resumes: finished trials are kept, failed ones (and, with the journal, ones left RUNNING by a dead
run) are retried with their params.

A trial diverges when its train loss turns non-finite, or its smoothed train loss (bits/byte) exceeds
``diverge_bits`` and its step-1 value after warmup: a grid trial then completes with the capped value ``cap``, a
tpe/random trial is pruned (TPE learns from pruned trials; a NaN value would be invisible to it); either way the
sweep goes on and the user attr ``status`` says ``diverged``. Every trial records ``tokens``, ``flops`` (model
training FLOPs), ``seconds`` (wall) and ``cpu_seconds`` as user attrs, so costs sum exactly. ``N`` local workers
get ``cores // N`` torch threads each.

Public API: `load_sweep`, `run_sweep`, `records`, `best_params` (and `summary_lines` for the CLI).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import multiprocessing
import os
import re
import socket
import sys
import threading
import time
import tomllib
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .model import ConfigError
from .recipes import RECIPES
from .roles import ROLE_KIND

SAMPLERS = ("grid", "tpe", "random")
PRUNERS = ("none", "median")
JOURNAL = "optuna.journal"
MANIFEST = "sweep.json"
STATUSES = ("ok", "diverged", "pruned")
FIXED_RECIPES = tuple(r for r in RECIPES if r != "lrm")
_FIELDS = ("lr", "adam_lr", "mult_lr", "init_std", "weight_decay", "mult_wd", "clip")
_ALPHA_ALIASES = {"in": "embedding", "out": "readout"}
_ALPHA_TARGETS = tuple(_ALPHA_ALIASES) + tuple(ROLE_KIND) + tuple(sorted(set(ROLE_KIND.values()) - set(ROLE_KIND)))
_TOP_LEVEL = ("name", "description", "recipes", "widths", "seeds", "steps", "model", "search", "sampler", "pruner",
              "trial", "heartbeat")
_TABLE_KEYS = {
    "sampler": {"grid": ("type", "seed"), "tpe": ("type", "seed", "trials", "startup_trials"),
                "random": ("type", "seed", "trials")},
    "pruner": {"none": ("type",), "median": ("type", "warmup_steps", "startup_trials", "interval")},
}
_TRIAL_DEFAULTS = {"report_every": None, "cap": 8.0, "diverge_bits": 10.0, "smoothing": 0.9}
_HEARTBEAT_DEFAULTS = {"interval": 60, "grace": None, "max_retry": 3}


class SweepError(ConfigError):
    """A bad sweep file, folder or storage; the message is one line naming the key and what to do."""


# ----------------------------------------------------------------------------------------------------------
# The sweep file


@dataclass(frozen=True)
class Param:
    """One search-space entry: a list of values (grid axis or categorical) or a range (tpe/random)."""

    name: str
    values: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    recipes: tuple[str, ...] = ()

    def apply(self, cfg: dict, value) -> None:
        """Set the TrainConfig field (or α) that this parameter stands for in the config dict `cfg`."""
        name, value = (self.name[5:], 2.0 ** value) if self.name.startswith("log2_") else (self.name, value)
        if name.startswith("alpha_"):
            role = name[6:]
            cfg["alphas"] = {**cfg.get("alphas", {}), _ALPHA_ALIASES.get(role, role): float(value)}
        else:
            cfg[name] = float(value)

    def to_dict(self) -> dict:
        d = {"values": list(self.values)} if self.values is not None else \
            {"low": self.low, "high": self.high, "log": self.log, "step": self.step}
        return {**d, "recipes": list(self.recipes)}


@dataclass(frozen=True)
class SweepSpec:
    name: str
    recipes: tuple[str, ...]
    widths: tuple[int, ...]
    seeds: tuple[int, ...]
    steps: int
    model: dict = field(default_factory=dict)
    search: tuple[Param, ...] = ()
    sampler: dict = field(default_factory=dict)
    pruner: dict = field(default_factory=dict)
    trial: dict = field(default_factory=dict)
    heartbeat: dict = field(default_factory=dict)
    description: str = ""
    path: str | None = None

    @property
    def grid(self) -> bool:
        return self.sampler["type"] == "grid"

    def study_name(self, recipe: str) -> str:
        return f"{self.name}/{recipe}"

    def params_for(self, recipe: str) -> list[Param]:
        return [p for p in self.search if recipe in p.recipes]

    def grid_space(self, recipe: str) -> dict[str, list]:
        space = {"width": list(self.widths), "seed": list(self.seeds)}
        space.update({p.name: list(p.values) for p in self.params_for(recipe)})
        return space

    def budget(self, recipe: str) -> int:
        """Trials of the recipe's study: its grid size, or the sampler's equal per-recipe budget."""
        if self.grid:
            return math.prod(len(v) for v in self.grid_space(recipe).values())
        return self.sampler["trials"]

    def config(self, recipe: str, width: int, seed: int, params: dict | None = None) -> dict:
        """The TrainConfig dict of one run (validated by TrainConfig)."""
        from .train import TrainConfig

        cfg = {**self.model, "recipe": recipe, "width": width, "seed": seed, "steps": self.steps}
        cfg["alphas"] = dict(cfg.get("alphas", {}))
        by_name = {p.name: p for p in self.search}
        for name, value in (params or {}).items():
            by_name[name].apply(cfg, value)
        return asdict(TrainConfig(**cfg))

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("name", "description", "steps", "model", "sampler", "pruner", "trial",
                                            "heartbeat")}
        d.update(recipes=list(self.recipes), widths=list(self.widths), seeds=list(self.seeds),
                 search={p.name: p.to_dict() for p in self.search})
        return json.loads(json.dumps(d))


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load_sweep(path: str | os.PathLike) -> SweepSpec:
    """Read and validate a sweep file; a problem raises SweepError with one line naming the key."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SweepError(f"sweep file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SweepError(f"cannot read sweep file {str(path)!r}: {getattr(e, 'strerror', None) or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise SweepError(f"{path}: not valid TOML: {e}") from None
    return parse_sweep(raw, source=str(path))


def parse_sweep(raw: dict, source: str = "<sweep>") -> SweepSpec:
    """Validate a sweep file's parsed TOML (a dict); see the module docstring for the schema."""
    from .train import TrainConfig

    def fail(key: str, msg: str):
        raise SweepError(f"{source}: {key} {msg}")

    def table(key: str) -> dict:
        value = raw.get(key, {})
        if not isinstance(value, dict):
            fail(key, f"must be a table ([{key}]), not {value!r}")
        return value

    def check_keys(key: str, d: dict, allowed) -> None:
        for k in d:
            if k not in allowed:
                fail(f"{key}.{k}" if key else k, f"is not a known key; allowed: {', '.join(allowed)}")

    def int_list(key: str, minimum: int) -> tuple[int, ...]:
        value = raw.get(key)
        if not isinstance(value, list) or not value:
            fail(key, f"must be a non-empty list of integers, not {value!r}")
        for v in value:
            if not _is_int(v) or v < minimum:
                fail(key, f"has {v!r}: every entry must be an integer >= {minimum}")
        if len(set(value)) != len(value):
            fail(key, "has duplicate entries")
        return tuple(value)

    check_keys("", raw, _TOP_LEVEL)
    name = raw.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        fail("name", f"must be a name of letters, digits, '_', '.', '-' (it names the studies and runs/<name>), "
                     f"not {name!r}")
    description = raw.get("description", "")
    if not isinstance(description, str):
        fail("description", "must be a string")
    recipes = raw.get("recipes")
    if not isinstance(recipes, list) or not recipes:
        fail("recipes", f"must be a non-empty list of recipes ({', '.join(RECIPES)}), not {recipes!r}")
    for r in recipes:
        if r not in RECIPES:
            fail("recipes", f"has {r!r}; allowed: {', '.join(RECIPES)}")
    if len(set(recipes)) != len(recipes):
        fail("recipes", "has duplicate entries")
    widths, seeds = int_list("widths", 1), int_list("seeds", 0)
    steps = raw.get("steps", TrainConfig.steps)
    if not _is_int(steps) or steps < 1:
        fail("steps", f"must be a positive integer, not {steps!r}")

    # sampler and pruner
    sampler = dict(table("sampler"))
    kind = sampler.get("type")
    if kind not in SAMPLERS:
        fail("sampler.type", f"must be one of {', '.join(SAMPLERS)}, not {kind!r}")
    check_keys("sampler", sampler, _TABLE_KEYS["sampler"][kind])
    sampler.setdefault("seed", 0)
    if not _is_int(sampler["seed"]) or sampler["seed"] < 0:
        fail("sampler.seed", f"must be an integer >= 0, not {sampler['seed']!r}")
    if kind != "grid":
        if not _is_int(sampler.get("trials")) or sampler["trials"] < 1:
            fail("sampler.trials", f"must be a positive integer (trials per recipe), not {sampler.get('trials')!r}")
        if len(widths) != 1:
            fail("widths", f"must list one proxy width for sampler {kind!r} (it tunes on one width), not {widths}")
    if kind == "tpe":
        sampler.setdefault("startup_trials", min(10, sampler["trials"]))
        if not _is_int(sampler["startup_trials"]) or sampler["startup_trials"] < 0:
            fail("sampler.startup_trials", f"must be an integer >= 0, not {sampler['startup_trials']!r}")
    pruner = dict(table("pruner"))
    pruner.setdefault("type", "none")
    if pruner["type"] not in PRUNERS:
        fail("pruner.type", f"must be one of {', '.join(PRUNERS)}, not {pruner['type']!r}")
    check_keys("pruner", pruner, _TABLE_KEYS["pruner"][pruner["type"]])
    if pruner["type"] != "none" and kind == "grid":
        fail("pruner.type", "must be 'none' with sampler 'grid': a transfer grid needs every point's final loss")
    if pruner["type"] == "median":
        for k, default, minimum in (("warmup_steps", 0, 0), ("startup_trials", 5, 0), ("interval", 1, 1)):
            pruner.setdefault(k, default)
            if not _is_int(pruner[k]) or pruner[k] < minimum:
                fail(f"pruner.{k}", f"must be an integer >= {minimum}, not {pruner[k]!r}")
        if pruner["warmup_steps"] >= steps:
            fail("pruner.warmup_steps", f"must be below steps={steps}, or nothing is ever pruned")

    # per-trial settings and heartbeats
    trial = dict(table("trial"))
    check_keys("trial", trial, tuple(_TRIAL_DEFAULTS))
    trial = {**_TRIAL_DEFAULTS, **trial}
    if trial["report_every"] is None:
        trial["report_every"] = max(1, steps // 20)
    if not _is_int(trial["report_every"]) or trial["report_every"] < 1:
        fail("trial.report_every", f"must be a positive integer, not {trial['report_every']!r}")
    for k in ("cap", "diverge_bits"):
        if not _is_num(trial[k]) or trial[k] <= 0:
            fail(f"trial.{k}", f"must be a positive number (bits/byte), not {trial[k]!r}")
    if not _is_num(trial["smoothing"]) or not 0 <= trial["smoothing"] < 1:
        fail("trial.smoothing", f"must be a number in [0, 1), not {trial['smoothing']!r}")
    heartbeat = dict(table("heartbeat"))
    check_keys("heartbeat", heartbeat, tuple(_HEARTBEAT_DEFAULTS))
    heartbeat = {**_HEARTBEAT_DEFAULTS, **heartbeat}
    if not _is_int(heartbeat["interval"]) or heartbeat["interval"] < 1:
        fail("heartbeat.interval", f"must be a positive integer (seconds), not {heartbeat['interval']!r}")
    if heartbeat["grace"] is None:
        heartbeat["grace"] = 3 * heartbeat["interval"]
    if not _is_int(heartbeat["grace"]) or heartbeat["grace"] <= heartbeat["interval"]:
        fail("heartbeat.grace", f"must be an integer (seconds) above heartbeat.interval, not {heartbeat['grace']!r}")
    if not _is_int(heartbeat["max_retry"]) or heartbeat["max_retry"] < 0:
        fail("heartbeat.max_retry", f"must be an integer >= 0, not {heartbeat['max_retry']!r}")

    # the search space
    search = []
    for key, entry in table("search").items():
        search.append(_parse_param(key, entry, kind, recipes, fail))
    if not search and kind != "grid":
        fail("search", f"is empty: sampler {kind!r} needs at least one range to search")
    targets = {}
    for p in search:
        target = p.name.removeprefix("log2_")
        target = "alpha_" + _ALPHA_ALIASES.get(target[6:], target[6:]) if target.startswith("alpha_") else target
        if target in targets:
            fail(f"search.{p.name}", f"sets the same value as search.{targets[target]}; keep one of them")
        targets[target] = p.name

    # the model: TrainConfig fields shared by every trial
    model = dict(table("model"))
    names = [f.name for f in fields(TrainConfig)]
    for k, value in model.items():
        if k in ("recipe", "width", "seed", "steps"):
            top = "steps" if k == "steps" else k + "s"
            fail(f"model.{k}", f"is set by the sweep: use the top-level key {top!r}")
        if k not in names:
            known = ", ".join(n for n in names if n not in ("recipe", "width", "seed", "steps"))
            fail(f"model.{k}", f"is not a TrainConfig field; known: {known}")
        searched = targets.get(k) or (k == "alphas" and next((n for t, n in targets.items() if t.startswith("alpha_")),
                                                             None))
        if searched:
            fail(f"model.{k}", f"is also searched by search.{searched}; keep one")
        if isinstance(value, bool) and k != "compile":
            fail(f"model.{k}", f"must not be a boolean ({value!r})")
        if k == "alphas" and (not isinstance(value, dict) or not all(_is_num(v) for v in value.values())):
            fail("model.alphas", f"must be a table of role = number, not {value!r}")
    if "data" in model and model["data"] is not None:
        model["data"] = str(model["data"])

    spec = SweepSpec(name=name, recipes=tuple(recipes), widths=widths, seeds=seeds, steps=steps, model=model,
                     search=tuple(search), sampler=sampler, pruner=pruner, trial=trial, heartbeat=heartbeat,
                     description=description, path=source)
    for recipe in recipes:  # every run the sweep can make is a valid TrainConfig
        sample = {p.name: (p.values[0] if p.values is not None else p.low) for p in spec.params_for(recipe)}
        for width in widths:
            try:
                spec.config(recipe, width, seeds[0], sample)
            except ConfigError as e:
                where = f"model (recipe {recipe!r}, width {width})" if len(widths) > 1 or len(recipes) > 1 else "model"
                fail(where, f"is invalid: {e}")
            except (TypeError, ValueError) as e:
                fail("model", f"is invalid: {e}")
    return spec


def _parse_param(key: str, entry, sampler: str, recipes: list[str], fail) -> Param:
    base = key.removeprefix("log2_")
    if base.startswith("alpha_"):
        if base[6:] not in _ALPHA_TARGETS:
            fail(f"search.{key}", f"names no role or kind; allowed: alpha_{', alpha_'.join(_ALPHA_TARGETS)}")
        default = FIXED_RECIPES
    elif base in _FIELDS:
        default = ("lrm",) if base in ("mult_lr", "mult_wd") else tuple(RECIPES)
    else:
        fail(f"search.{key}", f"is not a searchable key; allowed: {', '.join(_FIELDS)}, alpha_in, alpha_out, "
                              "alpha_<role>, each optionally prefixed with log2_")
    if isinstance(entry, list):
        entry = {"values": entry}
    if not isinstance(entry, dict):
        fail(f"search.{key}", f"must be a list of values or a table {{low, high}}, not {entry!r}")
    allowed = ("values", "recipes") if "values" in entry else ("low", "high", "log", "step", "recipes")
    for k in entry:
        if k not in allowed:
            fail(f"search.{key}.{k}", f"is not a known key; allowed: {', '.join(allowed)}")
    chosen = entry.get("recipes", None)
    if chosen is None:
        chosen = [r for r in default if r in recipes]
        if not chosen:
            fail(f"search.{key}", f"applies to recipes {', '.join(default)} by default, none of which the sweep runs; "
                                  "give recipes = [...]")
    elif not isinstance(chosen, list) or not chosen or any(r not in recipes for r in chosen):
        fail(f"search.{key}.recipes", f"must be a non-empty list of the sweep's recipes ({', '.join(recipes)}), "
                                      f"not {chosen!r}")
    ordered = tuple(r for r in recipes if r in chosen)
    minimum = -math.inf if key.startswith("log2_") else 0.0
    if "values" in entry:
        values = entry["values"]
        if not isinstance(values, list) or not values:
            fail(f"search.{key}", f"must list at least one value, not {values!r}")
        for v in values:
            if not _is_num(v) or v < minimum or (v == 0 and minimum == 0 and base in ("lr", "init_std")):
                fail(f"search.{key}", f"has {v!r}: values must be finite numbers"
                                      + ("" if key.startswith("log2_") else " > 0" if base in ("lr", "init_std")
                                         else " >= 0"))
        if len(set(values)) != len(values):
            fail(f"search.{key}", "has duplicate values")
        return Param(key, values=tuple(values), recipes=ordered)
    if sampler == "grid":
        fail(f"search.{key}", "must be a list of values for sampler 'grid' (a range is for tpe/random)")
    low, high, log, step = entry.get("low"), entry.get("high"), entry.get("log", False), entry.get("step")
    for k, v in (("low", low), ("high", high)):
        if not _is_num(v) or v < minimum:
            fail(f"search.{key}.{k}", f"must be a finite number{'' if minimum < 0 else ' >= 0'}, not {v!r}")
    if not low < high:
        fail(f"search.{key}", f"needs low < high, not low={low!r} high={high!r}")
    if not isinstance(log, bool):
        fail(f"search.{key}.log", f"must be true or false, not {log!r}")
    if log and low <= 0:
        fail(f"search.{key}.low", f"must be > 0 with log = true, not {low!r}")
    if step is not None and (not _is_num(step) or step <= 0 or log):
        fail(f"search.{key}.step", "must be a positive number, and not combined with log = true")
    return Param(key, low=float(low), high=float(high), log=log, step=None if step is None else float(step),
                 recipes=ordered)


# ----------------------------------------------------------------------------------------------------------
# Storage, studies, locks


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # we run the trial loop ourselves (ask/tell under a claim lock) and keep the heartbeat going ourselves
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    return optuna


def _mask(url: str) -> str:
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def _is_url(storage) -> bool:
    return isinstance(storage, str) and "://" in storage


def _open_storage(spec: SweepSpec | None, out: Path | None, url: str | None):
    optuna = _optuna()
    if url is None:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(str(out / JOURNAL), lock_obj=_FlockLock(out / (JOURNAL + ".flock"))))
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


class _FlockLock:
    """Journal write lock by flock(2): the kernel drops it when its holder dies, so a SIGKILLed worker never leaves
    the journal locked (optuna's default symlink lock would stall every other process for its 30 s grace)."""

    def __init__(self, path: Path):
        self.path, self.fd = str(path), None

    def acquire(self) -> bool:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return True

    def release(self) -> None:
        fd, self.fd = self.fd, None
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _driver_url(url: str) -> str:
    """postgresql:// (or postgres://) -> postgresql+psycopg2:// when psycopg2 is what is installed: SQLAlchemy 2.1
    would otherwise look for psycopg 3."""
    scheme, sep, rest = url.partition("://")
    if scheme in ("postgresql", "postgres"):
        import importlib.util

        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return f"postgresql+psycopg2{sep}{rest}"
        return f"postgresql{sep}{rest}"
    return url


def _sampler(spec: SweepSpec, recipe: str, worker: int):
    optuna = _optuna()
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
    optuna = _optuna()
    p = spec.pruner
    if p["type"] == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p["startup_trials"], n_warmup_steps=p["warmup_steps"],
                                           interval_steps=p["interval"])
    return optuna.pruners.NopPruner()


def _studies(spec: SweepSpec, storage, worker: int = 0, create: bool = True) -> dict:
    optuna = _optuna()
    studies = {}
    for recipe in spec.recipes:
        name = spec.study_name(recipe)
        kw = {"study_name": name, "storage": storage, "sampler": _sampler(spec, recipe, worker),
              "pruner": _pruner(spec)}
        if create:
            study = optuna.create_study(direction="minimize", load_if_exists=True, **kw)
            if "lrm_mup_sweep" not in study.user_attrs:
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
        self.storage, self.path, self.key = storage, out / ".claim.lock", f"lrm_mup:{name}"
        url = getattr(storage, "url", "") or ""
        self.pg = str(url).startswith("postgres")

    def __enter__(self):
        if self.pg:
            from sqlalchemy import text

            self.conn = self.storage.engine.connect()
            self.conn.execute(text("SELECT pg_advisory_lock(hashtext(:k))"), {"k": self.key})
            self.conn.commit()
        else:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.pg:
            from sqlalchemy import text

            try:
                self.conn.execute(text("SELECT pg_advisory_unlock(hashtext(:k))"), {"k": self.key})
                self.conn.commit()
            finally:
                self.conn.close()
        else:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)


def _has_room(spec: SweepSpec, recipe: str, trials) -> bool:
    from optuna.trial import TrialState

    if any(t.state == TrialState.WAITING for t in trials):
        return True
    if spec.grid:  # a grid point is taken once any trial holds it (a failed one is retried with its params)
        return len({t.system_attrs["grid_id"] for t in trials if "grid_id" in t.system_attrs}) < spec.budget(recipe)
    active = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return sum(t.state in active for t in trials) < spec.budget(recipe)


def _requeue_failed(study, spec: SweepSpec, fail_running: bool) -> int:
    """Retry (same params, state WAITING) every failed trial that has no retry yet; with `fail_running`, first
    fail the trials left RUNNING by a dead run (journal storage has no heartbeats). Call under the claim lock."""
    optuna = _optuna()
    from optuna.trial import TrialState

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
    fd = os.open(out / ".run.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except BlockingIOError:
            alone = False
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield alone
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------------------
# Running


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
        optuna = _optuna()
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
    import torch

    from . import data as data_mod

    if workers > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, cores // workers))
    out = Path(out)
    store = _open_storage(spec, out, url)
    studies = _studies(spec, store, worker=index, create=False)
    lock = _ClaimLock(store, out, spec.name)
    optuna = _optuna()
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
            print(_progress_line(spec, recipe, trial, attrs, done), flush=True)


def _warm_up(spec: SweepSpec, corpus) -> None:
    """A throwaway step and evaluation of the smallest run, so that no trial's wall time pays for the process's
    first-call costs (lazy imports and kernel setup): costs stay comparable between trials."""
    from .train import Run, TrainConfig

    recipe = spec.recipes[0]
    sample = {p.name: (p.values[0] if p.values is not None else p.low) for p in spec.params_for(recipe)}
    cfg = TrainConfig(**{**spec.config(recipe, min(spec.widths), spec.seeds[0], sample), "eval_batches": 1})
    run = Run.create(cfg, corpus, progress=False)
    run.train_step(run.model)
    run.evaluate(run.model)


def _claim(spec: SweepSpec, studies: dict, lock: _ClaimLock, heartbeat: bool):
    """(recipe, study, trial) of the next trial to run, or None when every budget is used."""
    optuna = _optuna()
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


def _suggest(trial, p: Param):
    if p.values is not None:
        return trial.suggest_categorical(p.name, list(p.values))
    return trial.suggest_float(p.name, p.low, p.high, log=p.log, step=p.step)


def _run_trial(spec: SweepSpec, recipe: str, trial, corpus):
    """Train one trial (one run per seed, in lockstep); returns (state, value or None, result attrs)."""
    import torch
    from optuna.trial import TrialState

    from .train import Run, TrainConfig

    params = {p.name: _suggest(trial, p) for p in spec.params_for(recipe)}
    if spec.grid:
        width = trial.suggest_categorical("width", list(spec.widths))
        seeds = [trial.suggest_categorical("seed", list(spec.seeds))]
    else:
        width, seeds = spec.widths[0], list(spec.seeds)
    configs = [TrainConfig(**spec.config(recipe, width, seed, params)) for seed in seeds]
    for k, v in (("recipe", recipe), ("width", width), ("seeds", seeds), ("config", asdict(configs[0]))):
        trial.set_user_attr(k, v)

    opts = spec.trial
    start, cpu_start = time.perf_counter(), time.process_time()
    runs = [Run.create(cfg, corpus, progress=False) for cfg in configs]
    cfg0 = configs[0]
    compile_ = cfg0.compile if cfg0.compile is not None else runs[0].device.type == "cuda"
    forwards = [torch.compile(r.model) if compile_ else r.model for r in runs]
    flops_per_token = runs[0].model.flops_per_token() if hasattr(runs[0].model, "flops_per_token") else 0.0
    status, reason, ema, first, losses, step, reported = "ok", None, None, None, [math.nan], 0, {}
    pruning = spec.pruner["type"] != "none"
    for step in range(1, spec.steps + 1):
        losses = [r.train_step(f)[0] for r, f in zip(runs, forwards)]
        if not all(math.isfinite(x) for x in losses):
            bad = next(x for x in losses if not math.isfinite(x))
            status, reason = "diverged", f"train loss became {bad} at step {step}"
            break
        bits = sum(losses) / len(losses) / math.log(2)
        ema = bits if ema is None else opts["smoothing"] * ema + (1 - opts["smoothing"]) * bits
        first = bits if first is None else first
        if step % opts["report_every"] == 0 or step == spec.steps:
            if step > cfg0.warmup_steps and ema > max(opts["diverge_bits"], first):  # worse than at init
                status = "diverged"
                reason = f"smoothed train loss {ema:.2f} bits/byte > {opts['diverge_bits']} at step {step}"
                break
            trial.report(ema, step)
            reported[step] = ema
            if pruning and trial.should_prune():
                status = "pruned"
                reason = (f"{type(trial.study.pruner).__name__} at step {step}: smoothed train loss {ema:.4f} "
                          "bits/byte is worse than the median of earlier trials")
                break
    val = None
    if status == "ok":
        vals = [r.evaluate(f) for r, f in zip(runs, forwards)]
        val = sum(vals) / len(vals)
        if not math.isfinite(val):
            status, reason = "diverged", f"validation loss is {val}"
    if status == "diverged":
        val = opts["cap"]
        if not spec.grid and step not in reported:  # a pruned trial's last report is what TPE learns from
            trial.report(max(opts["cap"], ema if ema is not None and math.isfinite(ema) else opts["cap"]), step)
    tokens = step * cfg0.batch * cfg0.context * len(runs)
    train_loss = sum(losses) / len(losses)
    attrs = {"status": status, "reason": reason, "val_bpb": val,
             "train_loss": train_loss if math.isfinite(train_loss) else None, "steps_done": step,
             "tokens": tokens, "flops": tokens * flops_per_token, "seconds": time.perf_counter() - start,
             "cpu_seconds": time.process_time() - cpu_start}
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    if status == "pruned" or (status == "diverged" and not spec.grid):
        return TrialState.PRUNED, None, attrs  # TPE/random learn from pruned trials; NaN would hide it
    return TrialState.COMPLETE, val, attrs


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _progress_line(spec: SweepSpec, recipe: str, trial, attrs: dict, done: int) -> str:
    params = " ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
    result = f"val {attrs['val_bpb']:.4f} bits/byte" if attrs["val_bpb"] is not None else "no final value"
    why = f" ({attrs['reason']})" if attrs["status"] != "ok" else ""
    return (f"[{recipe} {done}/{spec.budget(recipe)}] trial {trial.number}: {params} -> {result}, "
            f"{attrs['status']}{why}, {attrs['seconds']:.1f} s")


# ----------------------------------------------------------------------------------------------------------
# Results


def read_storage(where):
    """A storage from a run folder, a storage URL, or an optuna storage object."""
    if _is_url(where):
        return _open_storage(None, None, where)
    if not isinstance(where, (str, os.PathLike)):
        return where
    out = Path(where)
    if (out / JOURNAL).is_file():
        return _open_storage(None, out, None)
    manifest = out / MANIFEST
    if manifest.is_file():
        url = json.loads(manifest.read_text()).get("storage", "")
        if "***" in url:
            raise SweepError(f"{out} was swept with storage {url}; pass that URL (with its password) instead")
        if _is_url(url):
            return _open_storage(None, None, url)
    raise SweepError(f"{str(out)!r} holds no sweep ({JOURNAL} or {MANIFEST}); pass a run folder or a storage URL")


def records(out_dir_or_storage, spec: SweepSpec | None = None, *, unfinished: bool = False) -> list[dict]:
    """Tidy rows, one per finished trial (COMPLETE or PRUNED; with `unfinished`, also RUNNING/WAITING/FAIL).

    Keys: study, trial, state, recipe, width, seed (None for a multi-seed tpe/random trial), seeds, log2_lr,
    one key per search parameter of the sweep (None where it does not apply), val_bpb (bits/byte; the cap for a
    diverged trial, None if pruned), train_loss (nats, last step, seed mean), status (ok/diverged/pruned; for
    unfinished rows running/waiting/failed), reason, tokens, flops, seconds (wall), cpu_seconds (the worker
    process's CPU time: comparable on a busy machine), config (TrainConfig dict of the first seed). `spec` limits the
    rows to that sweep's studies; without it every lrm-mup sweep in the storage counts.
    """
    optuna = _optuna()
    from optuna.trial import TrialState

    storage = read_storage(out_dir_or_storage)
    rows = []
    keep = (TrialState.COMPLETE, TrialState.PRUNED) if not unfinished else tuple(TrialState)
    for summary in sorted(optuna.get_all_study_summaries(storage, include_best_trial=False),
                          key=lambda s: s._study_id):
        attrs = summary.user_attrs
        if "lrm_mup_sweep" not in attrs or (spec is not None and attrs["lrm_mup_sweep"] != spec.name):
            continue
        names = list((attrs.get("spec") or {}).get("search", {}))
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        for t in study.get_trials(deepcopy=False, states=keep):
            ua = t.user_attrs
            cfg = ua.get("config") or {}
            seeds = ua.get("seeds") or []
            status = ua.get("status") if t.state.is_finished() and t.state != TrialState.FAIL else None
            if status is None:
                status = {TrialState.PRUNED: "pruned", TrialState.FAIL: "failed", TrialState.RUNNING: "running",
                          TrialState.WAITING: "waiting"}.get(t.state, "ok")
            row = {"study": summary.study_name, "trial": t.number, "state": t.state.name,
                   "recipe": ua.get("recipe", attrs.get("recipe")), "width": ua.get("width"),
                   "seed": seeds[0] if len(seeds) == 1 else None, "seeds": seeds,
                   "log2_lr": math.log2(cfg["lr"]) if cfg.get("lr") else t.params.get("log2_lr")}
            row.update({n: t.params.get(n) for n in names if n != "log2_lr"})
            row.update({"val_bpb": ua.get("val_bpb"), "train_loss": _nan(ua.get("train_loss")), "status": status,
                        "reason": ua.get("reason"), "tokens": ua.get("tokens", 0), "flops": ua.get("flops", 0.0),
                        "seconds": ua.get("seconds", 0.0), "cpu_seconds": ua.get("cpu_seconds", 0.0), "config": cfg})
            rows.append(row)
    return rows


def _nan(v):
    return float("nan") if v is None else v


def _best_groups(rows: list[dict], names: list[str]):
    """(seed-mean val_bpb, rows) per parameter setting, best first; diverged runs count at the cap."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["state"] == "COMPLETE" and r["val_bpb"] is not None:
            groups.setdefault(tuple(r.get(n) for n in names), []).append(r)
    scored = [(sum(r["val_bpb"] for r in g) / len(g), g) for g in groups.values()]
    return sorted(scored, key=lambda s: s[0])


def best_params(out_dir_or_storage, spec: SweepSpec, *, width: int | None = None) -> dict[str, dict]:
    """{recipe: TrainConfig dict} of the best seed-mean val_bpb per recipe, at `width` (default: the sweep's
    smallest width, the proxy). Recipes with no finished trial at that width are left out."""
    width = width if width is not None else min(spec.widths)
    if width not in spec.widths:
        raise SweepError(f"width {width} is not one of the sweep's widths {list(spec.widths)}")
    rows = [r for r in records(out_dir_or_storage, spec) if r["width"] == width]
    names = ["log2_lr"] + [p.name for p in spec.search if p.name != "log2_lr"]
    best = {}
    for recipe in spec.recipes:
        scored = _best_groups([r for r in rows if r["recipe"] == recipe], names)
        if scored:
            best[recipe] = dict(scored[0][1][0]["config"])
    return best


def summary_lines(out_dir_or_storage, spec: SweepSpec) -> list[str]:
    """A short per-recipe summary: trials, divergences, cost and the best setting (per width for a grid)."""
    rows = records(out_dir_or_storage, spec)
    names = ["log2_lr"] + [p.name for p in spec.search if p.name != "log2_lr"]
    lines = []
    for recipe in spec.recipes:
        mine = [r for r in rows if r["recipe"] == recipe]
        counts = {s: sum(r["status"] == s for r in mine) for s in STATUSES}
        cost = (f"{len(mine)}/{spec.budget(recipe)} trials ({counts['diverged']} diverged, {counts['pruned']} pruned), "
                f"{sum(r['flops'] for r in mine):.3g} FLOPs, {sum(r['seconds'] for r in mine):.0f} s")
        bests = []
        for width in spec.widths:
            scored = _best_groups([r for r in mine if r["width"] == width], names)
            if scored:
                value, group = scored[0]
                shown = " ".join(f"{n}={_fmt(group[0][n])}" for n in names if group[0].get(n) is not None)
                bests.append(f"w{width}: {shown} -> {value:.4f}")
        lines.append(f"{recipe:8s} {cost}; best seed-mean val bits/byte: " + ("; ".join(bests) or "none yet"))
    return lines
