"""`lrm-mup demo`: the whole story at CPU scale on the real corpus, one stage after the other.

1. coordinate check of every recipe of the sweep (`lrm_mup.tuning.coord_check`), report in OUT/coord_check/
2. the LR-transfer sweep of `sweeps/demo.toml` (`lrm_mup.tuning.sweep`), run folder OUT/sweep/
3. transfer of each recipe's best proxy settings to a wider target, with a direct LR sweep there, OUT/transfer/;
   then the paper's tuning tiers and the tuning-cost curves of mup and lrm (`demo_tiers`), OUT/tiers/
4. the tuning report, OUT/report/index.html (+ tuning.json), which LEADS with the tuning-cost curves and the tier
   table; the terminal gets the cost verdict and the tier table in a few lines before the transfer's verdict

The tiers in the demo (the paper's §5.1 ablation, `lrm_mup.tuning.tiers` for the equal-budget command) reuse the
demo's own runs wherever the tiers' definitions allow, so that they cost as little as possible on top of it:

- NONE = each recipe's defaults (the sweep file's [model], TrainConfig's LR; lrm's multipliers' LR = the AdamW
  LR / 4, core.optim.MULT_LR_RATIO): no proxy trial; trained at the target width with seeds 0 and 1.
- LR = the demo sweep's own log2-LR grid at the proxy width (the sweep's smallest: 6 trials at width 64 in the full
  demo, 3 at width 16 with --quick), in the order the sweep ran them. Its winner is exactly the setting the
  transfer stage already trained at the target with seed 0 (offset 0), so only seed 1 is new.
- FULL = the LR tier's trials, then 4 extra proxy trials at the LR tier's winning LR (`FULL_EXTRA`): mup a 2 x 2 grid
  of log2 α_in, α_out ∈ {−1, +1} (the forward multipliers; α = 1 is the LR tier's trial), lrm log2 mult_lr at the LR
  − 4, − 3, − 1, + 0 (the multipliers' LR; − 2 is the LR tier's default). A coordinate search, so FULL spends 10
  trials (7 with --quick) against LR's 6 (3): the cost curves price that difference in FLOPs. Its winner is trained
  at the target with seeds 0 and 1 unless it is the LR tier's winner (then reused).
- The cost curves: each tier's best-so-far setting at 3 budgets (after half the LR grid, the whole LR grid and the
  whole FULL study; the same FLOPs for every curve) trained at the target with seed 0 (a setting already trained is
  reused). FULL's curve is LR's until its extra trials start, so FULL's own points are those past the LR grid
  (the verdict never credits FULL with a setting the LR tier found).

Extra cost in the full demo (proxy 64, target 384 by default): 8 proxy trials at width 64 (about 4 s each) and at
most 12 target runs (NONE 2 × 2 seeds, the LR winners' seed 1, the FULL winners 2 × 2 seeds, the cost curves' first
budget 2 × 1 seed; fewer where settings coincide), about 56 CPU-s each at width 384, in rounds that keep both
workers busy: roughly 6-7 minutes on 2 idle cores on top of the ~15 the rest takes (benchmarks/RESULTS.md, issue 12,
item 5).

`quick=True` runs the same code path on tiny widths (16/32, target 64), depth 1, context 32 and a few steps: under a
minute, for tests. Every stage resumes: the sweep keeps its finished trials, the transfer and the tiers their
finished runs and the coordinate check its saved result, so re-running an interrupted demo continues it.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
import tomllib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from .. import analysis
from .._files import check_out_folder, json_clean, os_reason, write_text_atomic
from .._threads import available_cores, env_threads
from ..analysis import fit_exponent
from ..data import load_corpus
from ..errors import ConfigError, MissingError, SweepError
from ..models import model_builder
from ..records import SweepTrial
from ..report import ablation_lines, write_coord_check_report
from ..training import TrainConfig
from ..training.threads import threads_set
from ..tuning import sweep as sweep_mod
from ..tuning.coord_check import CoordCheckResult, coord_check
from ..tuning.tiers import ABLATION
from ..tuning.transfer import format_summary, run_transfer
from .tuning_report import report_verdict, tuning_report

DEMO_TOML = Path(__file__).resolve().parent / "demo.toml"  # package data: a wheel install has it

# what --quick changes in the sweep file (everything else, the recipes and the sampler included, stays)
QUICK_SWEEP = {"widths": [16, 32], "seeds": [0], "steps": 12}
QUICK_MODEL = {"base_width": 16, "delta_width": None, "depth": 1, "head_dim": 8, "heads": None, "context": 32,
               "batch": 4, "eval_batches": 2, "eval_every": 1000}
QUICK_LR = [-8.0, -6.0, -4.0]
# The demo's coordinate check is the default check (`lrm-mup coord-check`: widths base × 1..8, 3 seeds, batch 16,
# fresh batches). Measured over 5 seed sets (benchmarks/RESULTS.md, issue 12): the former small check (widths
# base × 1..4, 2 seeds, batch 8) was INCONCLUSIVE for every μP recipe in every seed set (12-21 series per recipe
# whose band straddles the 0.2 limit; 10 seeds still left 3), so it could not tell μP from a slow drift. The
# default check PASSes the μP recipes in 2 of 5 seed sets (INCONCLUSIVE on 2-3 series otherwise, never FAIL; 15
# seeds pooled PASS) and FAILs sp in every set; it costs about a minute more.
COORD = {"steps": 10, "seeds": 3, "last_steps": 5, "batch_size": 16, "context": 32, "factors": (1, 2, 4, 8)}
QUICK_COORD = {"steps": 3, "seeds": 1, "last_steps": 2, "batch_size": 4, "context": 16, "factors": (1, 2, 4)}
LR_OFFSETS = (-1, 1)


def demo_spec(raw: dict, *, quick: bool = False, data: str | None = None) -> dict:
    """The demo's sweep file (parsed TOML) -> what the demo runs: --quick shrinks it, --data points it elsewhere."""
    raw = {**raw, "model": dict(raw.get("model", {})), "search": dict(raw.get("search", {})),
           "sampler": dict(raw.get("sampler", {}))}
    if quick:
        raw.update(QUICK_SWEEP)
        raw["name"] = f"{raw.get('name', 'demo')}-quick"
        raw["description"] = (f"the quick demo (a smoke test): widths {QUICK_SWEEP['widths']} x log2 LR {QUICK_LR}, "
                              f"{QUICK_SWEEP['steps']} steps, tiny models")
        for k, v in QUICK_MODEL.items():
            if v is None:
                raw["model"].pop(k, None)
            else:
                raw["model"][k] = v
        raw["search"] = {"log2_lr": QUICK_LR}  # tiny models want larger LRs than the demo's grid
        raw.pop("pruner", None)
        raw.pop("trial", None)
        if raw["sampler"].get("type", "grid") != "grid":
            raw["sampler"]["trials"] = 3
            raw["sampler"].pop("startup_trials", None)
            raw["widths"] = raw["widths"][:1]
    if data is not None:
        raw["model"]["data"] = str(data)
    return raw


TRANSFER_BUDGET_S = 360  # the transfer stage's share of the demo's ~15 minutes (2 CPU cores)


def target_width(spec, records: list[SweepTrial], workers: int = 1,
                 budget_s: float = TRANSFER_BUDGET_S) -> tuple[int, float | None]:
    """One target width, wider than anything the sweep saw: the widest of 4 × proxy, 2 × and 1.5 × the widest sweep
    width (multiples of the proxy width) whose transfer stage (per recipe: the proxy run and 1 + len(LR_OFFSETS)
    target runs, over `workers`) fits in `budget_s` at the speed the sweep measured (`_seconds_model`); the
    narrowest candidate if none fits. Returns (width, estimated seconds of the stage or None)."""
    widths = sorted(spec.widths)
    proxy, widest = widths[0], widths[-1]
    raw = {4 * proxy, 2 * widest, proxy * round(1.5 * widest / proxy)}
    candidates = []
    for w in sorted((w for w in raw if w > widest), reverse=True):
        try:
            candidates.append((w, TrainConfig(**spec.config(spec.recipes[0], w, spec.seeds[0]))))
        except ConfigError:
            continue
    if not candidates:
        return 2 * widest, None
    seconds_of = _seconds_model(records)
    if seconds_of is None:
        return candidates[0][0], None

    def run_flops(cfg) -> float:
        with torch.device("meta"):
            per_token = cfg.build(cfg.width).flops_per_token()
        return per_token * cfg.steps * cfg.batch * cfg.context

    proxy_cfg = TrainConfig(**spec.config(spec.recipes[0], proxy, spec.seeds[0]))
    estimate = 0.0
    for w, cfg in candidates:
        per_recipe = seconds_of(run_flops(proxy_cfg)) + (1 + len(LR_OFFSETS)) * seconds_of(run_flops(cfg))
        estimate = len(spec.recipes) * per_recipe / min(workers, len(spec.recipes) * (2 + len(LR_OFFSETS)))
        if estimate <= budget_s:
            return w, estimate
    return candidates[-1][0], estimate


def _seconds_model(records: list[SweepTrial]) -> Callable[[float], float] | None:
    """Seconds of a run against its FLOPs, from the sweep's finished trials (per width: the mean seconds and FLOPs):
    a power law seconds = a·FLOPs^b fitted in log-log, since wider models use the cores better per FLOP (a constant
    seconds per FLOP, taken at the widest width, estimated 1800 s for a transfer stage that took 945 s). None
    without trials at two widths."""
    by_width: dict[int, list[SweepTrial]] = {}
    for r in records:
        if r.status == "ok" and r.flops and r.seconds:
            by_width.setdefault(r.width, []).append(r)
    flops = [sum(r.flops for r in rs) / len(rs) for rs in by_width.values()]
    seconds = [sum(r.seconds for r in rs) / len(rs) for rs in by_width.values()]
    fit = fit_exponent(flops, seconds)
    if fit.slope is None:
        return None
    return lambda f: 2.0 ** (fit.intercept + fit.slope * math.log2(f))


def _previous_target(transfer_dir: Path) -> int | None:
    """The target width of an earlier (maybe interrupted) transfer in this folder: where its LR sweep runs are."""
    found = [re.search(r"-w(\d+)-lr[+-][1-9]", p.name) for p in (transfer_dir / "runs").glob("*")]
    widths = [int(m[1]) for m in found if m]
    return max(widths) if widths else None


def _finished_trials(sweep_dir: Path, spec) -> int:
    """Trials of this sweep already finished in `sweep_dir` (0 for a fresh one)."""
    if not (sweep_dir / sweep_mod.JOURNAL).exists():
        return 0
    return sum(r.state in ("COMPLETE", "PRUNED") for r in sweep_mod.records(sweep_dir, spec))


# ----------------------------------------------------------------------------------------------------------
# the tuning tiers and tuning-cost curves of the demo, from its own sweep and transfer wherever the tiers allow

TIER_RECIPES = ("mup", "lrm")  # the paper's ablation (§5.1): fixed against learnable multipliers
TIER_SEEDS = (0, 1)            # the tier table's target runs (seed 0 of the LR tier is the transfer's own run)
BUDGET_SEEDS = (0,)            # the cost curves' other budget points
# FULL's extra proxy trials, at the LR tier's winning LR (log2 offsets): mup's forward multipliers α on the
# embedding and the readout (a 2 x 2 grid; α = 1 is the LR tier's trial), lrm's multipliers' LR around its default,
# the AdamW LR / 4 (core.optim.MULT_LR_RATIO: 2^-2 is the LR tier's trial; 2^-4..2^-2 were flat and 2^0 worse in the
# grid of benchmarks/RESULTS.md, issue 12: two steps below, two above). Equal extra budgets: 4 trials each.
FULL_EXTRA = {"mup": {"log2_alpha_in": (-1.0, 1.0), "log2_alpha_out": (-1.0, 1.0)},
              "lrm": {"log2_mult_lr": (-4.0, -3.0, -1.0, 0.0)}}
TIERS_DIR = "tiers"


def full_extra_spec(raw: dict, recipe: str, log2_lr: float):
    """The grid of FULL's extra proxy trials of `recipe` (`FULL_EXTRA`) at the LR tier's winning `log2_lr`, from the
    demo's sweep file `raw` (as `demo_spec` gives it): one width, the proxy; the file's model, steps and seeds."""
    proxy = min(raw["widths"])
    search = {"log2_lr": {"values": [log2_lr], "recipes": [recipe]}}
    for key, values in FULL_EXTRA[recipe].items():
        offsets = [log2_lr + v for v in values] if key == "log2_mult_lr" else list(values)
        search[key] = {"values": offsets, "recipes": [recipe]}
    name = f"{raw.get('name', 'demo')}-full-{recipe}"
    extra = {**raw, "name": name, "recipes": [recipe], "widths": [proxy], "search": search,
             "sampler": {"type": "grid", "seed": 0},
             "description": f"the demo's FULL tier for {recipe}: its extra trials at the LR tier's log2 LR {log2_lr:g}"}
    extra.pop("pruner", None)
    return sweep_mod.parse_sweep(extra, source=f"demo {name}")


def _canon(cfg: dict) -> str:
    """A setting's identity: its TrainConfig dict as canonical JSON (equal settings train the same runs)."""
    return json.dumps(json_clean(cfg), sort_keys=True)


def demo_tiers(spec, raw: dict, sweep_dir: Path, summary, out_dir: Path, *, target: int, workers: int = 1,
               log: Callable[[str], None] = print) -> dict | None:
    """The paper's tuning tiers and the tuning-cost curves of mup and lrm, from the demo's own runs wherever the
    tiers' definitions allow (module doc, "The tiers in the demo"); their numbers (`analysis.ablation_numbers`) in
    `out_dir`/ablation.json, returned. None (and a line saying why) when the sweep lacks mup or lrm or a winner."""
    recipes = [r for r in TIER_RECIPES if r in spec.recipes]
    if len(recipes) < len(TIER_RECIPES):
        log(f"  tiers skipped: the sweep runs {', '.join(spec.recipes)}, the tiers compare {', '.join(TIER_RECIPES)}")
        return None
    proxy = min(spec.widths)
    trials = sweep_mod.records(sweep_dir, spec)
    lr_tier = {r: [t for t in trials if t.recipe == r and t.width == proxy] for r in recipes}
    full_tier = {}
    for r in recipes:
        best, _ = analysis.best_trial(lr_tier[r], r, proxy)
        if best is None:
            log(f"  tiers skipped: no {r} trial converged at the proxy width {proxy}")
            return None
        xspec = full_extra_spec(raw, r, best.params["log2_lr"])
        log(f"  tiers: FULL {r}: {xspec.budget(r)} extra proxy trials at width {proxy} "
            f"({', '.join(FULL_EXTRA[r])}) at the LR tier's log2 LR {best.params['log2_lr']:g}")
        sweep_mod.run_sweep(xspec, out_dir / "full" / r, workers=workers, progress=False)
        # the FULL study: the LR tier's trials (its first stage) in the order they ran, then the extra ones
        lr_sorted = sorted(lr_tier[r], key=lambda t: t.trial)
        extra = sorted(sweep_mod.records(out_dir / "full" / r, xspec), key=lambda t: t.trial)
        study = f"{spec.name}-full/{r}"
        full_tier[r] = [replace(t, study=study, trial=i) for i, t in enumerate(lr_sorted + extra)]
    studies = {"LR": [t for r in recipes for t in lr_tier[r]], "FULL": [t for r in recipes for t in full_tier[r]]}
    curves = [analysis.cost_curve(ts) for ts in (*lr_tier.values(), *full_tier.values())]
    n_lr = min(len(lr_tier[r]) for r in recipes)
    n_full = max(len(full_tier[r]) for r in recipes)
    budgets = [max(c.points[k - 1].flops for c in curves if len(c.points) >= k)
               for k in sorted({max(1, n_lr // 2), n_lr, n_full})]
    plan = analysis.ablation_plan(studies, recipes, budgets=budgets)
    for r in recipes:  # FULL is LR until its extra trials start: its points before them are LR's, not its own
        plan["points"][f"{r} FULL"] = tuple(p for p in plan["points"][f"{r} FULL"] if p.trials > len(lr_tier[r]))

    # what each setting needs trained at the target: key -> (recipe, config, seeds)
    settings: dict[str, tuple[str, dict, tuple[int, ...]]] = {
        f"{r} NONE": (r, spec.config(r, proxy, spec.seeds[0]), TIER_SEEDS) for r in recipes}
    for tier, ts in studies.items():
        for r in recipes:
            best, first = analysis.best_trial(ts, r, proxy)
            settings[analysis.setting_key(first.study, first.trial)] = (r, best.config, TIER_SEEDS)
    for points in plan["points"].values():
        for p in points:
            if p.best_trial is not None:
                settings.setdefault(analysis.setting_key(p.study, p.best_trial), (p.recipe, p.config, BUDGET_SEEDS))
    # seed losses known already: the transfer's run of each recipe's proxy winner at the target (offset 0)
    known: dict[tuple[str, int], float | None] = {}
    for run in summary.runs:
        if run.width == target and run.offset == 0 and run.recipe in recipes and run.recipe in summary.best:
            known[(_canon(summary.best[run.recipe]), run.seed)] = run.val_bpb if run.status != "diverged" else None
    reused = len({(_canon(cfg), s) for _, cfg, seeds in settings.values() for s in seeds} & set(known))
    # the rest in rounds of at most one setting per recipe with the same seeds, one transfer folder per round
    todo: dict[str, tuple[str, dict, list[int], str]] = {}
    for key, (r, cfg, seeds) in settings.items():
        c = _canon(cfg)
        need = [s for s in seeds if (c, s) not in known]
        if c in todo:
            todo[c] = (*todo[c][:2], sorted(set(todo[c][2]) | set(need)), todo[c][3])
        elif need:
            todo[c] = (r, cfg, need, key)
    rounds: list[list[tuple[str, dict, list[int], str]]] = []
    for item in todo.values():
        slot = next((g for g in rounds if g[0][2] == item[2] and all(x[0] != item[0] for x in g)), None)
        if slot is None:
            rounds.append([item])
        else:
            slot.append(item)
    n_runs = sum(len(x[2]) for g in rounds for x in g)
    distinct = len({_canon(cfg) for _, cfg, _ in settings.values()})
    log(f"  tiers: {distinct} distinct settings at width {target} (NONE, the tier winners, the cost curves' budget "
        f"points): {n_runs} target runs of their own, {reused} reused from the transfer")
    for g in rounds:
        folder = out_dir / "target" / "+".join(re.sub(r"[^A-Za-z0-9.-]+", "-", x[3]) for x in g)
        res = run_transfer({r: cfg for r, cfg, _, _ in g}, folder, widths=[target], lr_offsets=(), seeds=g[0][2],
                           include_proxy=False, workers=workers, log=lambda line: log("  " + line))
        canon = {r: _canon(cfg) for r, cfg, _, _ in g}
        for run in res.runs:
            if run.width == target and run.offset == 0:
                known[(canon[run.recipe], run.seed)] = run.val_bpb if run.status != "diverged" else None
    losses = {key: [known[(_canon(cfg), s)] for s in seeds] for key, (_, cfg, seeds) in settings.items()}
    searched = {(r, "LR"): ("log2_lr",) for r in recipes}
    searched.update({(r, "FULL"): ("log2_lr", *FULL_EXTRA[r]) for r in recipes})
    numbers = analysis.ablation_numbers(studies, plan, searched, target, losses)
    numbers["spec"] = {
        "name": f"{spec.name} tiers", "proxy_width": proxy, "steps": spec.steps, "seeds": list(TIER_SEEDS),
        "budget_seeds": list(BUDGET_SEEDS), "lr_trials": n_lr, "full_trials": n_full, "reused_target_runs": reused,
        "target_runs": n_runs,
        "design": (f"From the demo's own runs: NONE = each recipe's defaults; LR = the demo sweep's {n_lr} log2-LR "
                   f"grid trials at the proxy width {proxy} (its winner's seed-0 target run is the transfer's); FULL "
                   f"= those trials then {n_full - n_lr} more at the LR winner (mup: α_in, α_out; lrm: the "
                   f"multipliers' LR), {n_full} trials; {spec.steps} steps; each tier's winner trained at width "
                   f"{target} with seeds {list(TIER_SEEDS)}, the cost curves' other budget points with seed "
                   f"{list(BUDGET_SEEDS)}")}
    write_text_atomic(out_dir / ABLATION, json.dumps(numbers, indent=1, allow_nan=False) + "\n")
    return numbers


def run_demo(out: str | os.PathLike = "runs/lrm-mup-demo", *, quick: bool = False, data: str | None = None,
             sweep_file: str | os.PathLike | None = None, workers: int | None = None, threads: int | None = None,
             log: Callable[[str], None] = print) -> Path:
    """Run the four stages (module doc) under `out`; returns the report's index.html. `workers`: processes of the
    sweep and of the transfer (default: 2 cores' worth; 1 with `quick`) and of the coordinate check (default:
    "auto", one per free core and more under load, `lrm_mup._threads.workers_for_load`; 1 with `quick`). `threads`: torch threads of every process
    (default: $LRM_MUP_THREADS, else the rule of lrm_mup._threads for this process and for the workers, said on
    stderr; one thread with `quick`, whose tiny models run fastest on one); this process's are put back after."""
    if workers is not None and not (isinstance(workers, int) and workers >= 1):
        raise SweepError(f"workers must be a positive integer, not {workers!r}")
    out = check_out_folder(out, "demo folder")  # a file, under a file, not writable: said before any work
    sweep_file = Path(sweep_file) if sweep_file is not None else DEMO_TOML
    if sweep_file.is_dir():
        raise SweepError(f"sweep file {str(sweep_file)!r} is a folder: pass --sweep FILE (a TOML file)")
    if not sweep_file.is_file():
        what = "is not a regular file" if os.path.lexists(sweep_file) else "does not exist"
        raise MissingError(f"sweep file {str(sweep_file)!r} {what}: pass --sweep FILE (a TOML file)")
    try:
        raw = tomllib.loads(sweep_file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise SweepError(f"sweep file {str(sweep_file)!r} is not a TOML text file (not UTF-8): pass "
                                   "--sweep FILE (a TOML file)") from None
    except OSError as e:
        raise SweepError(f"cannot read sweep file {str(sweep_file)!r}: {os_reason(e)}") from None
    except tomllib.TOMLDecodeError as e:
        raise SweepError(f"{sweep_file}: not valid TOML: {e}") from None
    raw = demo_spec(raw, quick=quick, data=data)
    spec = sweep_mod.parse_sweep(raw, source=str(sweep_file))
    corpus = load_corpus(spec.model.get("data"), progress=True)  # data that is missing or too short: said now
    corpus.check_context(TrainConfig(**spec.config(spec.recipes[0], spec.widths[0], spec.seeds[0])).context)
    corpus.check_context((QUICK_COORD if quick else COORD)["context"])
    if workers is None:
        cores = available_cores()
        workers = 1 if quick else max(1, min(2, cores))
    start = time.perf_counter()

    def stage(i: int, what: str) -> float:
        log(f"[demo {i}/4] {what} ({time.perf_counter() - start:.0f} s so far)")
        return time.perf_counter()

    one = quick and threads is None and env_threads() is None  # tiny models: one thread unless told otherwise
    with threads_set(1 if one else threads, rule=True, log=not quick, where="threads"):
        # 1. coordinate check of the sweep's model and recipes
        t = stage(1, "coordinate check")
        cc = QUICK_COORD if quick else COORD
        model = spec.model
        base = int(model.get("base_width", 64))
        delta = int(model.get("delta_width") or 2 * base)
        dims = {k: model[k] for k in ("depth", "head_dim", "heads") if model.get(k) is not None}
        if "heads" in dims:
            dims.setdefault("head_dim", None)
        if model.get("model_config") is not None:
            dims["config"] = model["model_config"]
        make = model_builder(TrainConfig(**{k: model[k] for k in ("model", "model_config") if k in model}).model)

        def build(width: int):
            return make(width, context=cc["context"], **dims)

        saved = out / "coord_check" / "coord_check.json"
        if saved.exists():
            result = CoordCheckResult.from_json(saved)
            log("  (done before: re-using its saved result)")
        else:
            result = coord_check(build, [base * f for f in cc["factors"]], base_width=base, delta_width=delta,
                                 recipes=list(spec.recipes), steps=cc["steps"], seeds=cc["seeds"],
                                 last_steps=cc["last_steps"], batch_size=cc["batch_size"], context=cc["context"],
                                 corpus=corpus, progress=True,
                                 workers=workers if workers is not None else 1 if quick else "auto")
        paths = write_coord_check_report(result, out / "coord_check")
        log(result.summary(worst=3))
        log(f"  coordinate check report: {paths['html']} ({time.perf_counter() - t:.0f} s)")

        # 2. the LR-transfer sweep
        total = sum(spec.budget(r) for r in spec.recipes)
        before = _finished_trials(out / "sweep", spec)
        t = stage(2, f"sweep {spec.name!r}: recipes {', '.join(spec.recipes)}, widths {list(spec.widths)}, "
                     f"{total} trials" + (f" ({before} done before)" if before else "")
                     + ("" if before else "; the time left follows each trial"))
        sweep_mod.run_sweep(spec, out / "sweep", workers=workers, progress=True)
        for line in sweep_mod.summary_lines(out / "sweep", spec):
            log("  " + line)
        log(f"  sweep done ({time.perf_counter() - t:.0f} s)")

        # 3. transfer to the target width
        width, estimate = target_width(spec, sweep_mod.records(out / "sweep", spec), workers)
        previous = _previous_target(out / "transfer")
        width = previous or width  # a resumed demo keeps the width it started with
        done = (out / "transfer" / "transfer.json").exists()  # written when every run of the transfer finished
        when = (" (done before)" if done else f", roughly {estimate:.0f} s (extrapolated from the sweep's trial times)"
                if estimate and not previous else "")
        t = stage(3, f"transfer to width {width} with a direct LR sweep ({', '.join(f'{o:+d}' for o in LR_OFFSETS)}"
                     " in log2)" + when)
        summary = run_transfer(out / "sweep", out / "transfer", widths=[width], lr_offsets=LR_OFFSETS, workers=workers,
                               log=lambda line: log("  " + line))
        log(format_summary(summary))
        log(f"  transfer done ({time.perf_counter() - t:.0f} s)")
        t = time.perf_counter()
        tiers = demo_tiers(spec, raw, out / "sweep", summary, out / TIERS_DIR, target=width, workers=workers, log=log)
        log(f"  tiers done ({time.perf_counter() - t:.0f} s)")

        # 4. the report, led by the tuning-cost curves and the tier table
        stage(4, "tuning report")
        path = tuning_report(out / "sweep", out / "transfer", out / "report", ablation=tiers)
        for line in ablation_lines(tiers) if tiers is not None else ():
            log(line)
    for line in report_verdict(path.parent):
        log(line)
    log(f"demo done in {time.perf_counter() - start:.0f} s. Reports:\n  {path}\n  {paths['html']}")
    return path

