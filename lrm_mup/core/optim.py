"""Optimizers for parametrized models: parameter groups with μP's LR/WD scales, Muon+AdamW, clipping.

Groups: matrices (AdamW, or Muon for hidden 2-D matrices), learnable multipliers (AdamW with their own LR and a small
decoupled WD that pins the forward-pass symmetries, 2e-3 as in the paper) and vectors/norms/biases (AdamW, no WD).
Each group stores its `lr_scale`/`wd_scale` and starts at lr·lr_scale, so a torch LR scheduler (which multiplies each
group's initial LR) keeps the μP ratios: schedulers multiply, they never overwrite.
Muon gets the embedding and readout through AdamW (its orthogonalized update suits hidden matrices only) and runs with
adjust_lr_fn="original", whose update spectral norm is width-independent (see `recipes`).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import RecipeError
from .multipliers import multiplied_modules, multiplier_parameters
from .parametrization import parametrization_of
from .recipes import OPTIMIZERS
from .roles import FINITE, HIDDEN

MULTIPLIER_WD = 2e-3


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
    mult_lr = adam_lr if mult_lr is None else mult_lr
    groups: dict[tuple, dict] = {}
    seen: set[int] = set()

    def add(p, algo, kind, base_lr, lr_scale, wd, wd_scale):
        if id(p) in seen or not p.requires_grad:
            return
        seen.add(id(p))
        key = (algo, kind, lr_scale, wd_scale)
        if key not in groups:
            scales = "" if (lr_scale, wd_scale) == (1.0, 1.0) else f" lr×{lr_scale:.4g} wd×{wd_scale:.4g}"
            groups[key] = {"params": [], "name": f"{algo}/{kind}{scales}", "algo": algo, "lr": base_lr * lr_scale,
                           "weight_decay": wd * wd_scale, "lr_scale": lr_scale, "wd_scale": wd_scale}
        groups[key]["params"].append(p)

    for _, m in multiplied_modules(model):
        info = m.parametrization
        muon = optimizer == "muon" and isinstance(m, nn.Linear) and info.kind in (HIDDEN, FINITE)
        if not info.tied:  # a tied weight is updated under its owner's rules
            add(m.weight, "muon" if muon else "adamw", info.kind, lr if muon else adam_lr, info.lr_scale,
                weight_decay, info.wd_scale)
        if getattr(m, "bias", None) is not None:
            add(m.bias, "adamw", "vector", adam_lr, 1.0, 0.0, 1.0)
    for _, p in multiplier_parameters(model):
        add(p, "adamw", "multiplier", mult_lr, 1.0, mult_wd, 1.0)
    for _, p in model.named_parameters():
        if p.ndim >= 2:  # matrices outside the converted layers (no width dim, or a raw position table): plain SP
            add(p, "adamw", "finite", adam_lr, 1.0, weight_decay, 1.0)
        else:
            add(p, "adamw", "vector", adam_lr, 1.0, 0.0, 1.0)
    return list(groups.values())


class MuonAdamW(torch.optim.Optimizer):
    """torch.optim.Muon for hidden matrices and torch.optim.AdamW for the rest, behind one optimizer object (one
    LR scheduler, one state_dict). The inner optimizers see this object's group dicts and state, so its state_dict
    has the standard format (the one torch.distributed.checkpoint reads)."""

    def __init__(self, groups: list[dict], betas=(0.9, 0.95), eps=1e-8, momentum=0.95):
        muon = [g for g in groups if g["algo"] == "muon"]
        adamw = [g for g in groups if g["algo"] == "adamw"]
        self.inner = []
        if muon:
            self.inner.append(torch.optim.Muon(muon, momentum=momentum, adjust_lr_fn="original"))
        if adamw:
            self.inner.append(torch.optim.AdamW(adamw, betas=betas, eps=eps))
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
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """The optimizer for a parametrized model: "adamw" (torch AdamW) or "muon" (torch Muon + AdamW).

    lr: matrices' LR (Muon's under "muon"); adam_lr: AdamW groups' LR under "muon" (default lr);
    mult_lr / mult_wd: learnable multipliers' LR (default: the AdamW LR) and decoupled WD.
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
    if optimizer == "adamw":
        return torch.optim.AdamW(groups, betas=betas, eps=eps)
    return MuonAdamW(groups, betas=betas, eps=eps)


def clip_grad_norm_(model: nn.Module, max_norm: float, *, include_multipliers: bool = False) -> torch.Tensor:
    """Clip all gradients by one factor, computed from the global norm of every gradient except the learnable
    multipliers' (the paper: counting them makes clipping far too aggressive early on). Returns that norm.

    Each hidden matrix's gradient is measured in lr-only's units (`LayerParametrization.grad_unit`: × m under mup
    and lrm, whose stored hidden weights are m × lr-only's, so their gradients are 1/m × lr-only's). mup and lrm then
    clip exactly when and as much as lr-only does, whose norm hardly moves with width; measured on stored gradients
    their norm would fall as 1/width and the same `clip` would act at the proxy but not at the target."""
    units = {id(m.weight): m.parametrization.grad_unit for _, m in multiplied_modules(model)}
    mult_ids = {id(p) for _, p in multiplier_parameters(model)}
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
