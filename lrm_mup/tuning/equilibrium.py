"""The noise–WD equilibrium (arXiv 2601.04890 eq. 1, §3): the ABM simulation, and a run's matrices and
multipliers measured against it.

With decoupled weight decay λ and an update of fixed RMS u·η per step (Adam's normalised update, Muon's
orthogonalised one), w ← (1 − ηλ) w − η·update. When the updates are noise, their squares add up while the decay
removes a fraction 2ηλ of ‖w‖² per step, so ‖w‖²_rms settles at η²u²S / (2ηλ), S the sum of the updates'
autocorrelations: ‖w‖_rms ∝ sqrt(η/λ), whatever the width and the data. AdamW fed i.i.d. N(0,1) gradients gives
sqrt(η/(2λ)) (η = 1e-3, λ = 0.1 → 0.0707); Muon with RMS-matched updates (0.2·sqrt(max(n, m))) about
0.54·sqrt(η/λ) (REFERENCE §1; torch's Muon measures 0.55–0.59 by shape, RESULTS.md). It takes ~1/(2ηλ) steps.

`simulate` is that ABM ("artificial Brownian motion"): the REAL optimizers (torch.optim.AdamW / torch.optim.Muon)
stepping a tensor whose gradient is fresh N(0,1) noise every step, under any LR schedule. `run_equilibrium` reads a
run folder: the RMS norms of every stored matrix W̃ and learnable multiplier that training logged in
metrics.jsonl (`Run.norms`, at the eval interval), and simulates for each its own ABM: the same shape, the same
initial values (the model rebuilt from the run's config and seed), the run's LR schedule (`training.config.lr_factor`),
its group's LR, WD, betas and ε. The comparison maths is `analysis.equilibrium_series` (torch-free).
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .. import analysis
from .._names import OPTIMIZERS
from ..core.multipliers import multiplied_modules, multiplier_parameters
from ..core.optim import ADAM_BETAS, ADAM_EPS, build_optimizer
from ..errors import ConfigError, MissingError
from ..records import Equilibrium, SweepTrial
from ..training.build import parametrized_model
from ..training.config import TrainConfig, lr_factor
from ..training.engine import Run
from ..training.run_folder import CONFIG, METRICS, read_metrics, resumed_config

ADJUST = ("original", "match_rms_adamw")  # torch.optim.Muon's adjust_lr_fn


def simulate(shape: Sequence[int] | torch.Tensor, steps: int, lr: float, weight_decay: float, *,
             optimizer: str = "adamw", schedule: Callable[[int], float] | None = None,
             betas: tuple[float, float] = ADAM_BETAS, eps: float = ADAM_EPS, momentum: float = 0.95,
             adjust_lr_fn: str = "match_rms_adamw", record: Sequence[int] | None = None, seed: int = 0
             ) -> dict[int, float]:
    """The ABM: `optimizer` (torch's AdamW, or Muon with `adjust_lr_fn`) on one tensor (zeros of `shape`, or a copy
    of the tensor given) whose gradient is i.i.d. N(0,1) at every step; the LR at step t is lr·schedule(t) (a torch
    LambdaLR, as training uses). Returns {step: RMS of the tensor after that step} at the steps in `record`
    (1-based; default every step)."""
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer {optimizer!r} is invalid; allowed: {', '.join(OPTIMIZERS)}")
    for name, value in (("lr", lr), ("weight_decay", weight_decay)):
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{name} is {value!r}; it must be a finite number >= 0")
    if not (isinstance(steps, int) and steps > 0):
        raise ConfigError(f"steps is {steps!r}; it must be a positive integer")
    init = shape.detach().float().clone() if isinstance(shape, torch.Tensor) else torch.zeros(tuple(shape))
    if optimizer == "muon" and init.ndim != 2:
        raise ConfigError(f"shape {tuple(init.shape)} is invalid for Muon: it updates matrices (2 dims) only")
    p = torch.nn.Parameter(init)
    if optimizer == "adamw":
        opt = torch.optim.AdamW([p], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=True)
    else:
        opt = torch.optim.Muon([p], lr=lr, weight_decay=weight_decay, momentum=momentum, adjust_lr_fn=adjust_lr_fn)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule) if schedule is not None else None
    wanted = sorted(set(range(1, steps + 1) if record is None else record))
    index = {s: i for i, s in enumerate(wanted)}
    mean_square = torch.zeros(len(wanted), dtype=torch.float64)  # filled on the tensor side: no sync per step
    gen = torch.Generator().manual_seed(seed)
    for step in range(1, steps + 1):
        p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
        if sched is not None:
            sched.step()
        if step in index:
            mean_square[index[step]] = p.detach().pow(2).mean()
    return dict(zip(wanted, mean_square.sqrt().tolist()))


def steady_rms(steps: int, lr: float, weight_decay: float, *, optimizer: str = "adamw",
               shape: Sequence[int] = (32, 64), seed: int = 0) -> float:
    """The ABM's steady-state RMS at a constant LR: `simulate` from zeros, RMS averaged over the last half of the
    steps (`analysis.steady_state`); `steps` should be several 1/(ηλ)."""
    rms = simulate(shape, steps, lr, weight_decay, optimizer=optimizer, seed=seed)
    return analysis.steady_state([rms[s] for s in sorted(rms)])


def abm_line(optimizer: str, lr: float, weight_decay: float, steps: int, shape: Sequence[int]) -> str:
    """`lrm-mup equilibrium --abm`: the steady-state RMS next to the prediction, on one line."""
    if weight_decay <= 0:
        raise ConfigError(f"--weight-decay {weight_decay!r} is invalid: the equilibrium needs weight decay > 0")
    rms = steady_rms(steps, lr, weight_decay, optimizer=optimizer, shape=shape)
    predicted, formula = analysis.abm_prediction(optimizer, lr, weight_decay)
    return (f"abm {optimizer} lr={lr:g} wd={weight_decay:g}: steady rms {rms:.4f}, predicted {formula} = "
            f"{predicted:.4f} (ratio {rms / predicted:.3f}; {steps} steps = {steps * lr * weight_decay:.3g}/(ηλ), "
            f"shape {','.join(map(str, shape))})")


def run_equilibrium(run_dir: str | os.PathLike, *, seed: int = 0,
                    log: Callable[[str], None] | None = None) -> Equilibrium:
    """Every stored matrix and learnable multiplier of the run in `run_dir`, its logged RMS next to sqrt(η/λ) and
    next to its own ABM (module doc). Needs the norms training logs at the eval interval. `log` gets one progress
    line per simulated parameter (one ABM of the run's steps each)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise MissingError(f"{str(run_dir)!r} is not a run folder (no {CONFIG}): give a folder `lrm-mup train --out` "
                           "wrote")
    cfg = resumed_config(run_dir)  # the run's config, checked (a damaged one: one line)
    logged = {}
    for row, _ in read_metrics(run_dir / METRICS, strict=False):
        if isinstance(row.get("norms"), dict) and isinstance(row.get("step"), int):
            logged[row["step"]] = row["norms"]
    if not logged:
        raise MissingError(f"{run_dir / METRICS} holds no logged norms: the run was trained by an lrm-mup that did "
                           "not log them; train it again")
    return equilibrium_of(cfg, logged, str(run_dir), seed=seed, log=log)


def trial_equilibrium(trial: SweepTrial, *, seed: int = 0, log: Callable[[str], None] | None = None) -> Equilibrium:
    """`run_equilibrium` of a sweep trial: a trial keeps no run folder, so its first seed's norms come from the
    trial record (`SweepTrial.norms`, logged at the eval interval like a train run's) and its config from
    `SweepTrial.config`."""
    where = f"{trial.study} trial {trial.trial}"
    if not trial.norms:
        raise MissingError(f"sweep {where} holds no logged norms (a trial of an lrm-mup that did not log them, or one "
                           "stopped before its first eval interval); run the sweep again into a new folder")
    try:
        cfg = TrainConfig.from_dict(trial.config)
    except ConfigError as e:
        raise ConfigError(f"sweep {where}: {e}") from None
    return equilibrium_of(cfg, {int(step): n for step, n in trial.norms.items()}, where, seed=seed, log=log)


def equilibrium_of(cfg: TrainConfig, logged: dict[int, dict[str, float]], source: str, *, seed: int = 0,
                   log: Callable[[str], None] | None = None) -> Equilibrium:
    """The equilibrium record of a run of `cfg` whose norms were `logged` ({step: {parameter: rms}}): each
    parameter's own ABM from its initial value (the model rebuilt from the config and seed) under the run's
    schedule and its optimizer group's LR, WD, betas and ε."""
    steps = sorted(logged)
    model = parametrized_model(cfg)
    groups = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, adam_lr=cfg.adam_lr,
                             mult_lr=cfg.mult_lr, mult_wd=cfg.mult_wd).param_groups  # the run's groups, ε included
    group_of = {id(p): g for g in groups for p in g["params"]}
    named = [(f"{n}.weight", m.weight, "matrix") for n, m in multiplied_modules(model) if not m.parametrization.tied]
    named += [(n, p, "multiplier") for n, p in multiplier_parameters(model)]
    schedule = lambda s: lr_factor(s, cfg)  # noqa: E731 - the run's own schedule, the one function
    series = []
    for i, (name, p, kind) in enumerate(named, 1):
        if log is not None:
            log(f"abm {i}/{len(named)}: {name} ({steps[-1]} steps)")
        g = group_of[id(p)]
        rms = [logged[s].get(name) for s in steps]
        if any(r is None for r in rms):
            continue
        muon = g["algo"] == "muon"
        abm = simulate(p, steps[-1], g["lr"], g["weight_decay"], optimizer="muon" if muon else "adamw",
                       schedule=schedule, eps=g.get("eps", ADAM_EPS), adjust_lr_fn="original", record=steps,
                       seed=seed)
        series.append(analysis.equilibrium_series(name, kind, tuple(p.shape), g["algo"], g["lr"], g["weight_decay"],
                                                  steps, rms, [abm[s] for s in steps]))
    return Equilibrium(source, cfg.recipe, cfg.optimizer, cfg.width, cfg.steps, tuple(series))


def symmetry_drift(cfg: TrainConfig, every: int = 100, *, bf16: bool = True, corpus=None) -> list[dict]:
    """Train `cfg` (under CPU bf16 autocast when `bf16`) and record, every `every` steps, the drift along the
    forward pass's symmetries that only the multipliers' weight decay pins (arXiv 2601.04890 §4.1):

    - `qk`: max over blocks of |log10(rms(r_Q) / rms(r_K))|, the Q/K row multipliers' ratio (q·k is invariant under
      (r_Q, r_K) → (σ r_Q, r_K/σ), so no gradient holds the ratio and Adam's noise walks it);
    - `branch`: RMS of the residual branches' outputs (attention and MLP, max over blocks) on one fixed validation
      batch: everything feeding an RMSNorm can grow freely;
    - `loss`: the train loss.

    Returns one dict per record step (step 0 = init)."""
    run = Run.create(cfg, corpus, progress=False)
    x, _ = next(iter(run.corpus.val_batches(cfg.batch, cfg.context, 1)))
    blocks = [m for m in run.model.modules() if hasattr(m, "attn") and hasattr(m, "mlp")]
    outputs: dict[str, float] = {}

    def hook(key):
        def record(_module, _inp, out):
            outputs[key] = max(outputs.get(key, 0.0), out.detach().float().pow(2).mean().sqrt().item())
        return record

    def measure(step: int, loss: float) -> dict:
        ratios = [abs(math.log10(b.attn.q.mult_row.detach().float().pow(2).mean().sqrt().item()
                                 / b.attn.k.mult_row.detach().float().pow(2).mean().sqrt().item()))
                  for b in blocks if getattr(b.attn.q, "mult_row", None) is not None
                  and getattr(b.attn.k, "mult_row", None) is not None]
        outputs.clear()
        handles = [m.register_forward_hook(hook(k)) for b in blocks for k, m in (("attn", b.attn), ("mlp", b.mlp))]
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            run.model(x)
        for h in handles:
            h.remove()
        return {"step": step, "loss": loss, "qk": max(ratios, default=math.nan),
                "branch": max(outputs.values(), default=math.nan)}

    rows = [measure(0, math.nan)]
    while run.step < cfg.steps:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # the engine's own autocast is CUDA-only
            loss, _ = run.train_step()
        if run.step % every == 0 or run.step == cfg.steps:
            rows.append(measure(run.step, loss))
        if not math.isfinite(loss):
            break
    return rows
