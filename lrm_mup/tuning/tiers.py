"""The paper's tuning ablation (§5.1) and tuning-cost curves, from one tiers file (`sweeps/tiers.toml`).

A tiers file is a tpe/random sweep file on one proxy width whose search space is the FULL tier; the tiers are
derived from it (`tier_spec`), so the budgets are equal by construction (the sampler's `trials` per recipe and tier):

- NONE: no tuning, each recipe's defaults (the file's [model]) trained at the target;
- LR:   the file's LR entry only (``log2_lr`` or ``lr``), every other value at its default — for lrm the multipliers'
        LR then follows the matrices' (TrainConfig.mult_lr unset);
- FULL: every entry of the file for the recipe — for a fixed recipe (mup) the LR and its forward multipliers α
        (``alpha_*``), for lrm the LR and the multipliers' LR (``mult_lr``).

`run_tiers` runs the LR and FULL sweeps (`lrm_mup.tuning.sweep`), takes each study's best-so-far setting at `budgets`
tuning budgets (`analysis.cost_curve`, `analysis.budget_grid`, `analysis.budget_points`: FLOPs shared by every study,
so the recipes and tiers are compared at equal tuning compute), trains every distinct setting (the tier winners,
NONE's defaults, the budget points) at the target width with each seed (`lrm_mup.tuning.transfer.run_transfer`: one
transfer folder per setting, so an interrupted run continues), and optionally runs the LR tier directly at the target
width (`direct`) to price what the same quality costs without a proxy. Its numbers (`analysis.ablation_numbers`) go
to `<out>/ablation.json`; the report is `lrm_mup.report.write_ablation_report`'s.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from .. import analysis
from .._files import check_out_folder, write_text_atomic
from ..errors import SweepError
from . import sweep
from .sweep import SweepSpec
from .transfer import run_transfer

__all__ = ["TIERS", "LR_KEYS", "tier_spec", "searched", "check_tiers", "run_tiers", "load_ablation", "ABLATION"]

TIERS = analysis.TIERS
LR_KEYS = ("log2_lr", "lr")
ABLATION = "ablation.json"


def check_tiers(spec: SweepSpec) -> None:
    """A tiers file: a tpe/random sampler on one proxy width, one LR entry for every recipe, and for every recipe
    something more than the LR to tune in FULL (else FULL is LR again)."""
    where = spec.path or spec.name
    if spec.grid:
        raise SweepError(f"{where}: a tiers file needs sampler 'tpe' or 'random' (equal trial budgets), not 'grid'")
    lr = [p for p in spec.search if p.name in LR_KEYS]
    if len(lr) != 1 or set(lr[0].recipes) != set(spec.recipes):
        raise SweepError(f"{where}: a tiers file needs one LR entry (search.log2_lr or search.lr) for every recipe "
                         f"({', '.join(spec.recipes)})")
    for recipe in spec.recipes:
        if len(spec.params_for(recipe)) < 2:
            raise SweepError(f"{where}: recipe {recipe!r} tunes only its LR, so its FULL tier would be its LR tier: "
                             "add its multipliers' entries (alpha_* for fixed recipes, mult_lr for lrm)")


def tier_spec(spec: SweepSpec, tier: str, width: int | None = None) -> SweepSpec:
    """The sweep of one tier (LR or FULL) of a tiers file, named "<name>-<tier>" (and "-direct" at another `width`:
    the same tuning run directly at that width)."""
    check_tiers(spec)
    if tier not in ("LR", "FULL"):
        raise SweepError(f"tier {tier!r} has no sweep; tiers with one: LR, FULL (NONE trains the defaults)")
    search = spec.search if tier == "FULL" else tuple(p for p in spec.search if p.name in LR_KEYS)
    name = f"{spec.name}-{tier.lower()}" + ("" if width is None or width == spec.widths[0] else "-direct")
    return replace(spec, name=name, search=search, widths=(spec.widths[0] if width is None else width,))


def searched(spec: SweepSpec, tier: str, recipe: str) -> tuple[str, ...]:
    """The search keys the tier tunes for the recipe (NONE: none)."""
    return () if tier == "NONE" else tuple(p.name for p in tier_spec(spec, tier).params_for(recipe))


def _seed_losses(summary, width: int) -> list[float | None]:
    """Per seed, the target run's val bits/byte (None for a diverged or lossless one)."""
    return [x.val_bpb if x.status != "diverged" else None
            for x in sorted(summary.runs, key=lambda x: x.seed) if x.width == width and x.offset == 0]


def run_tiers(spec: SweepSpec, out_dir: str | os.PathLike, *, target: int, seeds: Sequence[int] = (0, 1),
              budgets: int = 4, budget_seeds: Sequence[int] | None = None, direct: Sequence[str] = (),
              direct_trials: int | None = None, workers: int = 1, log: Callable[[str], None] | None = print) -> dict:
    """Run the ablation (module doc) under `out_dir`: sweeps/<tier>/ (and sweeps/direct/), target/<setting>/, and
    `ablation.json`; returns its numbers. `seeds`: of the tier table's target runs; `budget_seeds`: of the other
    budget points' (default `seeds`; fewer make the cost curves cheaper, their early points then have no seed
    range). `direct`: recipes whose LR tier is also tuned at the target width (`direct_trials` trials, default the
    file's)."""
    check_tiers(spec)
    budget_seeds = list(seeds if budget_seeds is None else budget_seeds)
    if not seeds or not budget_seeds:
        raise SweepError("seeds: give at least one seed for the target runs")
    bad = [r for r in direct if r not in spec.recipes]
    if bad:
        raise SweepError(f"direct: {bad[0]!r} is not a recipe of {spec.path or spec.name} "
                         f"({', '.join(spec.recipes)})")
    if target <= spec.widths[0]:
        raise SweepError(f"target width {target} must be wider than the proxy width {spec.widths[0]}")
    out = check_out_folder(out_dir, "ablation folder")
    say = log or (lambda line: None)
    studies = {}
    for tier in ("LR", "FULL"):
        tspec = tier_spec(spec, tier)
        say(f"[tiers] {tier}: {tspec.name}, {tspec.sampler['trials']} trials per recipe at width {spec.widths[0]}")
        sweep.run_sweep(tspec, out / "sweeps" / tier, workers=workers, progress=log is not None)
        studies[tier] = sweep.records(out / "sweeps" / tier, tspec)
    plan = analysis.ablation_plan(studies, spec.recipes, budgets)
    # the tier table first (NONE, then each tier's winner), then the cost curves' other budget points
    settings = {f"{r} NONE": (spec.config(r, spec.widths[0], seeds[0]), seeds) for r in spec.recipes}
    for tier, trials in studies.items():
        for recipe in spec.recipes:
            best, first = analysis.best_trial(trials, recipe)
            if first is not None:
                settings[analysis.setting_key(first.study, first.trial)] = (best.config, seeds)
    for points in plan["points"].values():
        for p in points:
            if p.best_trial is not None:
                settings.setdefault(analysis.setting_key(p.study, p.best_trial), (p.config, budget_seeds))
    losses = {}
    for i, (key, (cfg, these)) in enumerate(settings.items()):
        say(f"[tiers] target {i + 1}/{len(settings)}: {key} at width {target}, seeds {list(these)}")
        folder = out / "target" / key.replace(" ", "-").replace("/", "-").replace("#", "-t")
        summary = run_transfer({cfg["recipe"]: cfg}, folder, widths=[target], lr_offsets=(), seeds=list(these),
                               include_proxy=False, workers=workers, log=None)
        losses[key] = _seed_losses(summary, target)
    direct_curves = {}
    for recipe in direct:
        dspec = tier_spec(spec, "LR", width=target)
        dspec = replace(dspec, recipes=(recipe,),
                        sampler={**dspec.sampler, "trials": direct_trials or dspec.sampler["trials"]})
        say(f"[tiers] direct: {recipe} LR tier tuned at width {target}, {dspec.sampler['trials']} trials")
        sweep.run_sweep(dspec, out / "sweeps" / "direct", workers=workers, progress=log is not None)
        direct_curves[f"{recipe} LR"] = analysis.cost_curve(
            [t for t in sweep.records(out / "sweeps" / "direct", dspec) if t.recipe == recipe])
    numbers = analysis.ablation_numbers(
        studies, plan, {(r, t): searched(spec, t, r) for r in spec.recipes for t in TIERS}, target, losses,
        direct_curves)
    numbers["spec"] = {"name": spec.name, "path": spec.path, "proxy_width": spec.widths[0], "steps": spec.steps,
                       "trials": spec.sampler["trials"], "sampler": spec.sampler["type"], "seeds": list(seeds),
                       "budget_seeds": budget_seeds, "model": spec.model}
    write_text_atomic(out / ABLATION, json.dumps(numbers, indent=1, allow_nan=False) + "\n")
    return numbers


def load_ablation(out_dir: str | os.PathLike) -> dict:
    """The numbers of a finished ablation folder (its ablation.json)."""
    path = Path(out_dir) / ABLATION
    if not path.is_file():
        raise SweepError(f"no {ABLATION} in {str(out_dir)!r}: run `lrm-mup ablation` into that folder first")
    return json.loads(path.read_text(encoding="utf-8"))
