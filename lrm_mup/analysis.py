"""What the records say: every number that answers "what is the best setting, and did it transfer?", computed here
and nowhere else, from typed records (`lrm_mup.records`) alone — no training, no Optuna, no files.

- sweep trials (`SweepTrial`): the one ranking of settings, status before loss (`rank`), the best setting per
  recipe at a width (`best_settings`; `lrm_mup.tuning.sweep.best_params`, the transfer's `load_best` and the report
  all use it), LR curves and their optimum per width (`lr_curves`), how far the optimum moves over widths and
  whether that counts as a transfer (`optimum_spread`, `SPREAD_OK`), what the sweep cost (`sweep_costs`);
- a transfer's runs (`TransferRun`): per recipe the target loss, the direct LR sweep's optimum and the gaps
  (`recipe_summary`);
- the report's numbers and verdict (`tuning_numbers`, `tuning_verdict`);
- the one log-log slope fit (`loglog_fit`, with two policies for bad points: `fit_exponent` drops them, `slope`
  makes the whole fit NaN or inf), used by the coordinate check and the multipliers' width scaling;
- the multipliers' width scaling from `MultiplierValues` records (`multiplier_scaling`, paper Fig. 5);
- the coordinate check's verdicts from its measurements (`seed_means`, `slopes`, `judge`, `CoordCheckResult`),
  each slope with its confidence band (`slope_band`, `t_quantile`): pass, inconclusive or fail.
"""
from __future__ import annotations

import fnmatch
import json
import math
import os
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ._files import dumps, write_text_atomic
from .errors import CoordCheckError, TransferError
from .records import (
    BestSetting,
    BudgetPoint,
    CoordCheckVerdict,
    CostCurve,
    CostPoint,
    CostVerdict,
    EquilibriumSeries,
    LRCurve,
    LRSweep,
    MultiplierScaling,
    MultiplierValues,
    OptimumSpread,
    QuantityScaling,
    RecipeCosts,
    RecipeTransfer,
    RecipeVerdict,
    SlopeFit,
    SweepCost,
    SweepTrial,
    TargetCost,
    TargetPoint,
    TierClaim,
    TierRow,
    TransferRun,
    TransferSummary,
    TuningVerdict,
)

__all__ = [
    "SPREAD_OK", "MU_P_RECIPES", "gmean", "loglog_fit", "fit_exponent", "slope", "usable", "trial_loss", "rank",
    "lr_curves", "optimum_spread", "best_settings", "best_configs", "sweep_costs", "recipe_summary",
    "tuning_verdict", "tuning_numbers", "PREDICTED", "HIDDEN_ROLES", "predicted_exponent", "multiplier_quantities",
    "multiplier_scaling", "QUANTITIES", "LOGITS", "Expected", "EXPECTED", "Verdict", "seed_means", "slopes",
    "judge", "CoordCheckResult", "VERDICT_LEVEL", "PASS", "INCONCLUSIVE", "FAIL", "t_central", "t_quantile",
    "SlopeBand", "slope_band", "seed_values", "TRANSFER_LOSS_OK", "TRANSFER_CRITERION", "SECONDS_NOISE",
    "grid_edge_optima",
    "timing_noise", "tuning_headline", "judgeable",
]

SPREAD_OK = 1.0                     # REFERENCE §3: optimum log2 LR spread over widths ≤ 1 for μP
MU_P_RECIPES = ("lr-only", "lr-wd", "mup", "lrm")


# ----------------------------------------------------------------------------------------------------------
# small numbers


def _finite(x) -> float | None:
    """JSON-safe number: NaN/inf become None."""
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def gmean(xs: Iterable[float]) -> float:
    """Geometric mean of |x|, exp(mean log|x|); NaN when there is no value or one is zero (no logarithm)."""
    xs = [abs(x) for x in xs]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs and all(x > 0 for x in xs) else float("nan")


# ----------------------------------------------------------------------------------------------------------
# the one log-log slope fit


def loglog_fit(widths: Sequence[float], values: Sequence[float]) -> SlopeFit:
    """Least squares of y = log2(value) on x = log2(width): value ∝ width^slope. With x̄, ȳ the means,
    slope = Σ(x−x̄)(y−ȳ) / Σ(x−x̄)², intercept = ȳ − slope·x̄, r² = 1 − Σ residual² / Σ(y−ȳ)² (1 for a flat y).
    Every value must be positive and finite (the callers' policies below decide what to do with others); fewer than
    two distinct widths fit nothing (slope None)."""
    pts = [(math.log2(w), math.log2(v)) for w, v in zip(widths, values, strict=True)]
    n = len(pts)
    if len({x for x, _ in pts}) < 2:
        return SlopeFit(None, None, None, n)
    mx, my = sum(x for x, _ in pts) / n, sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    slope_ = sum((x - mx) * (y - my) for x, y in pts) / sxx
    intercept = my - slope_ * mx
    ss_res = sum((y - intercept - slope_ * x) ** 2 for x, y in pts)
    ss_tot = sum((y - my) ** 2 for _, y in pts)
    return SlopeFit(slope_, intercept, 1 - ss_res / ss_tot if ss_tot > 0 else 1.0, n)


def fit_exponent(widths: Sequence[float], values: Sequence[float | None]) -> SlopeFit:
    """`loglog_fit` over the points with a positive, finite value (the others are left out): for series where a
    missing width is no reason to fit nothing, such as the multipliers' width scaling."""
    keep = [(w, v) for w, v in zip(widths, values) if v is not None and math.isfinite(v) and v > 0]
    return loglog_fit([w for w, _ in keep], [v for _, v in keep])


def slope(widths: Sequence[float], values: Sequence[float]) -> float:
    """The slope of `loglog_fit` where every point must count (the coordinate check): NaN if a value is non-finite
    or negative, +inf if one is zero (a quantity that vanishes at some widths is as width-dependent as it gets)."""
    values = [float(v) for v in values]
    if not all(math.isfinite(v) and v >= 0 for v in values):
        return math.nan
    if any(v == 0 for v in values):
        return math.inf
    fit = loglog_fit(widths, values)
    return math.nan if fit.slope is None else fit.slope


# ----------------------------------------------------------------------------------------------------------
# sweep trials


def usable(trials: Iterable[SweepTrial]) -> list[SweepTrial]:
    """Finished trials: status ok or diverged (pruned and unfinished trials say nothing about the final loss)."""
    return [t for t in trials if t.status in ("ok", "diverged")]


def trial_loss(trial: SweepTrial) -> float:
    """A trial's final validation loss; diverged (or non-finite) counts as +inf, as in an argmin over a grid."""
    value = trial.val_bpb
    if trial.status == "diverged" or value is None or not math.isfinite(value):
        return math.inf
    return float(value)


def rank(group: Sequence[SweepTrial]) -> tuple[bool, float]:
    """The one ranking of settings (a setting: the trials of one grid point, its seeds), lowest first: by status
    first, a setting with a diverged (or lossless) seed below every setting whose seeds all converged, then by the
    seed mean of the recorded value (`_score`: a diverged grid trial at the sweep's cap). Status first because the
    cap is not a loss: a uniform byte model's 8 bits/byte beats a converged run that is still at 8.018, and a
    diverged setting must never be transferred nor called the optimum. `best_settings` and `lr_curves` both rank
    with it, so the best setting and the LR curves' optimum agree."""
    return any(trial_loss(t) == math.inf for t in group), _mean([_score(t) for t in group])


def lr_curves(trials: Iterable[SweepTrial], axis: str = "width") -> dict[str, dict[int, LRCurve]]:
    """{recipe: {width: LRCurve}} over the usable trials, recipes and widths sorted: per log2 LR (rounded to 9
    digits) the seed mean of `trial_loss` (inf if a seed diverged; other search parameters are averaged over too).
    The optimum is the lowest-ranked point (`rank`: status, then the seed-mean final loss, REFERENCE §3), the
    smallest LR on a tie; None when no point has every seed converged.
    axis="depth" (an LR grid across depth, sweeps/depth_transfer.toml): {"RECIPE depth-rule RULE": {depth:
    LRCurve}}, the depth and rule read from each trial's config."""
    groups: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for t in usable(trials):
        if axis == "depth":
            series, x = f"{t.recipe} depth-rule {t.config.get('depth_rule', 'none')}", int(t.config["depth"])
        else:
            series, x = t.recipe, int(t.width)
        groups[series][x][round(float(t.log2_lr), 9)].append(t)
    out: dict[str, dict[int, LRCurve]] = {}
    for recipe in sorted(groups):
        out[recipe] = {}
        for width in sorted(groups[recipe]):
            points = groups[recipe][width]
            lrs = sorted(points)
            vals = [_mean([trial_loss(t) for t in points[x]]) for x in lrs]
            best = min(range(len(lrs)), key=lambda i: (rank(points[lrs[i]]), lrs[i]))
            ok = not rank(points[lrs[best]])[0]
            out[recipe][width] = LRCurve(tuple(lrs), tuple(vals), tuple(len(points[x]) for x in lrs),
                                         lrs[best] if ok else None, vals[best] if ok else None)
    return out


def optimum_spread(curves: dict[str, dict[int, LRCurve]], threshold: float = SPREAD_OK) -> dict[str, OptimumSpread]:
    """Per recipe: the optimum log2 LR per width and its spread, max − min over the widths with a finite optimum.
    The LR "transfers" when the spread is at most `threshold` (REFERENCE §3: ≤ 1 in log2 for μP)."""
    out = {}
    for recipe, by_width in curves.items():
        opts = {w: c.opt_log2_lr for w, c in by_width.items() if c.opt_log2_lr is not None}
        spread = max(opts.values()) - min(opts.values()) if len(opts) >= 2 else None
        widths = sorted(by_width)
        out[recipe] = OptimumSpread(tuple(widths), {w: opts.get(w) for w in widths}, spread,
                                    widths[-1] / widths[0] if widths else None,
                                    None if spread is None else spread <= threshold)
    return out


def _score(trial: SweepTrial) -> float:
    """What a trial counts in a best-setting mean: its val_bpb as the study recorded it (a diverged grid trial at
    the sweep's cap), +inf where that is not a finite number."""
    v = trial.val_bpb
    return float(v) if v is not None and math.isfinite(v) else math.inf


def best_settings(trials: Iterable[SweepTrial], width: int | None = None, *,
                  recipes: Sequence[str] | None = None) -> dict[str, BestSetting]:
    """The best setting per recipe at `width` (default: each recipe's smallest width with a finished trial, the
    proxy): the trials that completed with a value (state COMPLETE; a pruned trial has no final loss) are grouped by
    their search parameters (log2_lr and `params`: the seeds of one grid point form a group, a multi-seed tpe trial
    is one), the groups ordered by `rank` (every seed converged first, then the lowest seed mean), and the first
    wins (the first such group in trial order on a tie). Its config is that of the group's first trial. A diverged
    setting never wins: a recipe with no setting whose seeds all converged at the width has no best setting.
    `recipes` gives the order (and selection) of the result, default sorted; recipes without a best setting at the
    width are left out."""
    by_recipe: dict[str, list[SweepTrial]] = defaultdict(list)
    for t in trials:
        if t.state == "COMPLETE" and t.val_bpb is not None and t.recipe is not None and t.width is not None:
            by_recipe[t.recipe].append(t)
    out = {}
    for recipe in (recipes if recipes is not None else sorted(by_recipe)):
        mine = by_recipe.get(recipe, [])
        if not mine:
            continue
        w = width if width is not None else min(t.width for t in mine)
        groups: dict[tuple, list[SweepTrial]] = {}
        for t in mine:
            if t.width == w:
                groups.setdefault((t.log2_lr, *t.params.items()), []).append(t)
        if not groups:
            continue
        (failed, value), group = min(((rank(g), g) for g in groups.values()), key=lambda s: s[0])
        if failed:
            continue
        first = group[0]
        out[recipe] = BestSetting(recipe, w, {"log2_lr": first.log2_lr, **first.params}, value, len(group),
                                  dict(first.config))
    return out


def best_configs(trials: Iterable[SweepTrial], width: int | None = None, *,
                 recipes: Sequence[str] | None = None) -> dict[str, dict]:
    """{recipe: TrainConfig dict} of `best_settings`: what a transfer trains."""
    return {r: b.config for r, b in best_settings(trials, width, recipes=recipes).items()}


def sweep_costs(trials: Iterable[SweepTrial], proxy_width: dict[str, int] | None = None) -> dict[str, RecipeCosts]:
    """Per recipe (sorted): trials, tokens, FLOPs and seconds of the whole sweep and of its proxy-width part
    (default: the recipe's smallest width). Every trial counts, pruned and diverged included: they were paid for."""
    by_recipe: dict[str, list[SweepTrial]] = defaultdict(list)
    for t in trials:
        if t.recipe is not None:
            by_recipe[t.recipe].append(t)

    def total(ts: list[SweepTrial]) -> SweepCost:
        return SweepCost(len(ts), sum(t.tokens or 0 for t in ts), float(sum(t.flops or 0 for t in ts)),
                         float(sum(t.seconds or 0 for t in ts)))

    out = {}
    for recipe, ts in sorted(by_recipe.items()):
        widths = [int(t.width) for t in ts if t.width is not None]
        pw = (proxy_width or {}).get(recipe, min(widths) if widths else None)
        out[recipe] = RecipeCosts(pw, total(ts), total([t for t in ts if t.width is not None and int(t.width) == pw]))
    return out


# ----------------------------------------------------------------------------------------------------------
# tuning-cost curves and the paper's tuning ablation (tiers): from the tuning studies' trials and the target runs


def best_trial(trials: Sequence[SweepTrial], recipe: str, width: int | None = None
               ) -> tuple[BestSetting | None, SweepTrial | None]:
    """`best_settings` of one recipe, with the first trial of the winning setting (its number names the setting)."""
    best = best_settings(trials, width, recipes=[recipe]).get(recipe)
    if best is None:
        return None, None
    return best, next(t for t in trials if t.recipe == recipe and t.width == best.width and t.state == "COMPLETE"
                      and {"log2_lr": t.log2_lr, **t.params} == best.params)


def setting_key(study: str, trial: int) -> str:
    """The name of a tuned setting: its study and the number of its first trial ("tiers-full/lrm#7")."""
    return f"{study}#{trial}"


def cost_curve(trials: Iterable[SweepTrial]) -> CostCurve:
    """The best-so-far curve of one tuning study (one recipe at one width, e.g. a tpe/random study): its finished
    trials (COMPLETE or PRUNED; running, waiting and failed ones are left out) in trial order, each with the
    cumulative trials and FLOPs through it (pruned and diverged trials count: they were paid for) and the best
    setting so far by `best_settings` (the one ranking: a diverged setting never wins, a pruned trial has no final
    loss). Adding a setting can only lower the best value, so `best_val_bpb` never rises when every trial tries a new
    setting (a tpe/random study over ranges); a repeated setting is one group whose seed mean may move."""
    ts = sorted((t for t in trials if t.state in ("COMPLETE", "PRUNED")), key=lambda t: t.trial)
    studies = {(t.study, t.recipe) for t in ts}
    widths = {t.width for t in ts}
    if len(studies) != 1 or len(widths) != 1:
        raise TransferError(f"a cost curve is of one study at one width; got studies {sorted(map(str, studies))} "
                            f"and widths {sorted(map(str, widths))}")
    (study, recipe), (width,) = studies.pop(), widths
    points, flops = [], 0.0
    for i, t in enumerate(ts):
        flops += float(t.flops or 0)
        best, first = best_trial(ts[:i + 1], recipe, width)
        points.append(CostPoint(t.trial, t.status, _finite(t.val_bpb) if t.state == "COMPLETE" else None, i + 1, flops,
                                None if first is None else first.trial, None if best is None else best.val_bpb))
    return CostCurve(study, recipe, int(width), tuple(points))


def budget_grid(curves: Iterable[CostCurve], n: int = 4) -> tuple[float, ...]:
    """`n` tuning budgets (FLOPs) shared by every curve, spaced geometrically from the largest first-trial cost (every
    curve has spent at least one trial) to the smallest total (every curve has the whole budget): equal budgets for
    the recipes. One budget when those meet."""
    curves = [c for c in curves if c.points]
    if not curves or n < 1:
        return ()
    lo, hi = max(c.points[0].flops for c in curves), min(c.points[-1].flops for c in curves)
    if n == 1 or lo >= hi:
        return (hi,)
    return tuple(lo * (hi / lo) ** (i / (n - 1)) for i in range(n))


def budget_points(curve: CostCurve, trials: Sequence[SweepTrial], budgets: Iterable[float]) -> tuple[BudgetPoint, ...]:
    """The setting a tuner holds at each budget: the best-so-far of the last trial whose cumulative FLOPs are within
    the budget (a relative 1e-9 of rounding allowed), with its params and config from the study's `trials`; a budget
    below the first trial's cost holds no setting (best_trial None)."""
    by_number = {t.trial: t for t in trials if t.study == curve.study}
    out = []
    for b in budgets:
        spent = [p for p in curve.points if p.flops <= b * (1 + 1e-9)]
        p = spent[-1] if spent else None
        best = by_number[p.best_trial] if p is not None and p.best_trial is not None else None
        out.append(BudgetPoint(curve.study, curve.recipe, float(b), p.trials if p else 0, p.flops if p else 0.0,
                               None if best is None else best.trial,
                               {} if best is None else {"log2_lr": best.log2_lr, **best.params},
                               None if p is None else p.best_val_bpb, {} if best is None else dict(best.config)))
    return tuple(out)


def _seed_stats(values: Sequence[float | None]) -> tuple[tuple[float | None, ...], float | None, float | None]:
    """Per-seed losses (None: diverged or not finite), their mean (None if a seed diverged or none ran) and range."""
    vals = tuple(_finite(v) if v is not None else None for v in values)
    ok = [v for v in vals if v is not None]
    mean = _mean(ok) if ok and len(ok) == len(vals) else None
    return vals, mean, (max(ok) - min(ok) if len(ok) > 1 and mean is not None else None)


def target_point(budget: BudgetPoint, target_width: int, seed_val_bpb: Sequence[float | None]) -> TargetPoint:
    """A budget point's setting as trained at the target width (one loss per seed)."""
    vals, mean, spread = _seed_stats(seed_val_bpb)
    return TargetPoint(budget, int(target_width), vals, mean, spread)


def cost_verdict(curves: dict[str, Sequence[TargetPoint]], direct: tuple[str, CostCurve] | None = None,
                 target_loss: float | None = None) -> CostVerdict:
    """Which curve reaches `target_loss` with the least proxy FLOPs. Default target: the largest of the curves'
    best target losses, the quality that every curve reaches within its budget. Per curve, the first budget point
    (in budget order) whose seed-mean target loss is at most it gives the FLOPs and trials spent; the winner spent
    the fewest FLOPs. `direct` (a name and the cost curve of a study run at the target width itself): the FLOPs and
    trials until its best-so-far reached the same loss."""
    best = [min(v for p in pts if (v := p.val_bpb) is not None) for pts in curves.values()
            if any(p.val_bpb is not None for p in pts)]
    loss = target_loss if target_loss is not None else (max(best) if best else None)
    flops, n_trials = {}, {}
    for name, pts in curves.items():
        hit = next((p for p in sorted(pts, key=lambda p: p.budget.budget_flops)
                    if loss is not None and p.val_bpb is not None and p.val_bpb <= loss + 1e-12), None)
        flops[name] = None if hit is None else hit.budget.flops
        n_trials[name] = None if hit is None else hit.budget.trials
    at = {name: next(p.val_bpb for p in pts if p.budget.flops == flops[name] and p.val_bpb is not None)
          for name, pts in curves.items() if flops[name] is not None}
    reached = sorted((f, at[name], name) for name, f in flops.items() if f is not None)
    winner = reached[0][2] if reached else None  # the fewest FLOPs; on a tie, the lower target loss there
    d_name, d_flops, d_trials, d_budget = None, None, None, None
    if direct is not None:
        d_name, curve = direct
        d_budget = curve.points[-1].flops if curve.points else 0.0
        hit = next((p for p in curve.points if loss is not None and p.best_val_bpb is not None
                    and p.best_val_bpb <= loss + 1e-12), None)
        d_flops, d_trials = (hit.flops, hit.trials) if hit else (None, None)
    if winner is None:
        sentence = "No curve reached a finite target loss: no verdict."
    else:
        others = ", ".join(f"{n} {f:.3g}" if f is not None else f"{n} not within its budget"
                           for n, f in flops.items() if n != winner)
        sentence = (f"To reach {loss:.4f} bits/byte at width {next(iter(curves.values()))[0].target_width}, "
                    f"{winner} needs the least tuning compute: {flops[winner]:.3g} proxy FLOPs "
                    f"({_trials(n_trials[winner])})" + (f"; {others}" if others else "") + ".")
        if direct is not None:
            sentence += (f" Tuning {d_name} directly at the target width reached it after {d_flops:.3g} FLOPs "
                         f"({_trials(d_trials)}), {d_flops / flops[winner]:.1f}x the winner's proxy cost."
                         if d_flops is not None else
                         f" Tuning {d_name} directly at the target width did not reach it within {d_budget:.3g} FLOPs "
                         f"({_trials(len(curve.points))}, {d_budget / flops[winner]:.1f}x the winner's proxy cost).")
    ranges = [p.seed_range_bpb for pts in curves.values() for p in pts if p.seed_range_bpb is not None]
    single = sum(len(p.seed_val_bpb) == 1 for pts in curves.values() for p in pts)
    if winner is not None and (ranges or single):
        sentence += (f" Seed-to-seed range at the target: up to {max(ranges):.4f} bits/byte, so differences below it "
                     "are noise" if ranges else " Seed noise is not measured") + \
            (f"; {single} budget point(s) have one seed." if single else ".")
    return CostVerdict(_finite(loss) if loss is not None else None, flops, n_trials, winner, d_name, d_flops,
                       d_trials, d_budget, sentence)


def _trials(n: int) -> str:
    return f"{n} trial" + ("" if n == 1 else "s")


TIERS = ("NONE", "LR", "FULL")


def tier_row(recipe: str, tier: str, searched: Sequence[str], trials: Sequence[SweepTrial], target_width: int | None,
             seed_val_bpb: Sequence[float | None]) -> TierRow:
    """One row of the tier table: the tier's winning setting at the proxy (`best_settings` of its study's trials;
    none for NONE, which trains the defaults), the study's trials and FLOPs, and the winner's per-seed target losses
    with their mean and range."""
    mine = [t for t in trials if t.recipe == recipe and t.state in ("COMPLETE", "PRUNED")]
    best = best_settings(mine, recipes=[recipe]).get(recipe) if mine else None
    vals, mean, spread = _seed_stats(seed_val_bpb)
    return TierRow(recipe, tier, tuple(searched), len(mine), float(sum(t.flops or 0 for t in mine)),
                   {} if best is None else dict(best.params), None if best is None else best.val_bpb,
                   target_width, vals, mean, spread)


def _compare(claim: str, rows: dict[tuple[str, str], TierRow], a: tuple[str, str], b: tuple[str, str],
             kind: str) -> TierClaim | None:
    """`kind` "<": a beats b; "≈": a and b agree; judged against the larger of their two seed ranges: a difference
    within it is open for "<" and agreement for "≈" (None when a range is not measured: open)."""
    ra, rb = rows.get(a), rows.get(b)
    if ra is None or rb is None or ra.val_bpb is None or rb.val_bpb is None:
        return None
    d = ra.val_bpb - rb.val_bpb
    ranges = [r.seed_range_bpb for r in (ra, rb)]
    noise = max(ranges) if all(x is not None for x in ranges) else None
    if noise is None:
        holds = None
    elif kind == "≈":
        holds = abs(d) <= noise
    else:
        holds = True if d < -noise else False if d > noise else None
    return TierClaim(claim, " ".join(a), " ".join(b), d, noise, holds)


def tier_claims(rows: Iterable[TierRow], fixed: str = "mup", learned: str = "lrm") -> tuple[TierClaim, ...]:
    """The paper's tier claims (§5.1, REFERENCE §1) checked on a tier table: untuned fixed multipliers lose to fixed
    + tuned LR; fixed + tuned LR ≈ LRM untuned; LRM + tuned LR beats fixed + tuned LR; and, per recipe, whether the
    FULL tier adds to the LR tier. Each difference is judged against the seed range (`_compare`)."""
    by = {(r.recipe, r.tier): r for r in rows}
    checks = [
        ("untuned fixed multipliers are worse than fixed + tuned LR", (fixed, "LR"), (fixed, "NONE"), "<"),
        ("fixed multipliers + tuned LR ≈ LRM untuned", (fixed, "LR"), (learned, "NONE"), "≈"),
        ("LRM + tuned LR beats fixed multipliers + tuned LR", (learned, "LR"), (fixed, "LR"), "<"),
        ("LRM + tuned LR beats LRM untuned", (learned, "LR"), (learned, "NONE"), "<"),
        (f"{fixed}: tuning the forward multipliers α too beats tuning the LR alone", (fixed, "FULL"), (fixed, "LR"),
         "<"),
        (f"{learned}: tuning the multipliers' LR too beats tuning the LR alone", (learned, "FULL"), (learned, "LR"),
         "<"),
        ("fully tuned LRM beats fully tuned fixed multipliers", (learned, "FULL"), (fixed, "FULL"), "<"),
    ]
    return tuple(c for c in (_compare(claim, by, a, b, k) for claim, a, b, k in checks) if c is not None)


def ablation_plan(studies: dict[str, Sequence[SweepTrial]], recipes: Sequence[str], n_budgets: int = 4,
                  budgets: Sequence[float] | None = None) -> dict:
    """What the ablation trains at the target, from its tuning studies ({tier: trials}): per curve "<recipe> <tier>"
    its `cost_curve`, the shared `budget_grid` (or the given `budgets`, FLOPs: the demo's, whose FULL studies run
    past the LR ones) and each curve's `budget_points` there."""
    curves = {f"{r} {tier}": cost_curve([t for t in trials if t.recipe == r])
              for tier, trials in studies.items() for r in recipes if any(t.recipe == r for t in trials)}
    budgets = budget_grid(curves.values(), n_budgets) if budgets is None else tuple(float(b) for b in budgets)
    points = {label: budget_points(c, studies[label.split(" ")[1]], budgets) for label, c in curves.items()}
    return {"curves": curves, "budgets": budgets, "points": points}


def ablation_numbers(studies: dict[str, Sequence[SweepTrial]], plan: dict, searched: dict[tuple[str, str], Sequence],
                     target_width: int, losses: dict[str, Sequence[float | None]],
                     direct: dict[str, CostCurve] | None = None) -> dict:
    """Every number of the ablation report as strict JSON: "tiers" (one `tier_row` per recipe and tier; NONE's
    target losses under "<recipe> NONE" in `losses`, a tuned tier's under its winner's `setting_key`), "claims"
    (`tier_claims`), "curves" (`cost_curve` per "<recipe> <tier>"), "budgets", "targets" (per curve, its budget
    points as trained at the target: `target_point`), "direct" (cost curves of studies tuned at the target width
    itself) and "verdict" (`cost_verdict` against the first direct curve)."""
    recipes = list(dict.fromkeys(label.split(" ")[0] for label in plan["curves"]))
    rows = []
    for r in recipes:
        for tier in TIERS:
            trials = [t for t in studies.get(tier, []) if t.recipe == r]
            if tier == "NONE":
                key = f"{r} NONE"
            else:
                first = best_trial(trials, r)[1]
                key = None if first is None else setting_key(first.study, first.trial)
            rows.append(tier_row(r, tier, tuple(searched.get((r, tier), ())), trials, target_width,
                                 losses.get(key, ()) if key else ()))
    targets = {label: tuple(target_point(p, target_width, losses.get(setting_key(p.study, p.best_trial), ())
                                         if p.best_trial is not None else ()) for p in pts)
               for label, pts in plan["points"].items()}
    direct = direct or {}
    verdict = cost_verdict(targets, next(iter(direct.items()), None))
    return json.loads(dumps({
        "target_width": target_width, "tiers": [r.to_dict() for r in rows],
        "claims": [c.to_dict() for c in tier_claims(rows)],
        "curves": {k: c.to_dict() for k, c in plan["curves"].items()}, "budgets": list(plan["budgets"]),
        "targets": {k: [p.to_dict() for p in pts] for k, pts in targets.items()},
        "direct": {k: c.to_dict() for k, c in direct.items()}, "verdict": verdict.to_dict()}))


__all__ += ["best_trial", "setting_key", "ablation_plan", "ablation_numbers", "cost_curve", "budget_grid", "budget_points", "target_point", "cost_verdict", "TIERS", "tier_row",
            "tier_claims"]


# ----------------------------------------------------------------------------------------------------------
# a transfer's runs


def recipe_summary(cfg: dict, runs: Sequence[TransferRun]) -> RecipeTransfer:
    """What one recipe's transfer runs say. Seed means per (width, depth, offset), a diverged or lossless run counting
    +inf; the target is the largest width, at the largest depth there (a run without a depth, written before transfer
    across depth, is at the proxy's `cfg["depth"]`), and its direct LR sweep (offsets from the transferred LR
    `cfg["lr"]`) gives the target's own optimum: lr_gap_log2 = −(best offset) = transferred − optimum, loss_gap_bpb =
    loss at the transferred LR − the optimum's (≥ 0), both only where the target has a sweep; an optimum at the
    sweep's edge (not at offset 0) makes the gap a lower bound. `val_bpb_by_width` is at the target depth,
    `val_bpb_by_depth` (only when the runs have more than one depth) at the target width."""
    proxy_depth = int(cfg.get("depth", 2))
    points: dict[tuple[int, int, int], list[TransferRun]] = defaultdict(list)
    for x in runs:
        points[(x.width, x.depth if x.depth is not None else proxy_depth, x.offset)].append(x)
    loss = {k: _mean([v.val_bpb if v.val_bpb is not None and v.status != "diverged" else math.inf for v in vs])
            for k, vs in points.items()}
    target, target_depth = max((w, d) for w, d, _ in points)
    widths = sorted({w for w, d, _ in points if d == target_depth})
    depths = sorted({d for w, d, _ in points if w == target})
    sweep = sorted((o, loss[(w, d, o)]) for (w, d, o) in points if (w, d) == (target, target_depth))
    transferred_log2 = math.log2(cfg["lr"])
    best_offset, best_loss = min(sweep, key=lambda t: t[1])
    at_zero = loss.get((target, target_depth, 0), math.inf)
    have_sweep = len(sweep) > 1
    found = have_sweep and math.isfinite(best_loss)
    target_runs = points.get((target, target_depth, 0), [])
    across_depth = len({d for _, d, _ in points}) > 1
    return RecipeTransfer(
        proxy_width=cfg["width"],
        target_width=target,
        transferred_log2_lr=transferred_log2,
        val_bpb_by_width={str(w): _finite(loss.get((w, target_depth, 0), math.nan)) for w in widths},
        target_val_bpb=_finite(at_zero),
        lr_sweep=LRSweep(tuple(transferred_log2 + o for o, _ in sweep), tuple(o for o, _ in sweep),
                         tuple(_finite(v) for _, v in sweep)),
        target_optimum_log2_lr=transferred_log2 + best_offset if found else None,
        target_optimum_val_bpb=_finite(best_loss) if have_sweep else None,
        lr_gap_log2=-best_offset if found else None,
        loss_gap_bpb=_finite(at_zero - best_loss) if have_sweep else None,
        optimum_at_edge=have_sweep and best_offset in (sweep[0][0], sweep[-1][0]) and best_offset != 0,
        target_cost=TargetCost(len(target_runs), *(_mean([getattr(v, k) for v in target_runs])
                                                   for k in ("tokens", "flops", "seconds"))),
        status={x.name: x.status for x in runs},
        proxy_depth=proxy_depth,
        target_depth=target_depth,
        depth_rule=cfg.get("depth_rule", "none"),
        base_depth=cfg.get("base_depth") or proxy_depth,
        val_bpb_by_depth={str(d): _finite(loss.get((target, d, 0), math.nan)) for d in depths} if across_depth else {},
    )


# ----------------------------------------------------------------------------------------------------------
# width scaling of the learned multipliers (paper Fig. 5)

# paper's width exponent of the total multiplier (Table 1 "through the multiplier", Fig. 5); Muon's spectral update
# needs no width factor on hidden matrices (core/recipes.py), so their prediction under Muon is d⁰
# the SSM's readout-like segments (B, C; dt at a fixed number of SSM heads) are d⁻¹ like the LM head, under Muon
# too; its hidden ones (z, x, out; dt where widening adds SSM heads) like every hidden matrix: the paper's dt ∝ d⁻¹
PREDICTED = {"embedding": 0.0, "input": 0.0, "readout": -1.0, "query×key": -2.0,
             "ssm_b": -1.0, "ssm_c": -1.0, "ssm_dt_readout": -1.0}
HIDDEN_ROLES = ("query", "key", "value", "attn_out", "mlp_gate", "mlp_up", "mlp_down", "hidden",
                "ssm_z", "ssm_x", "ssm_dt", "ssm_out", "ssm_out_normed")


def predicted_exponent(name: str, optimizer: str = "adamw") -> float | None:
    """The paper's width exponent of the total multiplier of a quantity (None for per-kind learned series)."""
    if "." in name:
        return None
    if name in PREDICTED:
        return PREDICTED[name]
    if name in HIDDEN_ROLES:
        return 0.0 if optimizer == "muon" else -1.0
    return None


def multiplier_quantities(values: MultiplierValues) -> dict[str, dict[str, float | None]]:
    """One run's quantities {name: {"total", "fixed", "learned"}}: per role (geometric mean over the role's layers),
    per role and multiplier kind (learned only), and the query·key product per block (geometric mean over blocks)."""
    by_role: dict[str, list] = defaultdict(list)
    for layer in values.layers:
        by_role[layer.role].append(layer)
    out: dict[str, dict[str, float | None]] = {}
    for role, layers in by_role.items():
        if not any(layer.learned for layer in layers):
            continue  # no learnable multiplier on this role under the placement
        out[role] = {"total": gmean([x.total for x in layers]), "fixed": gmean([x.fixed_mult for x in layers]),
                     "learned": gmean([x.learned_product for x in layers])}
        for kind in ("scale", "row", "col"):
            vals = [x.learned[kind] for x in layers if kind in x.learned]
            if vals:
                out[f"{role}.{kind}"] = {"total": None, "fixed": None, "learned": gmean(vals)}
    q = {x.block: x for x in by_role.get("query", [])}
    k = {x.block: x for x in by_role.get("key", [])}
    blocks = sorted(set(q) & set(k))
    if blocks and any(q[b].learned or k[b].learned for b in blocks):
        out["query×key"] = {key: gmean([getattr(q[b], src) * getattr(k[b], src) for b in blocks])
                            for key, src in (("total", "total"), ("fixed", "fixed_mult"),
                                             ("learned", "learned_product"))}
    return out


def multiplier_scaling(values: Sequence[MultiplierValues]) -> MultiplierScaling:
    """Width-scaling fits of the learned multipliers over `lrm` runs at ≥ 2 widths, one optimizer and placement
    (runs at one width — seeds — are averaged geometrically): per quantity the total, fixed μP and learned values
    per width and the `fit_exponent` slope of each, next to the paper's prediction."""
    if not values:
        raise TransferError("no lrm run folders given for the multiplier width-scaling fit")
    combos = {(v.optimizer, v.placement) for v in values}
    if len(combos) > 1:
        raise TransferError(f"runs mix optimizers/placements {sorted(combos)}: fit one combination at a time")
    optimizer, placement = combos.pop()
    per_width: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for v in values:
        for name, q in multiplier_quantities(v).items():
            for key, x in q.items():
                if x is not None:
                    per_width[name][v.width][key].append(x)
    widths = sorted({v.width for v in values})
    if len(widths) < 2:
        raise TransferError(f"the width-scaling fit needs lrm runs at ≥ 2 widths, got {widths}")
    quantities = {}
    for name in sorted(per_width):
        ws = [w for w in widths if w in per_width[name]]
        series = {key: tuple(_finite(gmean(per_width[name][w].get(key, []))) for w in ws)
                  for key in ("total", "fixed", "learned")}
        fits = {key: fit_exponent(ws, series[key]) for key in series}
        quantities[name] = QuantityScaling(tuple(ws), series["total"], series["fixed"], series["learned"],
                                           fits["total"].slope, fits["fixed"].slope, fits["learned"].slope,
                                           fits["total"].r2, fits["learned"].r2, predicted_exponent(name, optimizer))
    return MultiplierScaling(tuple(widths), tuple(v.run for v in values), optimizer, placement, quantities)


# ----------------------------------------------------------------------------------------------------------
# the tuning report's numbers and verdict


def tuning_verdict(curves: dict[str, dict[int, LRCurve]], spread: dict[str, OptimumSpread],
                   target: dict[str, RecipeTransfer] | None = None) -> TuningVerdict:
    """Rank the recipes where it counts: at the transfer's target width, each at its transferred LR (with a
    transfer), else at the sweep's widest width, each at its own optimum there. The winner has the lowest finite
    loss; its margin is the runner-up's loss minus its own. Per recipe: its spread (and, for μP recipes, whether it
    is within `SPREAD_OK`) and the transfer's gaps. `seeds`: the fewest seeds behind a ranked point."""
    target = target or {}
    if target:
        scores = {r: (s.target_val_bpb, s.target_width) for r, s in target.items()}
        where = "target"
    else:
        scores = {}
        for r, by_width in curves.items():
            w = max(by_width)
            scores[r] = (by_width[w].opt_val_bpb, w)
        where = "widest sweep width"
    ranked = sorted((v, r) for r, (v, _) in scores.items() if v is not None and math.isfinite(v))
    per_recipe = {}
    for r in sorted(set(spread) | set(target)):
        s, t = spread.get(r), target.get(r)
        mu_p = r in MU_P_RECIPES
        per_recipe[r] = RecipeVerdict(
            mu_p=mu_p, spread=s.spread if s else None, widths=s.widths if s else None,
            transfers=s.transfers if s and mu_p else None, target_val_bpb=scores.get(r, (None,))[0],
            lr_gap_log2=t.lr_gap_log2 if t else None, loss_gap_bpb=t.loss_gap_bpb if t else None,
            optimum_at_edge=t.optimum_at_edge if t else None)
    if target:
        seeds = min(s.target_cost.runs or 1 for s in target.values())
    else:
        seeds = min((n for by_width in curves.values() for c in by_width.values() for n in c.seeds), default=1)
    won = {}
    if ranked:
        best_v, best = ranked[0]
        won = {"winner": best, "target_width": scores[best][1], "winner_val_bpb": best_v}
        if len(ranked) > 1:
            won.update(runner_up=ranked[1][1], margin_bpb=ranked[1][0] - best_v)
    return TuningVerdict(where, SPREAD_OK, tuple(r for _, r in ranked), per_recipe, seeds, **won)


def tuning_numbers(trials: Sequence[SweepTrial], summary: TransferSummary | None = None) -> dict:
    """Every number of the tuning report, as the strict-JSON document tuning.json holds (string keys, non-finite
    numbers as null): "sweep" (LR curves and optima per width, spreads, trial count and statuses), "costs" (the
    sweep's per recipe, a target run's, and their ratios), "transfer" (the summary's recipes, runs and offsets),
    "multipliers" (their width scaling, or {"error": why}) and "verdict" (`tuning_verdict`)."""
    curves = lr_curves(trials)
    spread = optimum_spread(curves)
    target = summary.recipes if summary is not None else {}
    proxy_width = {r: s.proxy_width for r, s in target.items()}
    costs = {}
    for recipe, c in sweep_costs(trials, proxy_width or None).items():
        t = target[recipe].target_cost if recipe in target else None
        costs[recipe] = {**asdict(c), "target": None if t is None else asdict(t)}
        for key in ("flops", "seconds", "tokens"):
            costs[recipe][f"proxy_over_target_{key}"] = (getattr(c.proxy, key) / getattr(t, key)
                                                         if t and getattr(t, key) else None)
    if summary is None or summary.multipliers is not None:
        multipliers = None if summary is None else asdict(summary.multipliers)
    else:
        multipliers = {"error": summary.multipliers_error} if summary.multipliers_error else None
    numbers = {
        "sweep": {"curves": {r: {w: asdict(c) for w, c in by_width.items()} for r, by_width in curves.items()},
                  "spread": {r: asdict(s) for r, s in spread.items()}, "trials": len(trials),
                  "statuses": {s: sum(t.status == s for t in trials) for s in ("ok", "diverged", "pruned")}},
        "costs": costs,
        "transfer": None if summary is None else {"recipes": {r: asdict(s) for r, s in target.items()},
                                                  "runs": [asdict(x) for x in summary.runs],
                                                  "lr_offsets": list(summary.lr_offsets)},
        "multipliers": multipliers,
        "verdict": asdict(tuning_verdict(curves, spread, target)),
    }
    return json.loads(dumps(numbers))


# ----------------------------------------------------------------------------------------------------------
# the coordinate check's verdicts (its measurements come from lrm_mup.tuning.coord_check)

QUANTITIES = {
    "act": "mean |activation|",
    "dw": "‖ΔW‖/‖W‖ (spectral for hidden matrices)",
    "dy": "‖ΔW·x‖/‖W·x‖",
    "mult": "mean |multiplier|",
    "dact": "mean |y_t − y_0| (check across depth: the residual stream's change)",
}
LOGITS = "logits"
Verdict = CoordCheckVerdict


@dataclass(frozen=True)
class Expected:
    """A width dependence that μP itself prescribes, declared with its reason instead of being skipped. It applies
    to recipes with μP's readout and attention (all but sp: the result's config lists them as "mup_readout"), to
    series whose module matches `module` (a pattern) or has `role`, at `step` (None: every step)."""

    name: str
    quantity: str
    module: str | None
    role: str | None
    step: int | None
    exponent: float   # expected slope per doubling of `of`
    of: str           # "width", "head_dim" or "depth"
    reason: str
    every_recipe: bool = False  # applies to every recipe (the depth rule's exceptions), not only μP's

    def applies(self, mup_readout: bool, module: str, quantity: str, step: int, roles: dict[str, str]) -> bool:
        return ((mup_readout or self.every_recipe) and quantity == self.quantity and self.step in (None, step)
                and (fnmatch.fnmatchcase(module, self.module) if self.module else roles.get(module) == self.role))


EXPECTED = (
    Expected("logits at init", "act", LOGITS, None, 0, -0.5, "width",
             "μP readout init W ~ 1/width: the logits sum width terms of random sign, so they are ~ width^-1/2 "
             "until the first updates (Θ(1)) dominate"),
    Expected("readout output at init", "act", None, "readout", 0, -0.5, "width",
             "the same μP readout init, on a readout whose output is not itself the logits (Falcon-H1 multiplies "
             "it by lm_head_multiplier after the layer, so the layer is recorded apart from the logits)"),
    Expected("attention logits at init", "act", "*.logits", None, 0, -0.5, "head_dim",
             "μP attention α/d_head: q·k sums d_head independent terms at init (~ d_head^1/2), times 1/d_head gives "
             "d_head^-1/2; no width dependence where widening adds heads at a fixed head dim"),
    Expected("query output", "act", None, "query", None, -0.5, "head_dim",
             "μP's α/d_head is applied as the query's fixed multiplier √(d_head,base/d_head) (SDPA keeps its "
             "1/√d_head), so the query's output carries that factor at every step; none at a fixed head dim"),
)


def seed_means(records: list[dict], axis: str = "width") -> dict[tuple, dict[int, dict[int, float]]]:
    """(recipe, module, quantity) -> step -> width (or the record's `axis`) -> mean value over seeds."""
    sums: dict = defaultdict(lambda: [0.0, 0])
    for r in records:
        acc = sums[(r["recipe"], r["module"], r["quantity"], r["step"], r[axis])]
        acc[0] += r["value"]
        acc[1] += 1
    means: dict = defaultdict(lambda: defaultdict(dict))
    for (recipe, module, quantity, step, width), (total, n) in sums.items():
        means[(recipe, module, quantity)][step][width] = total / n
    return means


def slopes(records: list[dict], head_dims: dict | None = None, roles: dict | None = None,
           mup_readout: Collection[str] = (), axis: str = "width",
           expected: Sequence[Expected] = EXPECTED) -> list[dict]:
    """One row per (recipe, module, quantity, step): the fitted `slope` of the seed means, the expected slope and
    the declared exception behind it (if any). A step where the quantity is zero at every width gets slope None
    and a note. head_dims: {width: head dim}, roles: {module: role}, mup_readout: the recipes with μP's readout and
    attention, for the exceptions that depend on them. axis: the record key the slope is fitted against ("width",
    or "depth" for a check across depth, whose `expected` are `depth_expected`'s)."""
    widths = sorted({r[axis] for r in records})
    per_doubling = {"width": 1.0, "depth": 1.0,
                    "head_dim": _head_dim_exponent(head_dims or {}, widths) if axis == "width" else 0.0}
    rows = []
    for (recipe, module, quantity), by_step in seed_means(records, axis).items():
        for step, by_width in sorted(by_step.items()):
            values = [by_width.get(w, math.nan) for w in widths]
            declared = next((e for e in expected
                             if e.applies(recipe in mup_readout, module, quantity, step, roles or {})), None)
            row = {"recipe": recipe, "module": module, "quantity": quantity, "step": step,
                   "slope": slope(widths, values), "values": values,
                   "expected": declared.exponent * per_doubling[declared.of] + 0.0 if declared else 0.0,  # no -0.0
                   "exception": declared.name if declared else None, "note": None}
            if all(v == 0 for v in values):
                row["slope"], row["note"] = None, "zero at every width"
            elif all(math.isnan(v) for v in values):  # a relative update of a zero-init matrix at its first step
                row["slope"], row["note"] = None, "undefined at every width (zero before the step)"
            elif not math.isfinite(row["slope"]):
                row["note"] = "non-finite value" if math.isnan(row["slope"]) else "zero at some widths"
            rows.append(row)
    return rows


def _head_dim_exponent(head_dims: dict, widths: list[int]) -> float:
    """How the head dim grows with width (0: widening adds heads; 1: a fixed number of heads)."""
    dims = [head_dims.get(w, head_dims.get(str(w))) for w in widths]
    return round(slope(widths, dims), 6) + 0.0 if all(dims) else 0.0


VERDICT_LEVEL = 0.95   # two-sided confidence of a series' slope band
PASS, INCONCLUSIVE, FAIL = "pass", "inconclusive", "fail"
_SEVERITY = {PASS: 0, INCONCLUSIVE: 1, FAIL: 2}
MAX_SEEDS_ADVISED = 64


def t_central(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with an integer number `df` ≥ 1 of degrees of freedom, in closed form
    (Abramowitz & Stegun 26.7.3-4), with θ = atan(|t|/√df):
    odd df:  (2/π)·[θ + sinθ·(cosθ + (2/3)cos³θ + (2·4)/(3·5)cos⁵θ + … up to cos^(df−2)θ)]   (df = 1: 2θ/π)
    even df: sinθ·[1 + (1/2)cos²θ + (1·3)/(2·4)cos⁴θ + … up to cos^(df−2)θ]."""
    if not (isinstance(df, int) and df >= 1):
        raise CoordCheckError(f"degrees of freedom {df!r}: must be a positive integer")
    theta = math.atan(abs(t) / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    total = 0.0
    if df % 2:
        term = math.cos(theta)
        for k in range(1, (df - 1) // 2 + 1):
            total += term
            term *= 2 * k / (2 * k + 1) * c2
        return 2 / math.pi * (theta + math.sin(theta) * total)
    term = 1.0
    for k in range(1, df // 2 + 1):
        total += term
        term *= (2 * k - 1) / (2 * k) * c2
    return math.sin(theta) * total


def t_quantile(level: float, df: int) -> float:
    """The t with P(|T| < t) = `level` (Student's t, `df` degrees of freedom): the half-width of a two-sided
    interval in standard errors, by bisection on `t_central` (monotone in t). 12.71 at df 1, 3.18 at 3, 2.31 at 8,
    1.96 as df → ∞, for level 0.95."""
    if not (isinstance(level, float | int) and 0 < level < 1):
        raise CoordCheckError(f"confidence level {level!r}: must lie strictly between 0 and 1")
    lo, hi = 0.0, 1.0
    while t_central(hi, df) < level:
        lo, hi = hi, 2 * hi
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_central(mid, df) < level else (lo, mid)
        if hi - lo < 1e-12 * hi:
            break
    return (lo + hi) / 2


@dataclass(frozen=True)
class SlopeBand:
    """The scatter behind one judged slope (`slope_band`): the residual standard deviation `sigma` of the log2
    values, `df` its degrees of freedom, `seeds` and the widths' Σ(x−x̄)² `sxx` (x = log2 width), so that the
    standard error is sigma/√(seeds·sxx) and the half-width at a confidence level is t_quantile(level, df) × that."""

    sigma: float
    df: int
    seeds: int
    widths: int
    sxx: float

    def half_width(self, level: float, seeds: int | None = None) -> float:
        """The band's half-width at `level`; with `seeds`, what it would be with that many seeds at this scatter."""
        s = self.seeds if seeds is None else seeds
        df = s * self.widths - s - 1
        return t_quantile(level, df) * self.sigma / math.sqrt(s * self.sxx)

    def seeds_needed(self, margin: float, level: float) -> int | None:
        """The fewest seeds whose band would be narrower than `margin` (the distance from the slope to the limit)
        at this scatter, if the slope stayed where it is; None when no number up to MAX_SEEDS_ADVISED would."""
        if not margin > 0:
            return None
        return next((s for s in range(self.seeds + 1, MAX_SEEDS_ADVISED + 1) if self.half_width(level, s) < margin),
                    None)


def slope_band(widths: Sequence[float], logs: Sequence[Sequence[float]]) -> SlopeBand | None:
    """The scatter of a slope from per-seed data: `logs[s][w]` is log2 of seed s's value at width w (for a window of
    steps, the mean over the steps of log2 value; averaging over steps first keeps the steps' strong correlation out
    of the count). The model: z_sw = a_s + b·x_w + e_sw with x = log2 width, a seed's own level a_s (one fixed batch
    and one init per seed shift every width alike: absorbed) and e iid N(0, σ²), which holds the seed-by-width
    scatter and any bend over the widths. Least squares gives b̂ = the mean of the per-seed slopes, residual sum RSS
    with df = S·W − S − 1, σ̂² = RSS/df and se(b̂) = σ̂/√(S·Σ(x−x̄)²); (b̂ − b)/se follows Student's t with df.
    Pooling the width residuals with the seed spread is what makes 2 seeds judgeable: the spread of 2 per-seed
    slopes alone has 1 df (t = 12.7 at 95 %), the pooled fit 3 df at 3 widths (t = 3.18) and 8 df at 3 seeds × 4
    widths (t = 2.31). A bootstrap over seeds has only 3 distinct resamples with 2 seeds, and one over the residuals
    reproduces this interval without the small-df t correction (too narrow at df 3). A bend over the widths widens
    the band: the slope of a curved series over these widths is less determined, and more widths decide it.
    None where the fit has no degree of freedom left (or a value is not positive and finite)."""
    z = np.asarray(logs, dtype=np.float64)
    if z.ndim != 2 or not np.all(np.isfinite(z)):
        return None
    n_seeds, n_widths = z.shape
    df = n_seeds * n_widths - n_seeds - 1
    if df < 1:
        return None
    x = np.log2(np.asarray(widths, dtype=np.float64))
    xc = x - x.mean()
    sxx = float(xc @ xc)
    zc = z - z.mean(axis=1, keepdims=True)
    b = float((zc @ xc).sum()) / (n_seeds * sxx)
    rss = float(((zc - b * xc) ** 2).sum())
    return SlopeBand(math.sqrt(rss / df), df, n_seeds, n_widths, sxx)


def seed_values(records: list[dict], axis: str = "width") -> dict[tuple, dict[int, dict[int, dict[int, float]]]]:
    """(recipe, module, quantity) -> step -> seed -> width (or the record's `axis`) -> value: the per-seed numbers
    behind a slope band."""
    out: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    for r in records:
        out[(r["recipe"], r["module"], r["quantity"])][r["step"]][r["seed"]][r[axis]] = r["value"]
    return out


def _window_logs(by_step: dict, steps: Sequence[int], widths: Sequence[int]) -> list[list[float]] | None:
    """logs[s][w]: the mean over `steps` of log2 of seed s's value at width w, for the seeds measured at every
    width and step; None when a value is not positive and finite (its slope is judged without a band)."""
    seeds = sorted(set.intersection(*(set(by_step.get(t, {})) for t in steps))) if steps else []
    logs = []
    for s in seeds:
        row = []
        for w in widths:
            vals = [by_step[t][s].get(w, math.nan) for t in steps]
            if not all(math.isfinite(v) and v > 0 for v in vals):
                return None
            row.append(sum(math.log2(v) for v in vals) / len(vals))
        logs.append(row)
    return logs or None


def _status(slope_: float, half: float, expected: float, threshold: float) -> str:
    """pass: the band [slope ± half] lies inside (expected − threshold, expected + threshold); fail: it lies wholly
    outside [expected − threshold, expected + threshold]; inconclusive: it straddles a limit (a band of width 0
    sitting exactly on the limit included). A non-finite slope fails."""
    if not math.isfinite(slope_):
        return FAIL
    low, high = slope_ - half - expected, slope_ + half - expected
    if -threshold < low and high < threshold:
        return PASS
    if low > threshold or high < -threshold:
        return FAIL
    return INCONCLUSIVE


def judge(slope_rows: list[dict], steps: int, last_steps: int, threshold: float, *,
          per_seed: dict | None = None, widths: Sequence[int] | None = None,
          level: float = VERDICT_LEVEL) -> list[Verdict]:
    """A verdict per series from two checks, its slope at t=0 and its mean slope over the last `last_steps` steps
    (skipped steps, zero at every width, do not count), each with a `level` confidence band: centre the slope of
    the seed means (the figures' slope), half-width t·se from `slope_band` on the per-seed values (`per_seed`:
    `seed_values(records)`, at `widths`). The centre and b̂ differ by the width dependence of half the seeds'
    log-variance (log of a mean against the mean of logs), second order in the scatter. Each check gets a status
    (`_status`); the series takes the worse one (fail > inconclusive > pass; on a tie the slope further from the
    expected one). Without per-seed values (or where a value is zero or non-finite) the band has width 0."""
    series = defaultdict(list)
    for row in slope_rows:
        series[(row["recipe"], row["module"], row["quantity"])].append(row)
    verdicts = []
    for key, rows in series.items():
        found = []
        for at, slope_, expected, window in _checks(rows, steps, last_steps):
            logs = _window_logs(per_seed[key], window, widths) if per_seed is not None and key in per_seed else None
            band = slope_band(widths, logs) if logs is not None and math.isfinite(slope_) else None
            half = band.half_width(level) if band is not None else 0.0
            status = _status(slope_, half, expected, threshold)
            needed = None
            if status == INCONCLUSIVE and band is not None:
                needed = band.seeds_needed(abs(abs(slope_ - expected) - threshold), level)
            found.append((_SEVERITY[status], _deviation(slope_, expected), at, slope_, expected, status, half,
                          needed))
        if found:
            _, _, at, slope_, expected, status, half, needed = max(found, key=lambda c: (c[0], c[1]))
            low, high = (slope_ - half, slope_ + half) if math.isfinite(slope_) else (slope_, slope_)
            verdicts.append(Verdict(*key, at, slope_, expected, status == PASS, status, low, high, needed))
    return verdicts


def _checks(rows: list[dict], steps: int, last_steps: int) -> list[tuple[str, float, float, tuple[int, ...]]]:
    """(when, slope, expected, steps) of one series: at t=0, and the means over the last `last_steps` steps."""
    late = [r for r in rows if r["step"] > steps - last_steps and r["slope"] is not None]
    checks = [("t=0", r["slope"], r["expected"], (0,)) for r in rows if r["step"] == 0 and r["slope"] is not None]
    if late:
        first, last = late[0]["step"], late[-1]["step"]
        checks.append((f"t={first}..{last}" if first != last else f"t={first}",
                       float(np.mean([r["slope"] for r in late])), float(np.mean([r["expected"] for r in late])),
                       tuple(r["step"] for r in late)))
    return checks


def _deviation(slope_: float, expected: float) -> float:
    d = abs(slope_ - expected)
    return math.inf if math.isnan(d) else d


MIN_JUDGED_WIDTHS, MIN_JUDGED_SEEDS = 3, 2


def axis_of(config: dict) -> tuple[str, list[int]]:
    """The axis a coordinate check varies ("width", or "depth" for a check across depth) and its values."""
    axis = config.get("axis", "width")
    return axis, config[f"{axis}s"]


def judgeable(config: dict) -> list[str]:
    """Why a coordinate check's numbers cannot carry a verdict (empty: they can). A slope through two widths has no
    residual, so a bend or an outlier at one width reads as a width dependence; one seed leaves the seed-to-seed
    noise of a mean unmeasured, and at tiny widths and few steps that noise alone exceeds the threshold."""
    reasons = []
    axis, values = axis_of(config)
    if len(values) < MIN_JUDGED_WIDTHS:
        reasons.append(f"{len(values)} {axis}s, a judged slope needs at least {MIN_JUDGED_WIDTHS}")
    if config["seeds"] < MIN_JUDGED_SEEDS:
        reasons.append(f"{config['seeds']} seed, averaging out seed noise needs at least {MIN_JUDGED_SEEDS}")
    return reasons


class CoordCheckResult:
    """Every recorded number (`records`, one dict per recipe, width, seed, step, module, quantity), the slopes per
    step (`slopes`) and one `Verdict` per series (`verdicts`, each with its confidence band: `judge`). `config` must
    name "mup_readout", the recipes with μP's readout and attention (`lrm_mup.tuning.coord_check.CoordCheckResult`
    fills it in from the recipes); its "level" is the band's confidence (default `VERDICT_LEVEL`).

    A recipe's verdict (`status`): FAIL if any series fails, else INCONCLUSIVE if any series is inconclusive, else
    PASS."""

    def __init__(self, config: dict, records: list[dict]):
        if "mup_readout" not in config:
            raise CoordCheckError("a coordinate-check config must list 'mup_readout' (the recipes with μP's readout "
                                  "and attention); build it with lrm_mup.tuning.coord_check.CoordCheckResult")
        self.config, self.records = config, records
        axis, _ = axis_of(config)
        self.expected = EXPECTED if axis == "width" else depth_expected(config, records)
        self.level = float(config.get("level", VERDICT_LEVEL))
        self.slopes = slopes(records, config.get("head_dims"), config.get("roles"), config["mup_readout"], axis,
                             self.expected)
        self.verdicts = judge(self.slopes, config["steps"], config["last_steps"], config["threshold"],
                              per_seed=seed_values(records, axis), widths=sorted({r[axis] for r in records}),
                              level=self.level)

    def _mine(self, recipe: str) -> list[Verdict]:
        verdicts = [v for v in self.verdicts if v.recipe == recipe]
        if not verdicts:
            raise CoordCheckError(f"recipe {recipe!r} was not checked; checked: {', '.join(self.config['recipes'])}")
        return verdicts

    def status(self, recipe: str) -> str:
        """"PASS", "INCONCLUSIVE" or "FAIL": the worst status of the recipe's series (class docstring)."""
        worst = max(_SEVERITY[v.status] for v in self._mine(recipe))
        return {0: "PASS", 1: "INCONCLUSIVE", 2: "FAIL"}[worst]

    def passed(self, recipe: str) -> bool:
        """Every series of the recipe passes (its band within the threshold): status PASS."""
        return all(v.passed for v in self._mine(recipe))

    def failed(self, recipe: str) -> bool:
        """Some series of the recipe fails (its band wholly outside the threshold): status FAIL."""
        return self.status(recipe) == "FAIL"

    def failures(self, recipe: str) -> list[Verdict]:
        """The series of `recipe` that do not pass, failed before inconclusive, each worst (furthest) first."""
        return sorted((v for v in self._mine(recipe) if not v.passed),
                      key=lambda v: (-_SEVERITY[v.status], -_deviation(v.slope, v.expected)))

    def summary(self, worst: int = 5) -> str:
        """The verdict per recipe with its worst series, the declared exceptions as measured, and what was skipped."""
        c = self.config
        late = f"t={c['steps'] - c['last_steps'] + 1}..{c['steps']}"
        axis, values = axis_of(c)
        where = (f"widths {', '.join(map(str, values))} (base {c['base_width']})" if axis == "width" else
                 f"depths {', '.join(map(str, values))} (base {c['base_depth']}, depth rule {c['depth_rule']}) "
                 f"at width {c['width']}")
        lines = [
            f"coordinate check: {where}, "
            f"{c['steps']} steps, {c['seeds']} seed{'s' if c['seeds'] != 1 else ''}"
            + (f" (from seed {c['seed_base']})" if c.get("seed_base") else "") + f", {c['optimizer']} lr {c['lr']:g}, "
            f"batch {c['batch_size']}×{c['context']} of {c['corpus']} "
            f"({'a fresh batch per step' if c['fresh_batches'] else 'one fixed batch'})",
            f"the slope of log2 value against log2 {axis} is judged at t=0 and on average over {late} against the "
            f"expected slope (0 unless declared below) ± {c['threshold']:g}, with its {self.level:.0%} confidence "
            f"band over seeds and {axis}s: a series passes when the band lies inside, fails when it lies outside, "
            "and is inconclusive when it straddles the limit",
        ]
        cannot = judgeable(c)
        if cannot:
            lines.append(f"NO VERDICT: too little data to judge ({'; '.join(cannot)}); the slopes below are shown, "
                         "not judged")
        undecided = False
        for recipe in c["recipes"]:
            verdicts = [v for v in self.verdicts if v.recipe == recipe]
            n_pass = sum(v.passed for v in verdicts)
            counts = {s: sum(v.status == s for v in verdicts) for s in (INCONCLUSIVE, FAIL)}
            status = "n/a " if cannot else self.status(recipe)
            lines.append(f"{recipe:8s} {status}  {n_pass}/{len(verdicts)} series "
                         + ("within the threshold" if cannot else "pass")
                         + "".join(f", {n} {s}" for s, n in counts.items() if n and not cannot))
            shown = [v for s in (FAIL, INCONCLUSIVE) for v in self.failures(recipe) if v.status == s][:worst]
            for v in shown:
                lines.append(f"    {v.quantity:4s} {v.module:28s} {self.describe(v)}")
            undecided |= status == "INCONCLUSIVE"  # a recipe that fails is decided already
        if undecided:
            lines.append("INCONCLUSIVE: a band straddles the limit, so these seeds cannot tell whether the slope is "
                         "within the threshold; rerun with more seeds (--seeds; the band shrinks like 1/√seeds) "
                         "or more widths (--widths; a wider span of log2 widths shrinks it too)")
        lines.append("declared exceptions (slopes μP prescribes; judged against them instead of 0):")
        for e in self.expected:
            lines.append(f"    {e.name}: {e.reason}")
            series = defaultdict(list)
            for r in self.slopes:
                if r["exception"] == e.name:
                    series[(r["recipe"], r["module"])].append(r)
            checks = {key: _checks(rows, c["steps"], c["last_steps"]) for key, rows in series.items()}
            if not checks:
                lines.append("        (no checked recipe has it)")
            elif all(x == 0 for found in checks.values() for _, _, x, _ in found):
                worst_ = max(abs(s) for found in checks.values() for _, s, _, _ in found)
                why = "the head dim is the same at every width" if axis == "width" else "under this depth rule"
                lines.append(f"        expected slope 0 here: {why} (measured |slope| <= {worst_:.2f})")
            else:
                for recipe in c["recipes"]:
                    got = [f"{module} " + ", ".join(f"{s:+.2f} at {at} (expected {x:+.2f})"
                                                    for at, s, x, _ in found)
                           for (r, module), found in checks.items() if r == recipe]
                    if got:
                        lines.append(f"        {recipe}: " + "; ".join(got))
        skipped = sorted({(r["quantity"], r["step"]) for r in self.slopes if r["note"] == "zero at every width"})
        if skipped:
            lines.append(f"skipped, zero at every {axis}: " + ", ".join(f"{q} at t={t}" for q, t in skipped)
                         + " (no update has happened yet at t=0)")
        return "\n".join(lines)

    def describe(self, v: Verdict) -> str:
        """One series' slope with its band and status, e.g. "slope -0.20 at t=6..10, 95% band [-0.27, -0.13]:
        inconclusive (about 6 seeds would decide it)"."""
        text = f"slope {v.slope:+.2f} at {v.at}"
        if v.low is not None and math.isfinite(v.low) and v.high > v.low:
            text += f", {self.level:.0%} band [{v.low:+.2f}, {v.high:+.2f}]"
        if v.expected:
            text += f" (expected {v.expected:+.2f})"
        if v.status == INCONCLUSIVE:
            text += ": inconclusive (" + (f"about {v.seeds_needed} seeds would decide it at this scatter"
                                          if v.seeds_needed else
                                          f"more than {MAX_SEEDS_ADVISED} seeds at this scatter: add widths") + ")"
        elif v.status:
            text += f": {v.status}"
        return text

    def to_json(self, path: str | os.PathLike) -> None:
        """Every number (config, the declared exceptions, each recipe's status, verdicts with their bands, slopes,
        records) as JSON; NaN/inf kept as JSON's NaN/Infinity so that `from_json` rebuilds the same verdicts."""
        data = {"config": {**self.config, "level": self.level}, "exceptions": [asdict(e) for e in self.expected],
                "recipes": {r: self.status(r) for r in self.config["recipes"] if any(v.recipe == r
                                                                                    for v in self.verdicts)},
                "verdicts": [asdict(v) for v in self.verdicts], "slopes": self.slopes, "records": self.records}
        write_text_atomic(path, json.dumps(data, allow_nan=True))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> CoordCheckResult:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        config = data["config"]
        config["head_dims"] = {int(w): d for w, d in config.get("head_dims", {}).items()}
        return cls(config, data["records"])


def depth_expected(config: dict, records: Sequence[dict] = ()) -> tuple[Expected, ...]:
    """The slopes against log2 depth that the depth rule itself prescribes (`lrm_mup.core.depth`), for a check
    across depth: config "depth_alpha" α, "depth_lr_exponent" (α - 1 under a rule, 0 under none) and "branches",
    the residual-branch layers of the last block as the check names them. Everything else should be flat, but for
    the residual stream under α = 1 (`stream_correction`, from the check's own `records`)."""
    alpha, lr_exp = config["depth_alpha"], config["depth_lr_exponent"]
    out = [Expected(f"residual branch {b}", "act", b, None, None, -alpha, "depth",
                    f"the branch's output carries the rule's fixed multiplier (L_base/L)^α, α = {alpha:g} (for "
                    "0 < α < 1 only at init: the part its updates add scales as (L_base/L)^α · LR ∝ L^-1, so the "
                    "slope falls toward -1 as training proceeds)",
                    every_recipe=True) for b in config["branches"]]
    for q in ("dw", "dy"):
        out.append(Expected(f"block updates ({q})", q, f"{config['blocks']}.last.*", None, None, lr_exp, "depth",
                            "Adam's relative update follows its LR, which the rule scales by (L/L_base)^(α-1) "
                            "inside the blocks (0 for α = 1: every block keeps learning)", every_recipe=True))
    correction = stream_correction(config, records)
    if correction is not None:
        out += [Expected(f"residual stream at finite depth ({q})", q, f"{config['blocks']}.last", None, None,
                         correction, "depth", STREAM_REASON, every_recipe=True) for q in ("act", "dact")]
    return tuple(out)


STREAM_REASON = ("under α = 1 the stream x_L = x_0 + Σ_l (L_base/L) F_l is Θ(1) in the limit L → ∞ (CompleteP), but "
                 "at init the branches' random-sign sum adds a variance ∝ L·(L_base/L)² = L_base²/L to the "
                 "embedding's: |x_L|² ≈ e² + (s² − e²)·L_base/L with e the embedding's and s the stream's size at "
                 "L_base, a correction that halves per doubling of depth; the expected slope is that curve's over "
                 "the checked depths, read off the check's own t=0 numbers at the base depth. The change since init "
                 "has O(L_base/L) corrections too (block l's update moves the input of the blocks after it); it is "
                 "judged against the same curve, which it follows within 0.05 per doubling at depths 2..32 "
                 "(benchmarks/depth_stream.json). A stream that grows, or shrinks as a power of L, still fails")


def stream_correction(config: dict, records: Sequence[dict]) -> float | None:
    """The slope against log2 depth of `stream_curve` over the check's depths under a depth rule with α = 1
    (`STREAM_REASON`); None under another α, or where `stream_share` has no numbers."""
    k = stream_share(config, records) if config.get("depth_alpha") == 1.0 else None
    if k is None:
        return None
    depths = config["depths"]
    return round(slope(depths, stream_curve(depths, config["base_depth"], k)), 6) + 0.0


def stream_share(config: dict, records: Sequence[dict]) -> float | None:
    """k = s²/e² − 1 of a check across depth: the branches' variance in the residual stream at init relative to the
    embedding's, at the base depth. e is the embedding's mean |output| (the module whose role is "embedding"), s the
    stream's (`<blocks>.last`), at t=0 and the base depth, seed means over every recipe (at the base width and depth
    every recipe has the same init; mean |·| taken as ∝ RMS). None where the check did not measure both there."""
    base, stream = config["base_depth"], f"{config['blocks']}.last"
    embed = {m for m, role in (config.get("roles") or {}).items() if role == "embedding"}
    at_base = [r for r in records if r["step"] == 0 and r["quantity"] == "act" and r["depth"] == base]
    e = [r["value"] ** 2 for r in at_base if r["module"] in embed]
    s = [r["value"] ** 2 for r in at_base if r["module"] == stream]
    if not (e and s) or base not in config["depths"]:
        return None
    return max(sum(s) / len(s) / (sum(e) / len(e)) - 1.0, 0.0)


def stream_curve(depths: Sequence[int], base_depth: int, k: float, alpha: float = 1.0) -> list[float]:
    """|x_L| / e at init under branch multipliers (L_base/L)^α: (1 + k·(L_base/L)^(2α−1))^1/2 (`STREAM_REASON`;
    L independent Θ(1) branches of variance ∝ (L_base/L)^2α each)."""
    return [math.sqrt(1 + k * (base_depth / d) ** (2 * alpha - 1)) for d in depths]


# ----------------------------------------------------------------------------------------------------------
# the headline: who won, by how much against the seed spread, whether each LR transferred, what the data cannot say

TRANSFER_LOSS_OK = 0.02   # bits/byte the transferred LR may lose at the target against the target's own optimum
SECONDS_NOISE = 1.5       # max / min seconds of trials with identical FLOPs above which timings reflect machine load
TRANSFER_CRITERION = (f"an LR transferred when its optimum log2 LR moves by at most {SPREAD_OK:g} over the sweep's "
                      f"widths and, at the target, the transferred LR is within {TRANSFER_LOSS_OK:g} bits/byte of "
                      "the best LR of the direct sweep there; an optimum on the edge of an LR grid leaves it open")


def grid_edge_optima(curves: dict[str, dict[int, LRCurve]]) -> dict[str, list[int]]:
    """Per recipe, the widths whose optimum is the smallest or the largest LR of that width's grid: the true
    optimum may lie beyond it, so neither the optimum nor its spread over widths is known there."""
    return {r: [w for w, c in by_width.items() if c.opt_log2_lr is not None and len(c.log2_lr) > 1
                and c.opt_log2_lr in (min(c.log2_lr), max(c.log2_lr))] for r, by_width in curves.items()}


def _transferred(spread: OptimumSpread | None, edges: list[int], t: RecipeTransfer | None) -> tuple[bool | None, str]:
    """`TRANSFER_CRITERION` for one recipe: (True / False / None for open, the reason in a few words)."""
    if spread is None or spread.spread is None:
        return None, "one width in the sweep: nothing to compare"
    if spread.spread > SPREAD_OK:
        return False, (f"the optimum moves by {spread.spread:g} in log2 over widths "
                       f"{', '.join(map(str, spread.widths))}")
    if t is not None and t.loss_gap_bpb is not None:
        if t.loss_gap_bpb > TRANSFER_LOSS_OK:
            return False, (f"at width {t.target_width} the transferred LR loses {t.loss_gap_bpb:.3f} bits/byte to "
                           f"the direct sweep's optimum ({t.lr_gap_log2:+d} in log2"
                           + (", at the sweep's edge: at least" if t.optimum_at_edge else "") + ")")
    if edges:
        return None, (f"the sweep's optimum is on its LR grid's edge at width {', '.join(map(str, edges))}: it may "
                      "lie outside the grid")
    if t is None or t.loss_gap_bpb is None:
        return True, f"the optimum moves by {spread.spread:g} in log2 (no direct LR sweep at a target)"
    return True, (f"spread {spread.spread:g}; at width {t.target_width} within {t.loss_gap_bpb:.3f} bits/byte of "
                  "the direct sweep's optimum")


def _seed_values(trials: Sequence[SweepTrial], summary: TransferSummary | None, verdict: TuningVerdict
                 ) -> dict[str, list[float]]:
    """Per recipe, the per-seed losses behind its ranked point: the target runs at the transferred LR (with a
    transfer), else the sweep's trials at its widest width and its optimum LR there."""
    out: dict[str, list[float]] = {}
    if summary is not None:
        for r, s in summary.recipes.items():
            out[r] = [x.val_bpb for x in summary.runs if x.recipe == r and x.width == s.target_width
                      and x.offset == 0 and x.val_bpb is not None and x.status != "diverged"]
        return out
    curves = lr_curves(trials)
    for r, by_width in curves.items():
        w = max(by_width)
        opt = by_width[w].opt_log2_lr
        out[r] = [trial_loss(t) for t in usable(trials) if t.recipe == r and t.width == w and opt is not None
                  and round(float(t.log2_lr), 9) == opt and math.isfinite(trial_loss(t))]
    return out


def timing_noise(trials: Iterable[SweepTrial]) -> float | None:
    """The largest max / min ratio of wall seconds among finished trials of identical FLOPs (same recipe, width and
    steps): 1 on an idle machine, more where other jobs competed for the cores. None without such a pair."""
    groups: dict = defaultdict(list)
    for t in trials:
        if t.status == "ok" and t.flops and t.seconds and t.seconds > 0:
            groups[(t.recipe, t.width, float(t.flops))].append(float(t.seconds))
    ratios = [max(s) / min(s) for s in groups.values() if len(s) > 1]
    return max(ratios) if ratios else None


def tuning_headline(trials: Sequence[SweepTrial], summary: TransferSummary | None = None) -> dict:
    """The report's headline card and the terminal's last lines, as JSON-ready numbers and sentences: the winner
    (`tuning_verdict`), its margin against the seed-to-seed range of the two best recipes, whether each recipe's LR
    transferred by `TRANSFER_CRITERION`, and warnings where the data cannot carry a claim (one seed, an optimum on
    an LR grid's edge, a direct sweep at the target whose optimum is on its edge, timings shaped by machine load)."""
    curves = lr_curves(trials)
    spread = optimum_spread(curves)
    target = summary.recipes if summary is not None else {}
    verdict = tuning_verdict(curves, spread, target)
    edges = grid_edge_optima(curves)
    seeds = _seed_values(trials, summary, verdict)
    seed_range = {r: (max(v) - min(v) if len(v) > 1 else None) for r, v in seeds.items()}
    recipes = {}
    for r in list(verdict.ranking) + sorted(set(verdict.recipes) - set(verdict.ranking)):
        ok, why = _transferred(spread.get(r), edges.get(r, []), target.get(r))
        v = verdict.recipes[r]
        recipes[r] = {"mu_p": v.mu_p, "val_bpb": _finite(v.target_val_bpb), "transferred": ok, "why": why,
                      "spread": v.spread, "edge_widths": edges.get(r, []), "lr_gap_log2": v.lr_gap_log2,
                      "loss_gap_bpb": _finite(v.loss_gap_bpb), "target_optimum_at_edge": v.optimum_at_edge,
                      "seeds": len(seeds.get(r, [])), "seed_range_bpb": _finite(seed_range.get(r))}
    warnings = []
    n_seeds = min((len(v) for v in seeds.values() if v), default=0)
    if n_seeds == 1:
        warnings.append("One seed per point: seed-to-seed noise is not measured, so a margin or a loss gap of a "
                        "few hundredths of a bit/byte may be noise.")
    at_edge = [f"{r} (width {', '.join(map(str, ws))})" for r, ws in edges.items() if ws]
    if at_edge:
        warnings.append("The sweep's optimum is on the edge of its LR grid for " + "; ".join(at_edge)
                        + ": the true optimum may lie outside the grid, so these spreads are not known (widen it).")
    target_edge = [f"{r} (width {t.target_width})" for r, t in target.items() if t.optimum_at_edge]
    if target_edge:
        warnings.append("The direct LR sweep at the target has its optimum on its edge for " + "; ".join(target_edge)
                        + ": their loss gaps are lower bounds.")
    noise = timing_noise(trials)
    if noise is not None and noise > SECONDS_NOISE:
        warnings.append(f"Wall seconds of trials with identical FLOPs differ up to {noise:.1f}x: the machine was "
                        "loaded, so time ratios are unreliable; compare costs in FLOPs.")
    head = {"where": verdict.where, "target_width": verdict.target_width, "winner": verdict.winner,
            "winner_val_bpb": _finite(verdict.winner_val_bpb), "runner_up": verdict.runner_up,
            "margin_bpb": _finite(verdict.margin_bpb), "margin_percent": None, "clear_win": None,
            "seeds": n_seeds, "criterion": TRANSFER_CRITERION, "recipes": recipes, "warnings": warnings,
            "timing_noise": _finite(noise)}
    if verdict.winner is not None and verdict.runner_up is not None:
        head["margin_percent"] = 100 * verdict.margin_bpb / (verdict.winner_val_bpb + verdict.margin_bpb)
        ranges = [seed_range.get(r) for r in (verdict.winner, verdict.runner_up)]
        if all(x is not None for x in ranges):
            head["clear_win"] = verdict.margin_bpb > max(ranges)
    return json.loads(dumps(head))


# ----------------------------------------------------------------------------------------------------------
# the noise–WD equilibrium (issue 13; lrm_mup.tuning.equilibrium simulates, this block compares)

ADAMW_CONSTANT = 1 / math.sqrt(2)  # AdamW fed N(0,1) gradients: ‖W‖_rms → sqrt(η/(2λ)) (REFERENCE §1)
MUON_CONSTANT = 0.54               # Muon with RMS-matched updates (0.2·sqrt(max(n,m))): ≈ 0.54·sqrt(η/λ) (REFERENCE §1)
__all__ += ["ADAMW_CONSTANT", "MUON_CONSTANT", "abm_prediction", "steady_state", "log_distance",
            "equilibrium_series", "equilibrium_table"]


def abm_prediction(optimizer: str, lr: float, weight_decay: float) -> tuple[float, str]:
    """The predicted steady-state RMS of a tensor that an optimizer steps with pure-noise gradients, and its formula:
    AdamW sqrt(η/(2λ)); Muon (RMS-matched updates) 0.54·sqrt(η/λ)."""
    if optimizer == "muon":
        return MUON_CONSTANT * math.sqrt(lr / weight_decay), "0.54 sqrt(lr/wd)"
    return ADAMW_CONSTANT * math.sqrt(lr / weight_decay), "sqrt(lr/(2 wd))"


def steady_state(values: Sequence[float], tail: float = 0.5) -> float:
    """The steady-state RMS of a trajectory of RMS values: sqrt of the mean square over its last `tail` fraction (the
    mean square, not the mean RMS: ‖w‖² is what noise and decay balance)."""
    last = list(values)[-max(1, int(len(values) * tail)):]
    return math.sqrt(sum(v * v for v in last) / len(last))


def log_distance(a: Sequence[float], b: Sequence[float]) -> float:
    """Mean |ln(a_t / b_t)| over the steps: 0 when two RMS trajectories coincide, ln 2 when one is twice the other
    throughout (symmetric and scale-free, so matrices and multipliers read alike)."""
    pairs = [(x, y) for x, y in zip(a, b) if x > 0 and y > 0]
    return sum(abs(math.log(x / y)) for x, y in pairs) / len(pairs) if pairs else math.nan


def equilibrium_series(name: str, kind: str, shape: tuple[int, ...], algo: str, lr: float, weight_decay: float,
                       steps: Sequence[int], rms: Sequence[float], abm: Sequence[float]) -> EquilibriumSeries:
    """One parameter's equilibrium record: its equilibrium scale sqrt(lr/wd) (None without WD), the last RMS of the
    run and of its ABM over that scale, and the run-vs-ABM `log_distance`."""
    scale = math.sqrt(lr / weight_decay) if weight_decay > 0 and lr > 0 else None
    ratio = rms[-1] / scale if scale else None
    abm_ratio = abm[-1] / scale if scale else None
    return EquilibriumSeries(name, kind, tuple(shape), algo, float(lr), float(weight_decay), tuple(steps),
                             tuple(float(v) for v in rms), tuple(float(v) for v in abm), scale, ratio, abm_ratio,
                             log_distance(rms, abm))


def equilibrium_table(series: Iterable[EquilibriumSeries]) -> list[str]:
    """The text table of `lrm-mup equilibrium RUN_DIR`: one line per matrix and multiplier, at the last logged step."""
    series = list(series)
    width = max([len(s.name) for s in series] + [9])
    fmt = lambda x: "-" if x is None or not math.isfinite(x) else f"{x:.4g}"  # noqa: E731
    lines = [f"{'parameter'.ljust(width)}  {'kind':10}  {'lr':>9}  {'wd':>7}  {'rms':>8}  {'abm':>8}  "
             f"{'sqrt(lr/wd)':>11}  {'rms/scale':>9}  {'abm/scale':>9}  {'|ln rms/abm|':>12}"]
    for s in series:
        lines.append(f"{s.name.ljust(width)}  {s.kind:10}  {fmt(s.lr):>9}  {fmt(s.weight_decay):>7}  "
                     f"{fmt(s.rms[-1]):>8}  {fmt(s.abm[-1]):>8}  {fmt(s.scale):>11}  {fmt(s.ratio):>9}  "
                     f"{fmt(s.abm_ratio):>9}  {fmt(s.distance):>12}")
    return lines
