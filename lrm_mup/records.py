"""Typed records that stages exchange (frozen dataclasses with a schema version and a strict-JSON round trip; see
`lrm_mup._record`). Training yields `StepRecord`s and returns a `RunResult`; the tuning stages, the analysis and the
report read and write only records like these, never each other's internals.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ._record import Record

RUN_STATUSES = ("ok", "diverged", "stopped")


@dataclass(frozen=True)
class StepRecord(Record):
    """One optimizer step of a run: train loss (nats, averaged over ranks), the clipped-against gradient norm
    (multipliers excluded, lr-only's units), the first group's LR, tokens and model FLOPs so far, throughput, and
    validation bits/byte and the RMS of every stored matrix and learnable multiplier by parameter name
    (`Run.norms`, for the noise–WD equilibrium) when the step evaluated."""

    SCHEMA: ClassVar[str] = "step"
    step: int
    loss: float
    grad_norm: float
    lr: float
    tokens: int
    flops: float
    tokens_per_s: float
    val_bpb: float | None = None
    norms: dict[str, float] | None = None


@dataclass(frozen=True)
class RunResult(Record):
    """How a training run ended: status ("ok", "diverged" or "stopped": stopped early and resumable), the last step,
    its train loss (nats), validation bits/byte, tokens, model training FLOPs and wall seconds."""

    SCHEMA: ClassVar[str] = "run-result"
    status: str
    step: int
    train_loss: float
    val_bpb: float
    tokens: int
    flops: float
    seconds: float

    def summary(self) -> str:
        """One line, losses in one unit: bits/byte (byte tokens: nats / ln 2), the train loss's nats in brackets."""
        return (f"{self.status}: step {self.step}, train {self.train_loss / math.log(2):.4f} bits/byte "
                f"({self.train_loss:.4f} nats), val {self.val_bpb:.4f} bits/byte, {self.tokens:,} tokens, "
                f"{self.flops:.3g} FLOPs, {self.seconds:.1f} s")


# ----------------------------------------------------------------------------------------------------------
# a sweep: one record per trial (lrm_mup.tuning.sweep.records)


@dataclass(frozen=True)
class SweepTrial(Record):
    """One trial of a sweep, as its study holds it: Optuna `state` (COMPLETE, PRUNED, ...), the recipe, width and
    seed(s) (`seed` None for a multi-seed tpe/random trial), log2 of its LR, the other search parameters in `params`
    (None where one does not apply to the recipe), the final validation bits/byte (the cap for a diverged trial,
    None if pruned), the last train loss (nats, seed mean; NaN when not finite), `status` (ok / diverged / pruned;
    running / waiting / failed for unfinished ones), the pruner's or the divergence's `reason`, tokens, model
    training FLOPs, wall and CPU seconds, and the TrainConfig dict of its first seed. `norms`: the
    first seed's RMS of every stored matrix and learnable multiplier (`Run.norms`) at the eval interval,
    {step: {parameter: rms}} with the step as a string (a trial keeps no run folder; `lrm-mup equilibrium` reads them
    from here); empty for trials of older sweeps and for diverged steps never reached."""

    SCHEMA: ClassVar[str] = "sweep-trial"
    study: str
    trial: int
    state: str
    recipe: str | None
    width: int | None
    log2_lr: float | None
    val_bpb: float | None
    train_loss: float
    status: str
    tokens: int = 0
    flops: float = 0.0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    config: dict = field(default_factory=dict)
    seed: int | None = None
    seeds: tuple[int, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    norms: dict[str, dict[str, float]] = field(default_factory=dict)

    def param(self, name: str):
        """A search parameter's value: log2_lr or one of `params` (None where it does not apply)."""
        return self.log2_lr if name == "log2_lr" else self.params.get(name)

    def row(self) -> dict:
        """The tidy row: every field, with the search parameters as keys of their own (a pandas-friendly dict)."""
        return {"study": self.study, "trial": self.trial, "state": self.state, "recipe": self.recipe,
                "width": self.width, "seed": self.seed, "seeds": list(self.seeds), "log2_lr": self.log2_lr,
                **self.params, "val_bpb": self.val_bpb, "train_loss": self.train_loss, "status": self.status,
                "reason": self.reason, "tokens": self.tokens, "flops": self.flops, "seconds": self.seconds,
                "cpu_seconds": self.cpu_seconds, "config": self.config}


# ----------------------------------------------------------------------------------------------------------
# what the sweep's trials say (lrm_mup.analysis)


@dataclass(frozen=True)
class BestSetting(Record):
    """The best search-parameter setting of a recipe at a width: its parameters (log2_lr included), seed-mean
    validation bits/byte, how many trials (seeds) it averages and the TrainConfig dict to train it again."""

    SCHEMA: ClassVar[str] = "best-setting"
    recipe: str
    width: int | None
    params: dict[str, Any]
    val_bpb: float
    trials: int
    config: dict


@dataclass(frozen=True)
class LRCurve(Record):
    """Final validation loss against log2 LR at one width of one recipe (LRs sorted): the seed mean per LR (inf where
    a seed diverged), seeds per LR, and the optimum (argmin; None when every point diverged)."""

    SCHEMA: ClassVar[str] = "lr-curve"
    log2_lr: tuple[float, ...]
    val_bpb: tuple[float, ...]
    seeds: tuple[int, ...]
    opt_log2_lr: float | None
    opt_val_bpb: float | None


@dataclass(frozen=True)
class OptimumSpread(Record):
    """How far a recipe's optimum log2 LR moves over the sweep's widths: the optimum per width, the spread
    (max − min over widths with a finite optimum; None below two), the widest/narrowest width ratio, and whether
    it stays within the transfer threshold (None: not measured)."""

    SCHEMA: ClassVar[str] = "optimum-spread"
    widths: tuple[int, ...]
    opt_log2_lr: dict[int, float | None]
    spread: float | None
    width_ratio: float | None
    transfers: bool | None


@dataclass(frozen=True)
class SweepCost(Record):
    """Trials, tokens, model FLOPs and wall seconds summed over a set of trials."""

    SCHEMA: ClassVar[str] = "sweep-cost"
    trials: int
    tokens: int
    flops: float
    seconds: float


@dataclass(frozen=True)
class RecipeCosts(Record):
    """A recipe's sweep cost: every trial (`all`) and those at its proxy width (`proxy`)."""

    SCHEMA: ClassVar[str] = "recipe-costs"
    proxy_width: int | None
    all: SweepCost
    proxy: SweepCost


@dataclass(frozen=True)
class SlopeFit(Record):
    """Least-squares fit of log2(value) = intercept + slope · log2(width) over `n` points (value ∝ width^slope);
    slope, intercept and r2 None when the points span fewer than two widths."""

    SCHEMA: ClassVar[str] = "slope-fit"
    slope: float | None
    intercept: float | None
    r2: float | None
    n: int


# ----------------------------------------------------------------------------------------------------------
# a transfer: its runs, per recipe what they say, the learned multipliers' width scaling (transfer.json)


@dataclass(frozen=True)
class TransferRun(Record):
    """One training run of a transfer: its folder name (and `path`, relative to the transfer folder), recipe, width,
    log2 LR offset from the transferred LR, seed, role (proxy / target / lr-sweep), LR, how it ended (val_bpb
    and train_loss None when not finite), and its depth (blocks; records written before transfer across depth
    have None: the proxy's depth)."""

    SCHEMA: ClassVar[str] = "transfer-run"
    name: str
    recipe: str
    width: int
    offset: int
    seed: int
    role: str
    log2_lr: float
    lr: float
    status: str
    val_bpb: float | None
    train_loss: float | None
    tokens: int
    flops: float
    seconds: float
    path: str
    depth: int | None = None


@dataclass(frozen=True)
class LRSweep(Record):
    """The direct LR sweep at the target width: log2 LR, offset from the transferred LR, seed-mean val bits/byte."""

    SCHEMA: ClassVar[str] = "lr-sweep"
    log2_lr: tuple[float, ...]
    offset: tuple[int, ...]
    val_bpb: tuple[float | None, ...]


@dataclass(frozen=True)
class TargetCost(Record):
    """One target run's cost (the mean over its seeds)."""

    SCHEMA: ClassVar[str] = "target-cost"
    runs: int
    tokens: float
    flops: float
    seconds: float


@dataclass(frozen=True)
class RecipeTransfer(Record):
    """What a recipe's transfer runs say: the transferred LR, seed-mean loss per width, the direct LR sweep at the
    target, its optimum, the gaps (`lr_gap_log2` = transferred − optimum in log2 LR; `loss_gap_bpb` ≥ 0 what the
    transferred LR costs; `optimum_at_edge`: the gap is a lower bound), a target run's cost, and each run's status.
    Across depth: the proxy's and the target's depth, the depth rule the runs share with its base depth,
    and the seed-mean loss per depth at the target width (`val_bpb_by_width` is at the target depth); records
    written before transfer across depth have None / {} there."""

    SCHEMA: ClassVar[str] = "recipe-transfer"
    proxy_width: int
    target_width: int
    transferred_log2_lr: float
    val_bpb_by_width: dict[str, float | None]
    target_val_bpb: float | None
    lr_sweep: LRSweep
    target_optimum_log2_lr: float | None
    target_optimum_val_bpb: float | None
    lr_gap_log2: int | None
    loss_gap_bpb: float | None
    optimum_at_edge: bool
    target_cost: TargetCost
    status: dict[str, str]
    proxy_depth: int | None = None
    target_depth: int | None = None
    depth_rule: str | None = None
    base_depth: int | None = None
    val_bpb_by_depth: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class LayerMultipliers(Record):
    """One multiplied layer of an `lrm` run: role, kind, block, the fixed μP factor, the learned values (scale s,
    mean |r| of the row vector, mean |c| of the column vector), learned = s·mean|r|·mean|c| and
    total = fixed_mult × learned."""

    SCHEMA: ClassVar[str] = "layer-multipliers"
    module: str
    role: str
    kind: str
    block: int | None
    fixed_mult: float
    learned: dict[str, float]
    learned_product: float
    total: float


@dataclass(frozen=True)
class MultiplierValues(Record):
    """The multipliers of one `lrm` run (its folder `run`), layer by layer."""

    SCHEMA: ClassVar[str] = "multiplier-values"
    run: str
    width: int
    optimizer: str
    placement: str
    layers: tuple[LayerMultipliers, ...]


@dataclass(frozen=True)
class QuantityScaling(Record):
    """One quantity (a role, a role's multiplier kind, or the query×key product) over widths: total, fixed and learned
    values (geometric means; None where not positive-finite), their log-log slopes, r², and the paper's prediction."""

    SCHEMA: ClassVar[str] = "quantity-scaling"
    widths: tuple[int, ...]
    total: tuple[float | None, ...]
    fixed: tuple[float | None, ...]
    learned: tuple[float | None, ...]
    slope_total: float | None
    slope_fixed: float | None
    slope_learned: float | None
    r2_total: float | None
    r2_learned: float | None
    predicted: float | None


@dataclass(frozen=True)
class MultiplierScaling(Record):
    """Width scaling of the learned multipliers over `lrm` runs (paper Fig. 5), one `QuantityScaling` per quantity."""

    SCHEMA: ClassVar[str] = "multiplier-scaling"
    widths: tuple[int, ...]
    runs: tuple[str, ...]
    optimizer: str
    placement: str
    quantities: dict[str, QuantityScaling]


@dataclass(frozen=True)
class TransferSummary(Record):
    """A transfer (transfer.json): where the best settings came from, the direct sweep's offsets, the proxy configs
    per recipe, what each recipe's runs say, every run, the multipliers' width scaling (None, with the reason in
    `multipliers_error` when it could not be read) and the wall seconds of the whole transfer."""

    SCHEMA: ClassVar[str] = "transfer-summary"
    source: str
    lr_offsets: tuple[int, ...]
    best: dict[str, dict]
    recipes: dict[str, RecipeTransfer]
    runs: tuple[TransferRun, ...]
    multipliers: MultiplierScaling | None = None
    multipliers_error: str | None = None
    seconds: float | None = None


# ----------------------------------------------------------------------------------------------------------
# verdicts


@dataclass(frozen=True)
class CoordCheckVerdict(Record):
    """One coordinate-check series' judgement (recipe, module, quantity), with the slope that decided it: at "t=0",
    or the mean over "t=a..b", and its confidence band [low, high] (`lrm_mup.analysis.judge`). status "pass": the
    band lies within the threshold of the expected slope; "fail": it lies outside; "inconclusive": it straddles the
    limit, and `seeds_needed` seeds (at the measured scatter, None when no number of seeds would do) would decide it.
    passed is status == "pass". Version 1 records had no band (status, low, high and seeds_needed left at None)."""

    SCHEMA: ClassVar[str] = "coord-check-verdict"
    VERSION: ClassVar[int] = 2
    recipe: str
    module: str
    quantity: str
    at: str
    slope: float
    expected: float
    passed: bool
    status: str | None = None
    low: float | None = None
    high: float | None = None
    seeds_needed: int | None = None


@dataclass(frozen=True)
class RecipeVerdict(Record):
    """One recipe in the tuning verdict: μP or not, its optimum spread over the sweep's widths (and whether it stays
    within the threshold: μP recipes only), its loss where the recipes are ranked, and the transfer's gaps."""

    SCHEMA: ClassVar[str] = "recipe-verdict"
    mu_p: bool
    spread: float | None
    widths: tuple[int, ...] | None
    transfers: bool | None
    target_val_bpb: float | None
    lr_gap_log2: int | None
    loss_gap_bpb: float | None
    optimum_at_edge: bool | None


@dataclass(frozen=True)
class TuningVerdict(Record):
    """Which recipe won, where (`where`: the transfer's target, or the sweep's widest width without a transfer), by
    how much over the runner-up, the ranking, seeds per point (the fewest), and each recipe's verdict."""

    SCHEMA: ClassVar[str] = "tuning-verdict"
    where: str
    threshold: float
    ranking: tuple[str, ...]
    recipes: dict[str, RecipeVerdict]
    seeds: int
    winner: str | None = None
    margin_bpb: float | None = None
    runner_up: str | None = None
    target_width: int | None = None
    winner_val_bpb: float | None = None


# ----------------------------------------------------------------------------------------------------------
# the noise–WD equilibrium of a run (lrm_mup.tuning.equilibrium, analysis.equilibrium_series)


@dataclass(frozen=True)
class EquilibriumSeries(Record):
    """One stored matrix W̃ or learnable multiplier of a run: its RMS at the logged steps, its ABM's (the same
    optimizer fed N(0,1) gradients from the same initial values under the same LR schedule, LR and WD) at the same
    steps, the equilibrium scale sqrt(lr/wd) of its group's peak LR and WD (None without WD), `ratio` = last RMS /
    that scale (the ABM's `abm_ratio`), and `distance` = mean over the logged steps of |ln(rms / abm)| (0: the
    parameter moves like noise; a multiplier that learns scale from signal sits far from its ABM)."""

    SCHEMA: ClassVar[str] = "equilibrium-series"
    name: str
    kind: str                      # "matrix" or "multiplier"
    shape: tuple[int, ...]
    algo: str                      # "adamw" or "muon"
    lr: float
    weight_decay: float
    steps: tuple[int, ...]
    rms: tuple[float, ...]
    abm: tuple[float, ...]
    scale: float | None
    ratio: float | None
    abm_ratio: float | None
    distance: float


@dataclass(frozen=True)
class Equilibrium(Record):
    """`lrm-mup equilibrium RUN_DIR`: every matrix and multiplier of one run against sqrt(η/λ) and its ABM."""

    SCHEMA: ClassVar[str] = "equilibrium"
    run: str
    recipe: str
    optimizer: str
    width: int
    steps: int
    series: tuple[EquilibriumSeries, ...] = ()

# the tuning ablation (tiers) and the tuning-cost curves (lrm_mup.analysis, lrm_mup.tuning.tiers)


@dataclass(frozen=True)
class CostPoint(Record):
    """One trial of a tuning study in trial order: its number, status and value (val bits/byte, None when pruned),
    the study's cumulative trials and model training FLOPs through it (every trial counts, pruned and diverged ones
    included: they were paid for), and the best-so-far setting (`analysis.best_settings` over the trials so far: its
    first trial's number and seed-mean value; None while no trial has converged)."""

    SCHEMA: ClassVar[str] = "cost-point"
    trial: int
    status: str
    val_bpb: float | None
    trials: int
    flops: float
    best_trial: int | None
    best_val_bpb: float | None


@dataclass(frozen=True)
class CostCurve(Record):
    """The best-so-far curve of one study (`study`, one recipe at one width): one `CostPoint` per trial, in trial
    order; `best_val_bpb` never rises along it."""

    SCHEMA: ClassVar[str] = "cost-curve"
    study: str
    recipe: str
    width: int
    points: tuple[CostPoint, ...]


@dataclass(frozen=True)
class BudgetPoint(Record):
    """The best-so-far setting of a study when its cumulative FLOPs reached `budget_flops`: the trials and FLOPs
    actually spent by then (≤ the budget), the chosen trial, its parameters, proxy value and TrainConfig dict (what
    is trained at the target). `best_trial` None: no trial had converged within the budget."""

    SCHEMA: ClassVar[str] = "budget-point"
    study: str
    recipe: str
    budget_flops: float
    trials: int
    flops: float
    best_trial: int | None
    params: dict[str, Any]
    proxy_val_bpb: float | None
    config: dict


@dataclass(frozen=True)
class TargetPoint(Record):
    """A `BudgetPoint`'s setting trained at the target width: per-seed val bits/byte (None for a diverged seed),
    their mean (inf-free: None when a seed diverged) and range (max − min, None below two seeds)."""

    SCHEMA: ClassVar[str] = "target-point"
    budget: BudgetPoint
    target_width: int
    seed_val_bpb: tuple[float | None, ...]
    val_bpb: float | None
    seed_range_bpb: float | None


@dataclass(frozen=True)
class TierRow(Record):
    """One row of the paper's tuning ablation (§5.1): a recipe at a tier (NONE: the defaults; LR: the LR tuned;
    FULL: the LR and the recipe's multipliers' hyperparameters tuned), what the tier searched, its proxy trials and
    FLOPs, the winning setting and its proxy value, and at the target width the per-seed losses, their mean and
    range (as `TargetPoint`)."""

    SCHEMA: ClassVar[str] = "tier-row"
    recipe: str
    tier: str
    searched: tuple[str, ...]
    trials: int
    proxy_flops: float
    params: dict[str, Any]
    proxy_val_bpb: float | None
    target_width: int | None
    seed_val_bpb: tuple[float | None, ...]
    val_bpb: float | None
    seed_range_bpb: float | None


@dataclass(frozen=True)
class CostVerdict(Record):
    """Which tuning reaches `target_loss` (val bits/byte at the target width) with the least tuning compute: per
    curve (a recipe and tier, e.g. "lrm FULL") the proxy FLOPs and trials of the first budget point whose target
    loss is at most it (None: never within its budget), the `winner`, and what the same quality costs when tuned
    directly at the target width (`direct_*`: the direct study's cumulative FLOPs and trials until its best-so-far
    reached the loss; None when it did not within `direct_budget_flops`, or no direct study was run), and the
    verdict in one sentence."""

    SCHEMA: ClassVar[str] = "cost-verdict"
    target_loss: float | None
    flops_to_reach: dict[str, float | None]
    trials_to_reach: dict[str, int | None]
    winner: str | None
    direct: str | None
    direct_flops: float | None
    direct_trials: int | None
    direct_budget_flops: float | None
    sentence: str


@dataclass(frozen=True)
class TierClaim(Record):
    """One of the paper's tier claims (§5.1) checked against a tier table: the claim, the measured difference
    (bits/byte, `a` − `b`), the seed range that judges it, and whether it holds (None: within the seed range, open)."""

    SCHEMA: ClassVar[str] = "tier-claim"
    claim: str
    a: str
    b: str
    difference_bpb: float | None
    seed_range_bpb: float | None
    holds: bool | None
