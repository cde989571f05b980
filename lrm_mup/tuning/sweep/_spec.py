"""The sweep file: its schema (see the package doc), parsed and validated into a `SweepSpec`."""
from __future__ import annotations

import json
import math
import os
import re
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..._names import DEPTH_RULES
from ...core.recipes import RECIPES
from ...core.roles import ROLE_KIND
from ...errors import ConfigError, SweepError
from ...training import TrainConfig

SAMPLERS = ("grid", "tpe", "random")
PRUNERS = ("none", "median")
JOURNAL = "optuna.journal"
MANIFEST = "sweep.json"
STATUSES = ("ok", "diverged", "pruned")
FIXED_RECIPES = tuple(r for r in RECIPES if r != "lrm")
_FIELDS = ("lr", "adam_lr", "mult_lr", "init_std", "weight_decay", "mult_wd", "clip")
# grid axes over the model's depth and depth rule (an LR-transfer grid across depth: sweeps/depth_transfer.toml);
# their values are kept as they are (an int, a name), not made floats
_DEPTH_FIELDS = ("depth", "depth_rule")
_ALPHA_ALIASES = {"in": "embedding", "out": "readout"}
_ALPHA_TARGETS = tuple(_ALPHA_ALIASES) + tuple(ROLE_KIND) + tuple(sorted(set(ROLE_KIND.values()) - set(ROLE_KIND)))
_TOP_LEVEL = ("name", "description", "recipes", "widths", "seeds", "steps", "model", "search", "sampler", "pruner",
              "trial", "heartbeat", "lr_times_weight_decay")
_TABLE_KEYS = {
    "sampler": {"grid": ("type", "seed"), "tpe": ("type", "seed", "trials", "startup_trials"),
                "random": ("type", "seed", "trials")},
    "pruner": {"none": ("type",), "median": ("type", "warmup_steps", "startup_trials", "interval")},
}
_TRIAL_DEFAULTS = {"report_every": None, "cap": 8.0, "diverge_bits": 10.0, "smoothing": 0.9}
_HEARTBEAT_DEFAULTS = {"interval": 60, "grace": None, "max_retry": 3}


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
        elif name in _DEPTH_FIELDS:
            cfg[name] = value
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
    lr_times_weight_decay: float | None = None  # fixed ηλ: every run's weight_decay = this / its lr (paper §3)

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
        cfg = {**self.model, "recipe": recipe, "width": width, "seed": seed, "steps": self.steps}
        cfg["alphas"] = dict(cfg.get("alphas", {}))
        by_name = {p.name: p for p in self.search}
        for name, value in (params or {}).items():
            by_name[name].apply(cfg, value)
        if self.lr_times_weight_decay is not None:  # η/λ varies with the LR, ηλ (the relative update size) does not
            cfg["weight_decay"] = self.lr_times_weight_decay / cfg.get("lr", TrainConfig.lr)
        return asdict(TrainConfig(**cfg))

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("name", "description", "steps", "model", "sampler", "pruner", "trial",
                                            "heartbeat")}
        d.update(recipes=list(self.recipes), widths=list(self.widths), seeds=list(self.seeds),
                 search={p.name: p.to_dict() for p in self.search})
        if self.lr_times_weight_decay is not None:  # absent otherwise: manifests of earlier sweeps stay equal
            d["lr_times_weight_decay"] = self.lr_times_weight_decay
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


class _Reader:
    """The parsed TOML of one sweep file, with the one-line failures that name the file and the key."""

    def __init__(self, raw: dict, source: str):
        self.raw, self.source = raw, source

    def fail(self, key: str, msg: str):
        raise SweepError(f"{self.source}: {key} {msg}")

    def table(self, key: str) -> dict:
        value = self.raw.get(key, {})
        if not isinstance(value, dict):
            self.fail(key, f"must be a table ([{key}]), not {value!r}")
        return dict(value)

    def check_keys(self, key: str, d: dict, allowed) -> None:
        for k in d:
            if k not in allowed:
                self.fail(f"{key}.{k}" if key else k, f"is not a known key; allowed: {', '.join(allowed)}")

    def int_list(self, key: str, minimum: int) -> tuple[int, ...]:
        value = self.raw.get(key)
        if not isinstance(value, list) or not value:
            self.fail(key, f"must be a non-empty list of integers, not {value!r}")
        for v in value:
            if not _is_int(v) or v < minimum:
                self.fail(key, f"has {v!r}: every entry must be an integer >= {minimum}")
        if len(set(value)) != len(value):
            self.fail(key, "has duplicate entries")
        return tuple(value)

    def positive_int(self, key: str, value, what: str = "a positive integer") -> None:
        if not _is_int(value) or value < 1:
            self.fail(key, f"must be {what}, not {value!r}")


def parse_sweep(raw: dict, source: str = "<sweep>") -> SweepSpec:
    """Validate a sweep file's parsed TOML (a dict); see the package docstring for the schema. Each table is read
    by its own function below; the first problem raises SweepError naming the file and the key."""
    r = _Reader(raw, source)
    r.check_keys("", raw, _TOP_LEVEL)
    name, description, recipes, widths, seeds, steps = _header(r)
    sampler = _sampler_table(r, widths)
    pruner = _pruner_table(r, sampler["type"], steps)
    trial = _trial_table(r, steps)
    heartbeat = _heartbeat_table(r)
    search, targets = _search_table(r, sampler["type"], recipes)
    product = _product(r, targets)
    model = _model_table(r, targets)
    spec = SweepSpec(name=name, recipes=tuple(recipes), widths=widths, seeds=seeds, steps=steps, model=model,
                     search=tuple(search), sampler=sampler, pruner=pruner, trial=trial, heartbeat=heartbeat,
                     description=description, path=source, lr_times_weight_decay=product)
    _check_every_run(r, spec)
    return spec


def _header(r: _Reader):
    """name, description, recipes, widths, seeds, steps."""
    raw = r.raw
    name = raw.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        r.fail("name", f"must be a name of letters, digits, '_', '.', '-' (it names the studies and runs/<name>), "
                       f"not {name!r}")
    description = raw.get("description", "")
    if not isinstance(description, str):
        r.fail("description", "must be a string")
    recipes = raw.get("recipes")
    if not isinstance(recipes, list) or not recipes:
        r.fail("recipes", f"must be a non-empty list of recipes ({', '.join(RECIPES)}), not {recipes!r}")
    for recipe in recipes:
        if recipe not in RECIPES:
            r.fail("recipes", f"has {recipe!r}; allowed: {', '.join(RECIPES)}")
    if len(set(recipes)) != len(recipes):
        r.fail("recipes", "has duplicate entries")
    widths, seeds = r.int_list("widths", 1), r.int_list("seeds", 0)
    steps = raw.get("steps", TrainConfig.steps)
    r.positive_int("steps", steps)
    return name, description, recipes, widths, seeds, steps


def _sampler_table(r: _Reader, widths: tuple[int, ...]) -> dict:
    sampler = r.table("sampler")
    kind = sampler.get("type")
    if kind not in SAMPLERS:
        r.fail("sampler.type", f"must be one of {', '.join(SAMPLERS)}, not {kind!r}")
    r.check_keys("sampler", sampler, _TABLE_KEYS["sampler"][kind])
    sampler.setdefault("seed", 0)
    if not _is_int(sampler["seed"]) or sampler["seed"] < 0:
        r.fail("sampler.seed", f"must be an integer >= 0, not {sampler['seed']!r}")
    if kind != "grid":
        r.positive_int("sampler.trials", sampler.get("trials"), "a positive integer (trials per recipe)")
        if len(widths) != 1:
            r.fail("widths", f"must list one proxy width for sampler {kind!r} (it tunes on one width), not {widths}")
    if kind == "tpe":
        sampler.setdefault("startup_trials", min(10, sampler["trials"]))
        if not _is_int(sampler["startup_trials"]) or sampler["startup_trials"] < 0:
            r.fail("sampler.startup_trials", f"must be an integer >= 0, not {sampler['startup_trials']!r}")
    return sampler


def _pruner_table(r: _Reader, sampler: str, steps: int) -> dict:
    pruner = r.table("pruner")
    pruner.setdefault("type", "none")
    if pruner["type"] not in PRUNERS:
        r.fail("pruner.type", f"must be one of {', '.join(PRUNERS)}, not {pruner['type']!r}")
    r.check_keys("pruner", pruner, _TABLE_KEYS["pruner"][pruner["type"]])
    if pruner["type"] != "none" and sampler == "grid":
        r.fail("pruner.type", "must be 'none' with sampler 'grid': a transfer grid needs every point's final loss")
    if pruner["type"] == "median":
        for k, default, minimum in (("warmup_steps", 0, 0), ("startup_trials", 5, 0), ("interval", 1, 1)):
            pruner.setdefault(k, default)
            if not _is_int(pruner[k]) or pruner[k] < minimum:
                r.fail(f"pruner.{k}", f"must be an integer >= {minimum}, not {pruner[k]!r}")
        if pruner["warmup_steps"] >= steps:
            r.fail("pruner.warmup_steps", f"must be below steps={steps}, or nothing is ever pruned")
    return pruner


def _trial_table(r: _Reader, steps: int) -> dict:
    trial = r.table("trial")
    r.check_keys("trial", trial, tuple(_TRIAL_DEFAULTS))
    trial = {**_TRIAL_DEFAULTS, **trial}
    if trial["report_every"] is None:
        trial["report_every"] = max(1, steps // 20)
    r.positive_int("trial.report_every", trial["report_every"])
    for k in ("cap", "diverge_bits"):
        if not _is_num(trial[k]) or trial[k] <= 0:
            r.fail(f"trial.{k}", f"must be a positive number (bits/byte), not {trial[k]!r}")
    if not _is_num(trial["smoothing"]) or not 0 <= trial["smoothing"] < 1:
        r.fail("trial.smoothing", f"must be a number in [0, 1), not {trial['smoothing']!r}")
    return trial


def _heartbeat_table(r: _Reader) -> dict:
    heartbeat = r.table("heartbeat")
    r.check_keys("heartbeat", heartbeat, tuple(_HEARTBEAT_DEFAULTS))
    heartbeat = {**_HEARTBEAT_DEFAULTS, **heartbeat}
    r.positive_int("heartbeat.interval", heartbeat["interval"], "a positive integer (seconds)")
    if heartbeat["grace"] is None:
        heartbeat["grace"] = 3 * heartbeat["interval"]
    if not _is_int(heartbeat["grace"]) or heartbeat["grace"] <= heartbeat["interval"]:
        r.fail("heartbeat.grace", f"must be an integer (seconds) above heartbeat.interval, not {heartbeat['grace']!r}")
    if not _is_int(heartbeat["max_retry"]) or heartbeat["max_retry"] < 0:
        r.fail("heartbeat.max_retry", f"must be an integer >= 0, not {heartbeat['max_retry']!r}")
    return heartbeat


def _search_table(r: _Reader, kind: str, recipes: list[str]) -> tuple[list[Param], dict[str, str]]:
    """The search space, and which config value each entry sets (two entries may not set the same one)."""
    search = []
    for key, entry in r.table("search").items():
        search.append(_parse_param(key, entry, kind, recipes, r.fail))
    if not search and kind != "grid":
        r.fail("search", f"is empty: sampler {kind!r} needs at least one range to search")
    targets = {}
    for p in search:
        target = p.name.removeprefix("log2_")
        target = "alpha_" + _ALPHA_ALIASES.get(target[6:], target[6:]) if target.startswith("alpha_") else target
        if target in targets:
            r.fail(f"search.{p.name}", f"sets the same value as search.{targets[target]}; keep one of them")
        targets[target] = p.name
    return search, targets


def _product(r: _Reader, targets: dict[str, str]) -> float | None:
    """`lr_times_weight_decay`: the fixed product ηλ of an S-sweep (weight_decay derived from each run's lr), or
    None. It sets weight_decay, so weight_decay may be neither searched nor set in [model]."""
    value = r.raw.get("lr_times_weight_decay")
    if value is None:
        return None
    if not _is_num(value) or value <= 0:
        r.fail("lr_times_weight_decay", f"must be a positive number (η·λ), not {value!r}")
    if "weight_decay" in targets:
        r.fail(f"search.{targets['weight_decay']}", "is set by lr_times_weight_decay (weight_decay = it / lr); "
                                                    "keep one")
    if "weight_decay" in r.table("model"):
        r.fail("model.weight_decay", "is set by lr_times_weight_decay (weight_decay = it / lr); keep one")
    return float(value)


def _model_table(r: _Reader, targets: dict[str, str]) -> dict:
    """TrainConfig fields shared by every trial; none of them may also be searched or set by the sweep. The model
    is named by `name` (`name = "hf:llama"`, as `--model`), or, as in older sweep files, by the field `model`."""
    model = dict(r.table("model"))
    if "name" in model:
        if "model" in model:
            r.fail("model.name", f"and model.model both name the model ({model['name']!r}, {model['model']!r}); "
                   "keep model.name")
        model["model"] = model.pop("name")
    names = [f.name for f in fields(TrainConfig)]
    for k, value in model.items():
        if k in ("recipe", "width", "seed", "steps"):
            top = "steps" if k == "steps" else k + "s"
            r.fail(f"model.{k}", f"is set by the sweep: use the top-level key {top!r}")
        if k not in names:
            known = ", ".join(n for n in names if n not in ("recipe", "width", "seed", "steps"))
            r.fail(f"model.{k}", f"is not a TrainConfig field; known: {known}")
        searched = targets.get(k) or (k == "alphas" and next((n for t, n in targets.items() if t.startswith("alpha_")),
                                                             None))
        if searched:
            r.fail(f"model.{k}", f"is also searched by search.{searched}; keep one")
        if isinstance(value, bool) and k != "compile":
            r.fail(f"model.{k}", f"must not be a boolean ({value!r})")
        if k == "alphas" and (not isinstance(value, dict) or not all(_is_num(v) for v in value.values())):
            r.fail("model.alphas", f"must be a table of role = number, not {value!r}")
    for k in ("data", "model_config", "tokenizer"):
        if k in model and model[k] is not None:
            model[k] = str(model[k])
    return model


def _check_every_run(r: _Reader, spec: SweepSpec) -> None:
    """Every run the sweep can make is a valid TrainConfig (checked before any trial trains)."""
    several = len(spec.widths) > 1 or len(spec.recipes) > 1
    for recipe in spec.recipes:
        sample = {p.name: (p.values[0] if p.values is not None else p.low) for p in spec.params_for(recipe)}
        for width in spec.widths:
            try:
                spec.config(recipe, width, spec.seeds[0], sample)
            except ConfigError as e:
                where = f"model (recipe {recipe!r}, width {width})" if several else "model"
                r.fail(where, f"is invalid: {e}")
            except (TypeError, ValueError) as e:
                r.fail("model", f"is invalid: {e}")


def _parse_param(key: str, entry, sampler: str, recipes: list[str], fail) -> Param:
    if key in _DEPTH_FIELDS:
        return _depth_param(key, entry, sampler, recipes, fail)
    base = key.removeprefix("log2_")
    if base.startswith("alpha_"):
        if base[6:] not in _ALPHA_TARGETS:
            fail(f"search.{key}", f"names no role or kind; allowed: alpha_{', alpha_'.join(_ALPHA_TARGETS)}")
        default = FIXED_RECIPES
    elif base in _FIELDS:
        default = ("lrm",) if base in ("mult_lr", "mult_wd") else tuple(RECIPES)
    else:
        fail(f"search.{key}", f"is not a searchable key; allowed: {', '.join(_FIELDS)}, alpha_in, alpha_out, "
                              "alpha_<role>, each optionally prefixed with log2_; depth, depth_rule (grid)")
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



def _depth_param(key: str, entry, sampler: str, recipes: list[str], fail) -> Param:
    """`depth = [2, 4, 8]` (positive ints) or `depth_rule = ["none", "complete"]`: grid axes for every recipe."""
    if sampler != "grid":
        fail(f"search.{key}", f"is a grid axis; sampler {sampler!r} tunes at one depth and rule (set it in [model])")
    if not isinstance(entry, list) or not entry or len(set(map(repr, entry))) != len(entry):
        fail(f"search.{key}", f"must be a list of distinct values, not {entry!r}")
    for v in entry:
        ok = _is_int(v) and v > 0 if key == "depth" else v in DEPTH_RULES
        if not ok:
            fail(f"search.{key}", f"has {v!r}: " + ("values must be positive integers" if key == "depth" else
                                                    f"allowed: {', '.join(DEPTH_RULES)}"))
    return Param(key, values=tuple(entry), recipes=tuple(recipes))
