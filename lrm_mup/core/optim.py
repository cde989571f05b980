"""Optimizers for parametrized models: parameter groups with μP's LR/WD scales, Muon+AdamW, clipping.

Groups: matrices (AdamW, or Muon for hidden 2-D matrices), learnable multipliers (AdamW with their own LR and a small
decoupled WD that pins the forward-pass symmetries, 2e-3 as in the paper) and vectors/norms/biases (AdamW, no WD).
Each group stores its `lr_scale`/`wd_scale` (and, under a depth rule, the `eps_scale` its Adam ε is multiplied by:
`core.depth`) and starts at lr·lr_scale, so a torch LR scheduler (which multiplies each
group's initial LR) keeps the μP ratios: schedulers multiply, they never overwrite.
Muon gets the embedding and readout through AdamW (its orthogonalized update suits hidden matrices only) and runs with
adjust_lr_fn="original", whose update spectral norm is width-independent (see `recipes`).

Adam's ε across width: the update is m̂ / (sqrt(v̂) + ε), and mup/lrm store hidden weights m × lr-only's, so their
stored gradients (m̂, sqrt(v̂)) are 1/m of lr-only's: a fixed ε would weigh as m·ε in lr-only's units, and the part of
the update it removes would grow ∝ m (measured, benchmarks/bench_eps.py: 0.12% of mup's hidden updates at width 1024
from base 64, extrapolated 6% at 8192, against 0.05% for lr-only). So each AdamW group gets ε / grad_unit
(`LayerParametrization.grad_unit`: m for mup/lrm hidden matrices, 1 elsewhere), as CompleteP (arXiv 2505.01618) scales
ε with its parametrization: mup then takes exactly lr-only's Adam steps (without weight decay) whatever ε is.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import RecipeError
from . import depth
from .multipliers import multiplied_modules, multiplier_parameters
from .parametrization import MODEL_ATTR, parametrization_of
from .recipes import OPTIMIZERS
from .roles import FINITE, HIDDEN, per_channel_parameters

MULTIPLIER_WD = 2e-3
# the learnable multipliers' default LR: this × the AdamW LR. Measured (benchmarks/RESULTS.md, "Issue 12: the
# multipliers' LR grid"): on the demo's model at the optimal matrix LR, mult_lr = LR/4 beat mult_lr = LR at widths 64
# (by 0.045 and 0.033 bits/byte, seeds 0 and 1), 128 (0.011) and 256 (0.008), and LR/16 was no better than LR/4; a
# ratio (not a constant) keeps the one tuned LR the only knob and travels with it under LR transfer, and the
# multipliers are width-independent by construction, so no width rule. The paper does not state its multiplier LR.
MULT_LR_RATIO = 0.25
ADAM_BETAS = (0.9, 0.95)  # every AdamW group's betas and ε (the equilibrium's ABM reuses them)
ADAM_EPS = 1e-8


def param_groups(
    model: nn.Module,
    optimizer: str,
    lr: float,
    weight_decay: float = 0.0,
    *,
    adam_lr: float | None = None,
    mult_lr: float | None = None,
    mult_wd: float = MULTIPLIER_WD,
) -> list[dict]:
    """Parameter groups with absolute `lr`/`weight_decay` and their `lr_scale`/`wd_scale`, each tagged with the
    `algo` that updates it ("muon" or "adamw") and a readable `name`."""
    for name, value in (("lr", lr), ("weight_decay", weight_decay), ("mult_wd", mult_wd),
                        ("adam_lr", adam_lr), ("mult_lr", mult_lr)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise RecipeError(f"{name} is {value!r}; it must be a finite number >= 0")
    adam_lr = lr if adam_lr is None else adam_lr
    mult_lr = MULT_LR_RATIO * adam_lr if mult_lr is None else mult_lr
    groups: dict[tuple, dict] = {}
    seen: set[int] = set()

    def add(p, algo, kind, base_lr, lr_scale, wd, wd_scale, grad_unit=1.0, eps_scale=1.0):
        if id(p) in seen or not p.requires_grad:
            return
        seen.add(id(p))
        key = (algo, kind, lr_scale, wd_scale, grad_unit, eps_scale)
        if key not in groups:
            scales = "" if (lr_scale, wd_scale) == (1.0, 1.0) else f" lr×{lr_scale:.4g} wd×{wd_scale:.4g}"
            scales += "" if eps_scale == 1.0 else f" eps×{eps_scale:.4g}"
            groups[key] = {"params": [], "name": f"{algo}/{kind}{scales}", "algo": algo, "lr": base_lr * lr_scale,
                           "weight_decay": wd * wd_scale, "lr_scale": lr_scale, "wd_scale": wd_scale,
                           "grad_unit": grad_unit}
            if eps_scale != 1.0:  # the depth rule's ε factor (core.depth); build_optimizer sets the group's eps
                groups[key]["eps_scale"] = eps_scale
        groups[key]["params"].append(p)

    record = parametrization_of(model)
    # parameter names as the parametrized module has them (a DDP / torch.compile wrapper adds a prefix)
    inner = next(m for m in model.modules() if MODEL_ATTR in m.__dict__)
    own_names = {id(p): n for n, p in inner.named_parameters(remove_duplicate=False)}

    def add_vector(name, p, kind, base_lr, wd):  # the depth rule's LR / ε factors by the parameter's name
        d = depth.parameter_depth(own_names.get(id(p), name), record)
        add(p, "adamw", kind, base_lr, d.lr_scale, wd, 1.0, eps_scale=d.eps_scale)

    for name, m in multiplied_modules(model):
        info = m.parametrization
        muon = optimizer == "muon" and isinstance(m, nn.Linear) and info.kind in (HIDDEN, FINITE)
        if not info.tied:  # a tied weight is updated under its owner's rules
            add(m.weight, "muon" if muon else "adamw", info.kind, lr if muon else adam_lr, info.lr_scale,
                weight_decay, info.wd_scale, info.grad_unit, info.eps_scale)
        if getattr(m, "bias", None) is not None:
            add_vector(f"{name}.bias", m.bias, "vector", adam_lr, 0.0)
    for name, p in multiplier_parameters(model):
        add_vector(name, p, "multiplier", mult_lr, mult_wd)
    per_channel = per_channel_parameters(model)  # depthwise conv1d weights: vectors, in ≥ 2-dim tensors
    for name, p in model.named_parameters():
        # matrices outside the converted layers (no width dim, or a raw position table): plain SP
        if p.ndim >= 2 and id(p) not in per_channel:
            add(p, "adamw", "finite", adam_lr, 1.0, weight_decay, 1.0)
        else:
            add_vector(name, p, "vector", adam_lr, 0.0)
    return list(groups.values())


class MuonAdamW(torch.optim.Optimizer):
    """torch.optim.Muon for hidden matrices and torch.optim.AdamW for the rest, behind one optimizer object (one
    LR scheduler, one state_dict). The inner optimizers see this object's group dicts and state, so its state_dict
    has the standard format (the one torch.distributed.checkpoint reads)."""

    def __init__(self, groups: list[dict], betas=ADAM_BETAS, eps=ADAM_EPS, momentum=0.95, fused: bool | None = None):
        muon = [g for g in groups if g["algo"] == "muon"]
        adamw = [g for g in groups if g["algo"] == "adamw"]
        self.inner = []
        if muon:
            self.inner.append(torch.optim.Muon(muon, momentum=momentum, adjust_lr_fn="original"))
        if adamw:
            self.inner.append(torch.optim.AdamW(adamw, betas=betas, eps=eps, fused=fused))
        super().__init__([g for opt in self.inner for g in opt.param_groups], {})
        self._link()

    def _link(self) -> None:
        start = 0
        for opt in self.inner:
            n = len(opt.param_groups)
            opt.param_groups, opt.state = self.param_groups[start:start + n], self.state
            start += n

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.inner:
            opt.step()
        return loss

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)  # new group dicts and a new state: shared with the inner optimizers again
        self._link()


def build_optimizer(
    model: nn.Module,
    optimizer: str = "adamw",
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    *,
    adam_lr: float | None = None,
    mult_lr: float | None = None,
    mult_wd: float = MULTIPLIER_WD,
    betas: tuple[float, float] = ADAM_BETAS,
    eps: float = ADAM_EPS,
) -> torch.optim.Optimizer:
    """The optimizer for a parametrized model: "adamw" (torch AdamW) or "muon" (torch Muon + AdamW).

    `eps` is Adam's ε in lr-only's gradient units: each AdamW group gets eps / grad_unit (module doc).

    lr: matrices' LR (Muon's under "muon"); adam_lr: AdamW groups' LR under "muon" (default lr);
    mult_lr / mult_wd: learnable multipliers' LR (default: MULT_LR_RATIO × the AdamW LR, LR/4) and decoupled WD.
    """
    if optimizer not in OPTIMIZERS:
        raise RecipeError(f"unknown optimizer {optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
    parametrized_for = parametrization_of(model).optimizer
    if parametrized_for != optimizer:
        raise RecipeError(
            f"model was parametrized for {parametrized_for!r}, not {optimizer!r}: pass optimizer={optimizer!r} to "
            "parametrize (μP's width rules depend on the optimizer)"
        )
    groups = param_groups(model, optimizer, lr, weight_decay, adam_lr=adam_lr, mult_lr=mult_lr, mult_wd=mult_wd)
    for g in groups:
        if g["algo"] == "adamw":
            # ε in lr-only's gradient units (module doc: Adam's ε across width), times the depth rule's factor
            g["eps"] = eps * g.get("eps_scale", 1.0) / g["grad_unit"]
    fused = fused_adamw(model)
    if optimizer == "adamw":
        return torch.optim.AdamW(groups, betas=betas, eps=eps, fused=fused)
    return MuonAdamW(groups, betas=betas, eps=eps, fused=fused)


FUSED_DEVICES = ("cpu", "cuda")


def fused_adamw(model: nn.Module) -> bool | None:
    """True (torch's fused AdamW: one kernel per device and dtype for all of a group's tensors) when every parameter
    is a floating tensor on a CPU or CUDA device, else None (torch's own default). Without it, torch picks foreach on
    CUDA and a per-tensor loop on CPU, about ten elementwise passes over each tensor: measured on CPU (1 thread, the
    lrm proxy at width 512, 51 tensors) the fused step takes 38 ms against 180 ms (benchmarks/RESULTS.md, issue 15).
    Same update rule; the results differ from the loop's by rounding only."""
    params = list(model.parameters())
    return True if params and all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in params) else None


def clip_grad_norm_(model: nn.Module, max_norm: float, *, include_multipliers: bool = False) -> torch.Tensor:
    """Clip all gradients by one factor, computed from the global norm of every gradient except the learnable
    multipliers' (the paper: counting them makes clipping far too aggressive early on). Returns that norm.

    Each hidden matrix's gradient is measured in lr-only's units (`LayerParametrization.grad_unit`: × m under mup
    and lrm, whose stored hidden weights are m × lr-only's, so their gradients are 1/m × lr-only's). mup and lrm then
    clip exactly when and as much as lr-only does, whose norm hardly moves with width; measured on stored gradients
    their norm would fall as 1/width and the same `clip` would act at the proxy but not at the target."""
    layers = [m for _, m in multiplied_modules(model)]  # one walk of the modules per step, no names built
    units = {id(m.weight): m.parametrization.grad_unit for m in layers}
    mult_ids = {id(p) for m in layers for p in m.learned_multipliers().values()}
    params = [p for p in model.parameters() if p.grad is not None]
    by_unit: dict[float, list[torch.Tensor]] = {}
    for p in params:
        if include_multipliers or id(p) not in mult_ids:
            by_unit.setdefault(units.get(id(p), 1.0), []).append(p.grad)
    norms = [torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False) * unit for unit, grads in by_unit.items()]
    total = (torch.nn.utils.get_total_norm([]) if not norms else norms[0] if len(norms) == 1
             else torch.linalg.vector_norm(torch.stack(norms)))
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total
