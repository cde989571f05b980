"""The four parametrizations of one model definition, and `parametrize`, which applies one of them.

Every recipe is derived from the model's own SP initialisation (matrices ~ 1/fan_in variance) and from the width
multiplier m = fan_in / base fan_in of each matrix (mup shape inference). For a matrix of kind:

| kind (example)            | recipe  | forward multiplier          | stored weight × | Adam LR × | WD × |
|---------------------------|---------|-----------------------------|-----------------|-----------|------|
| input (embedding)         | all     | α                           | 1               | 1         | 1    |
| hidden (QKV, O, MLP)      | sp      | α                           | 1               | 1         | 1    |
|                           | lr-only | α                           | 1               | 1/m       | 1    |
|                           | lr-wd   | α                           | 1               | 1/m       | m    |
|                           | mup/lrm | α/m                         | m               | 1         | 1    |
| readout (LM head)         | sp      | α                           | 1               | 1         | 1    |
|                           | others  | α/m                         | √m              | 1         | 1    |

The SSM's matrices (models/hybrid.py) take these rows by their kind, which their shapes decide: z, x, out_proj
(and dt where widening adds SSM heads, role ssm_dt) are hidden; B and C (width → the fixed state size) and dt at a
fixed number of SSM heads (ssm_dt_readout) are readouts, width exponent of the μP multiplier −1 all the same.
Depthwise conv1d weights, A_log, D and dt_bias are vectors (no width factor, no weight decay). A fused in_proj (one
matrix of rows z, x, B, C, dt: transformers' Falcon-H1 / Mamba-2 mixers, role ssm_in) is hidden by its shapes, its
B and C rows with the readout's stored-weight factor √m instead of m (core/foreign.py `fused_ssm_init`).

so the three μP recipes have the same effective weights at init (readout variance ∝ 1/fan_in², the μP readout),
and every recipe is exactly the SP model at the base width (m = 1, α = 1). The query of μP recipes also carries
√(d_head,base / d_head): SDPA's 1/√d_head becomes μP's α/d_head (α = √d_head,base) when the head dim grows.
Biases of nn.Linear are multiplied by √m under μP so their init does not shrink with fan-in.
Because mup/lrm store hidden weights m × larger than lr-only, their gradients are 1/m × lr-only's;
`LayerParametrization.grad_unit` (m) brings them back, so clipping (`optim.clip_grad_norm_`) treats the three μP
recipes alike.

Muon (torch.optim.Muon, adjust_lr_fn="original") scales each update to a width-independent spectral norm, which is
already μP's condition for hidden matrices; so under Muon hidden matrices get no width factor in any recipe
(multiplier α, LR × 1, WD × 1) and the recipes differ only in the readout and attention scaling.

`lrm` starts as `mup` and adds learnable multipliers (scalar/row/column, init 1) on top of the fixed μP factor, so
the learned part is width-independent and a width-independent LR transfers.

Init is part of the recipe. The table's "stored weight ×" column is relative to the SP init the μP recipes need:
hidden and readout matrices with std σ_base·√(fan_in,base / fan_in) = σ_base/√m, input matrices (embeddings) with
σ_base, where σ_base is the std the same tensor has in the base model at init (`BaseShapes.init_std`; at the base
width every recipe is the model's own SP). A model whose init already scales so (the proxy, torch's default
nn.Linear init: both ∝ 1/√fan_in) is left bit-for-bit as it is; any other convention (Hugging Face's std 0.02 at
every width, a user's own) is multiplied, per tensor, by σ_target / std(W) under the μP recipes (`init="rescale"`,
the default), so it comes out μP at every width. "Already so" means |ln(std(W) / σ_target)| within the sampling
noise of the two stds (6 standard errors of ln std, √(1/2n_base + 1/2n)) and at least 0.1. `sp` keeps the model's
init (it is the baseline); `init="keep"` keeps it under every recipe and warns for each tensor that is off.
Without base statistics (a meta-device base, an older base_shapes.json) the init is taken as already μP-scaled,
with a warning.

`zero_init` (roles among ZERO_INIT_ROLES: "readout", "query") starts those matrices at exactly zero, μP's
recommended init for the LM head and the query (Tensor Programs V, §D.2): a zero readout makes every logit 0 at step 0
(the uniform prediction, loss ln V at every width), a zero query makes every attention map uniform at step 0; the
first update moves both away from zero (their gradients, hᵀ(p − y) and the keys, are not zero). It is an init, not a
width rule: the same option under two recipes keeps what holds without it (lrm at init is mup; at the base width
every recipe with the same zero_init is the same model), but a zero_init model is not the model's own SP at the base
width, by definition. A tied readout is refused (zeroing it would zero the embedding).
"""
from __future__ import annotations

import dataclasses
import math
import os
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from .._names import INITS, OPTIMIZERS, ZERO_INIT_ROLES, check_table
from .._names import PLACEMENTS as PLACEMENT_NAMES
from .._names import RECIPES as RECIPE_NAMES
from ..errors import RecipeError, RoleError, ShapeError
from . import depth
from .foreign import check_builtin_alphas, fused_ssm_init, guard
from .multipliers import convert, multiplied_modules
from .parametrization import (
    MULTIPLIERS,
    LayerParametrization,
    ModelParametrization,
    parametrization_of,
    set_parametrization,
)
from .roles import (
    FINITE,
    HIDDEN,
    INPUT,
    READOUT,
    ROLE_KIND,
    SCALED_EMBEDDING,
    TRANSPOSED_LINEAR,
    FreeTensor,
    Matrix,
    embedding_scale,
    find_matrices,
    match_pattern,
)
from .shapes import BaseShapes, base_shapes, head_dim_of, infshapes


@dataclass(frozen=True)
class Recipe:
    name: str
    hidden_lr_exp: int     # Adam LR of hidden matrices × m**exp
    hidden_wd_exp: int     # their weight decay × m**exp
    hidden_mult: bool      # forward multiplier 1/m on hidden matrices (Adam)
    mup_readout: bool      # forward multiplier 1/m and μP init on the readout; μP attention and biases
    learnable: bool


RECIPES = {
    r.name: r
    for r in (
        Recipe("sp", 0, 0, hidden_mult=False, mup_readout=False, learnable=False),
        Recipe("lr-only", -1, 0, hidden_mult=False, mup_readout=True, learnable=False),
        Recipe("lr-wd", -1, 1, hidden_mult=False, mup_readout=True, learnable=False),
        Recipe("mup", 0, 0, hidden_mult=True, mup_readout=True, learnable=False),
        Recipe("lrm", 0, 0, hidden_mult=True, mup_readout=True, learnable=True),
    )
}
check_table("RECIPES", RECIPES, RECIPE_NAMES)

# learnable multipliers per role; "all" is the paper's default, "symmetry-free" its appendix C
_ALL = frozenset({"row", "col"})
_NONE: frozenset[str] = frozenset()
PLACEMENTS: dict[str, dict[str, frozenset[str]]] = {
    # every matrix but the LM head (the paper's default); the SSM's readout-like B, C, dt segments are matrices
    "all": {role: (_NONE if role in ("readout", "finite") else _ALL) for role in ROLE_KIND},
    "symmetry-free": {
        "embedding": _ALL, "input": _ALL,  # the paper is silent on the embedding: kept as in "all"
        "query": frozenset({"row"}), "key": _NONE, "value": _NONE, "attn_out": _ALL,
        "mlp_gate": frozenset({"row"}), "mlp_up": _NONE, "mlp_down": _ALL,
        "readout": _NONE, "finite": _NONE,
        # Mamba-2 (appendix C): W_out row, + col where no internal norm precedes it; W_Z and W_dt row; W_X/B/C none
        "ssm_z": frozenset({"row"}), "ssm_x": _NONE, "ssm_b": _NONE, "ssm_c": _NONE,
        "ssm_dt": frozenset({"row"}), "ssm_dt_readout": frozenset({"row"}),
        "ssm_out": _ALL, "ssm_out_normed": frozenset({"row"}),
        "ssm_in": frozenset({"row"}),  # a fused in_proj (z, x, B, C, dt rows): row on all (core/foreign.py)
    },
    "scalar": {role: (_NONE if kind == FINITE else frozenset({"scale"})) for role, kind in ROLE_KIND.items()},
    # "all" without the input layers' multipliers (the placement ablation of issue 12: what the embedding's buy)
    "no-embedding": {role: (_NONE if role in ("readout", "finite") or ROLE_KIND[role] == INPUT else _ALL)
                     for role in ROLE_KIND},
}
check_table("PLACEMENTS", PLACEMENTS, PLACEMENT_NAMES)


def parse_multipliers(text: str) -> frozenset[str]:
    """'row,col' / 'scale' / 'none' -> the set of learnable multipliers."""
    parts = frozenset(p.strip() for p in text.split(",") if p.strip()) - {"none"}
    bad = sorted(parts - set(MULTIPLIERS))
    if bad:
        raise RecipeError(f"multipliers {text!r}: {bad[0]!r} is not one of scale, row, col, none")
    return parts


def parametrize(
    model: nn.Module,
    base: nn.Module | BaseShapes | str | os.PathLike,
    delta: nn.Module | None = None,
    recipe: str = "mup",
    *,
    optimizer: str = "adamw",
    placement: str | None = None,
    multipliers: dict[str, str] | None = None,
    roles: dict[str, str] | None = None,
    alphas: dict[str, float] | None = None,
    init: str = "rescale",
    depth_rule: str = "none",
    depth_layout: dict | None = None,
    zero_init: tuple[str, ...] | list[str] = (),
) -> nn.Module:
    """Parametrize `model` (in place; returned for chaining) under `recipe`.

    base/delta: smaller copies of the same definition (widths differ where width dims are), or saved `BaseShapes`
      (`lrm_mup.base_shapes(base, delta)`, or a path written by `.save`).
    optimizer: "adamw" or "muon": μP's width rules depend on it.
    placement: learnable multipliers of `lrm`: "all" (default), "symmetry-free", "scalar" or "no-embedding" ("all"
      but the input layers).
    multipliers: per-module overrides of the placement, {fnmatch pattern: "row,col" | "scale" | "none" | ...}.
    roles: per-module role overrides {pattern: role}; else the model's `lrm_roles()`, else names and shapes.
    alphas: tuned forward multipliers α by role or kind ({"embedding": 2.0, "readout": 0.5, "hidden": 1.0}).
    init: "rescale" (default) sets each width matrix's init std from the base's so that the μP recipes are μP for
      any init convention (module doc); "keep" leaves the model's init as it is and warns where it is not μP.
    depth_rule: "none", "sqrt" or "complete": residual branches × (L_base/L)^α with AdamW's per-block LR and ε
      corrections (`core.depth`); L_base is the base model's number of blocks. depth_layout: {"blocks": ...,
      "branches": [...]} where the model declares no `lrm_depth()`.
    zero_init: roles ("readout", "query") whose matrices start at exactly zero (μP's zero init; module doc).
    """
    spec = _check_args(recipe, optimizer, placement, multipliers, alphas, init, zero_init)
    rec = RECIPES[recipe]
    if multiplied_modules(model):
        raise RecipeError("model is already parametrized: build a fresh model to parametrize it again")
    if isinstance(base, nn.Module):
        if delta is None:
            raise ShapeError("a delta model is needed with a base model (mup infers width dims from the two)")
        shapes = base_shapes(base, delta)
    else:
        shapes = base if isinstance(base, BaseShapes) else BaseShapes.load(base)
    aligned, layout, scales = depth.plan(model, shapes, depth_rule, optimizer, depth_layout)  # the depth rule
    inf = infshapes(model, aligned)
    check_builtin_alphas(model, alphas)  # Falcon-H1's own constants are the base's α (core/foreign.py)
    attn = _attention_factor(model, shapes, rec)
    free: list[FreeTensor] = []
    layers = find_matrices(model, inf, roles, free)
    if attn != 1.0:
        _check_attention_reachable(model, layers, shapes.head_dim, head_dim_of(model))
    for layer in layers:  # before anything is converted: a refused model stays as it was
        if layer.role in spec["zero_init"] and layer.tied:
            raise RecipeError(f"zero_init {layer.role!r}: {layer.name!r} is tied to another layer's weight, which a "
                              "zero init would zero too; untie it or drop the role from zero_init")
        if layer.layout == TRANSPOSED_LINEAR and optimizer == "muon" and layer.kind in (HIDDEN, FINITE):
            raise RecipeError(f"optimizer 'muon' with {type(layer.module).__name__} {layer.name!r} (weight stored "
                              "transposed): Muon's LR adjustment reads the shape as (fan_out, fan_in); use adamw")
    place = PLACEMENTS[spec["placement"]] if rec.learnable else None
    param_names = {id(p): n for n, p in model.named_parameters()}
    gains = _InitGains(aligned, rec, init)
    records = {}
    for layer in layers:
        mults = _learned(layer, place, multipliers) if rec.learnable else _NONE
        alpha = _alpha(layer, alphas) * (attn if layer.role == "query" else 1.0)
        if layer.tied:
            gain = 1.0
        else:
            gain = gains.of(layer.module.weight, param_names[id(layer.module.weight)], layer.kind, layer.fan_in_mult)
        scale = 1.0
        if layer.layout == SCALED_EMBEDDING:  # μP keeps the base's constant (embedding updates as in the base)
            scale = embedding_scale(layer.module)
            base_scale = (aligned.module_scales or {}).get(layer.name)
            if base_scale is None and rec.mup_readout:
                gains.unknown = True
            alpha *= base_scale if base_scale is not None and rec.mup_readout else scale
        has_bias = getattr(layer.module, "bias", None) is not None
        records[layer.name] = _apply(layer, rec, optimizer, mults, alpha, gain, scale,
                                     depth.layer_depth(layer.name, layout, scales, has_bias),
                                     zero=layer.role in spec["zero_init"])
    with torch.no_grad():
        for t in free:
            t.param.mul_(gains.of(t.param, t.name, t.kind, 1.0))
    fused_ssm_init(model, rec.mup_readout)  # the B, C rows of a fused Mamba-2 in_proj: μP's readout init
    gains.warn()
    record = ModelParametrization(**spec, roles=dict(roles or {}), base_shapes=shapes.dims(),
                                  base_head_dim=shapes.head_dim, layers=records, base_init_std=shapes.init_std,
                                  free_tensors={t.name: t.role for t in free},
                                  base_module_scales=shapes.module_scales, depth_rule=depth_rule,
                                  depth_layout=layout.to_dict() if layout else {},
                                  depth=scales.depth if scales else None,
                                  base_depth=scales.base_depth if scales else shapes.depth)
    set_parametrization(model, record)
    guard(model)
    return model


def apply_parametrization(model: nn.Module, record: ModelParametrization) -> nn.Module:
    """Parametrize a fresh `model` exactly as `record` says (a saved `ModelParametrization` plus the model's
    definition at the record's width rebuild the same parametrization; no base model needed). Returns `model`.

    Raises RecipeError when the model's layers come out otherwise (another width or definition); to parametrize
    another width the same way, call parametrize(model, record.base(), **record.options())."""
    parametrize(model, record.base(), **record.options())
    got = parametrization_of(model).layers
    for name in dict.fromkeys([*record.layers, *got]):
        mine, theirs = got.get(name), record.layers.get(name)
        if mine != theirs:
            if mine is None or theirs is None:
                where = "the model" if mine is None else "the record"
                raise RecipeError(f"layer {name!r} is missing from {where}: build the model the record was made from")
            diff = "; ".join(f"{f.name} {getattr(mine, f.name)!r} here, {getattr(theirs, f.name)!r} in the record"
                             for f in dataclasses.fields(mine) if getattr(mine, f.name) != getattr(theirs, f.name))
            raise RecipeError(f"layer {name!r}: {diff}: build the model the record was made from (same definition "
                              "and width)")
    return model


def check_alphas(alphas: dict[str, float] | None) -> None:
    """Forward multipliers α, {role or kind: value}: known keys, each value a positive finite number."""
    if alphas is not None and not isinstance(alphas, dict):
        raise RecipeError(f"alphas {alphas!r} must be a mapping {{role or kind: value}}")
    for key, value in (alphas or {}).items():
        if key not in ROLE_KIND and key not in (INPUT, HIDDEN, READOUT):
            raise RecipeError(f"alpha for {key!r}: not a role or kind; allowed: {', '.join(ROLE_KIND)}")
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                and value > 0):
            raise RecipeError(f"alpha for {key!r} is {value!r}; it must be a positive finite number")


def check_zero_init(zero_init) -> tuple[str, ...]:
    """The roles of `zero_init` as a tuple in ZERO_INIT_ROLES' order; a one-line RecipeError for anything else."""
    if isinstance(zero_init, str) or not isinstance(zero_init, (tuple, list)):
        raise RecipeError(f"zero_init {zero_init!r} must be a list of roles among {', '.join(ZERO_INIT_ROLES)}")
    bad = [r for r in zero_init if r not in ZERO_INIT_ROLES]
    if bad:
        raise RecipeError(f"zero_init role {bad[0]!r} is not allowed; allowed: {', '.join(ZERO_INIT_ROLES)}")
    return tuple(r for r in ZERO_INIT_ROLES if r in zero_init)


def _check_args(recipe, optimizer, placement, multipliers, alphas, init, zero_init=()) -> dict:
    if init not in INITS:
        raise RecipeError(f"unknown init {init!r}; allowed: {', '.join(INITS)}")
    if recipe not in RECIPES:
        raise RecipeError(f"unknown recipe {recipe!r}; allowed: {', '.join(RECIPES)}")
    if optimizer not in OPTIMIZERS:
        raise RecipeError(f"unknown optimizer {optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
    if (placement is not None or multipliers) and not RECIPES[recipe].learnable:
        raise RecipeError(f"placement/multipliers apply to recipe 'lrm' only, not {recipe!r}")
    placement = placement or "all"
    if placement not in PLACEMENTS:
        raise RecipeError(f"unknown placement {placement!r}; allowed: {', '.join(PLACEMENTS)}")
    for pattern, text in (multipliers or {}).items():
        parse_multipliers(text)
    check_alphas(alphas)
    return {"recipe": recipe, "optimizer": optimizer, "placement": placement if RECIPES[recipe].learnable else None,
            "multipliers": dict(multipliers or {}), "alphas": {k: float(v) for k, v in (alphas or {}).items()},
            "init": init, "zero_init": check_zero_init(zero_init)}


def _attention_factor(model: nn.Module, shapes: BaseShapes, rec: Recipe) -> float:
    head_dim = head_dim_of(model)
    if not rec.mup_readout or head_dim is None or shapes.head_dim is None:
        return 1.0
    return math.sqrt(shapes.head_dim / head_dim)


# a per-head norm after the query projection (Qwen3, OLMo-2, Gemma-3 ...) undoes any factor on the query's output
_QUERY_NORMS = ("q_norm", "q_layernorm", "query_norm", "q_ln")


def _check_attention_reachable(model: nn.Module, layers: list[Matrix], base_head_dim: int, head_dim: int) -> None:
    """μP's α/d_head reaches the attention logits through the query layer's forward multiplier; refuse models where
    it cannot (no separate query layer, e.g. GPT-2's fused c_attn; a norm on the query's output) rather than skip it."""
    where = f"the head dim grows with width ({base_head_dim} at the base, {head_dim} here)"
    queries = [layer.name for layer in layers if layer.role == "query"]
    if not queries:
        raise RoleError(f"{where} but no layer has role 'query' to carry μP's 1/d_head attention factor (a fused qkv "
                        "layer cannot): keep the head dim fixed as width grows (more heads), or declare the query "
                        "layers with roles={pattern: 'query'}")
    modules = dict(model.named_modules())
    for name in queries:
        parent = modules[name.rsplit(".", 1)[0]] if "." in name else model
        norm = next((n for n in _QUERY_NORMS if isinstance(getattr(parent, n, None), nn.Module)), None)
        if norm is not None:
            raise RoleError(f"{where} but {type(parent).__name__} {name.rsplit('.', 1)[0]!r} normalizes the query "
                            f"after {name!r} ({norm}), which would undo μP's 1/d_head factor on it: keep the head dim "
                            "fixed as width grows (more heads)")


def _alpha(layer: Matrix, alphas: dict[str, float] | None) -> float:
    alphas = alphas or {}
    return float(alphas.get(layer.role, alphas.get(layer.kind, 1.0)))


def _learned(layer: Matrix, place: dict[str, frozenset[str]], overrides: dict[str, str] | None) -> frozenset[str]:
    text = match_pattern(layer.name, overrides)
    if text is not None:
        return parse_multipliers(text)
    if layer.role == "hidden" and place is PLACEMENTS["symmetry-free"]:
        raise RoleError(
            f"placement 'symmetry-free' needs the role of {layer.name!r} (query, key, value, attn_out, mlp_gate, "
            "mlp_up, mlp_down): declare it with roles={...} or lrm_roles()"
        )
    return place[layer.role]


class _InitGains:
    """The factor on each matrix's init that gives it the std the recipe needs (module doc: "Init is part of the
    recipe"), and the warnings for matrices that are off and kept so."""

    SIGMAS = 6.0     # "already so": |ln(std / target)| within this many standard errors of ln std ...
    MIN_TOL = 0.1    # ... and at least this

    def __init__(self, shapes: BaseShapes, rec: Recipe, init: str):
        self.shapes, self.rec, self.init = shapes, rec, init
        self.off: list[str] = []   # matrices whose init is not what the recipe needs and stays so
        self.unknown = False       # a real target but no base statistics

    @torch.no_grad()
    def of(self, w: torch.Tensor, weight_name: str, kind: str, fan_in_mult: float) -> float:
        """The factor on `w` (a matrix of `kind` whose fan-in is `fan_in_mult` × the base's)."""
        if not self.rec.mup_readout or kind == FINITE or w.is_meta:
            return 1.0
        if self.shapes.init_std is None or weight_name not in self.shapes.init_std:
            self.unknown = True
            return 1.0
        base_std = self.shapes.init_std[weight_name]
        target = base_std / math.sqrt(fan_in_mult)
        got = float(w.detach().double().std()) if w.numel() > 1 else 0.0
        base_dims = self.shapes[weight_name].base_shape()  # None for a finite dim: the target's size
        n_base = math.prod(b if b is not None else t for b, t in zip(base_dims, w.shape))
        tol = max(self.MIN_TOL, self.SIGMAS * math.sqrt(0.5 / max(n_base - 1, 1) + 0.5 / max(w.numel() - 1, 1)))
        if got == target or (got > 0 and target > 0 and abs(math.log(got / target)) <= tol):
            return 1.0
        if self.init == "keep" or got == 0:  # a zero init cannot be rescaled
            self.off.append(f"{weight_name} std {got:.4g}, the recipe needs {target:.4g} (base {base_std:.4g} "
                            f"/ √{fan_in_mult:g})")
            return 1.0
        return target / got

    def warn(self) -> None:
        if self.off:
            more = " ..." if len(self.off) > 3 else ""
            warnings.warn(f"init of {len(self.off)} matrices is not the {self.rec.name} init, so activations "
                          f"will not be width-independent: {'; '.join(self.off[:3])}{more} "
                          "(init='rescale' sets it from the base)", stacklevel=3)
        elif self.unknown:
            warnings.warn("the base shapes carry no init statistics (a base on the meta device, or a base_shapes.json "
                          "from before lrm-mup recorded them): the model's init is taken as already μP-scaled "
                          "(∝ 1/√fan_in); build the base with real tensors for base_shapes(base, delta) if it is not "
                          "(e.g. Hugging Face models, std 0.02 at every width)", stacklevel=3)


@torch.no_grad()
def _apply(layer: Matrix, rec: Recipe, optimizer: str, mults: frozenset[str], alpha: float,
           init_gain_of_model: float = 1.0, module_scale: float = 1.0,
           at_depth: depth.LayerDepth = depth.NO_DEPTH, zero: bool = False) -> LayerParametrization:
    """Rescale the layer's init (`init_gain_of_model` puts the model's init on the SP scale the table assumes, then
    the recipe's stored-weight factor), convert it, and return its record (`at_depth`: the depth rule's factors;
    `zero`: the weight starts at zero, `zero_init`)."""
    m = layer.fan_in_mult
    width_factor, init_gain, lr_scale, wd_scale = 1.0, 1.0, 1.0, 1.0
    if layer.kind == HIDDEN and optimizer == "adamw":
        lr_scale, wd_scale = m ** rec.hidden_lr_exp, m ** rec.hidden_wd_exp
        width_factor = 1.0 / m if rec.hidden_mult else 1.0
    elif layer.kind == READOUT and rec.mup_readout:
        width_factor, init_gain = 1.0 / m, 1.0 / math.sqrt(m)
    module = layer.module
    if not layer.tied:
        if zero:
            module.weight.zero_()
        else:
            module.weight.mul_(init_gain_of_model * init_gain / width_factor)
    if getattr(module, "bias", None) is not None and (zero or rec.mup_readout):
        module.bias.mul_(0.0 if zero else math.sqrt(m))  # a zero readout/query has zero outputs: its bias too
    # the stored hidden weight is 1/width_factor times lr-only's, so its gradient is width_factor times lr-only's
    grad_unit = 1.0 / width_factor if layer.kind == HIDDEN else 1.0
    record = LayerParametrization(
        role=layer.role, kind=layer.kind, fan_in_mult=float(m),
        fixed_mult=float(alpha * width_factor * at_depth.branch_mult),
        learned=tuple(k for k in MULTIPLIERS if k in mults), lr_scale=float(lr_scale * at_depth.lr_scale),
        wd_scale=float(wd_scale), tied=layer.tied, grad_unit=float(grad_unit), module_scale=float(module_scale),
        depth_mult=float(at_depth.branch_mult), eps_scale=float(at_depth.eps_scale),
    )
    convert(module, record, layer.layout)
    return record


# what each column of `describe` means (printed under the table by `lrm-mup describe`)
DESCRIBE_COLUMNS = {
    "module": "the layer's name in the model",
    "role": "what the matrix is (embedding, query, key, value, attn_out, mlp_*, readout, ...)",
    "kind": "input / hidden / readout / finite: how μP scales it with width",
    "fan_in_mult": "m = fan-in / the base model's fan-in (1 at the base width)",
    "fixed_mult": "the forward multiplier the recipe applies (μP's 1/m on hidden matrices under mup and lrm)",
    "learned": "learnable multipliers under lrm (scale, row, col; - for none)",
    "lr_scale": "factor on the group's LR (lr-only's 1/m on hidden matrices)",
    "wd_scale": "factor on the group's weight decay (lr-wd's m on hidden matrices)",
    "clip_unit": "factor on the stored gradient when clipping measures the global norm: it puts every recipe in "
                 "lr-only's units, so one --clip acts alike under every recipe (m under mup and lrm)",
    "depth_mult": "the depth rule's residual-branch multiplier (L_base/L)^α, part of fixed_mult (1 off the branches "
                  "and under --depth-rule none)",
    "eps_scale": "factor on the group's Adam ε (the depth rule's (L_base/L)^α inside the blocks)",
    "tied": "True where the weight is owned (initialised, optimized) by another layer, e.g. a readout tied to the "
            "embedding",
}


def describe(model: nn.Module) -> list[dict]:
    """One row per converted layer, from its `LayerParametrization`: role, kind, width multiplier, forward
    multiplier, learnable multipliers, LR and WD scales, the factor clipping measures its gradient with. What
    `lrm-mup describe` prints; handy for checking a foreign model's roles."""
    rows = []
    for name, m in multiplied_modules(model):
        p = m.parametrization
        rows.append({"module": name, "role": p.role, "kind": p.kind, "fan_in_mult": p.fan_in_mult,
                     "fixed_mult": p.fixed_mult, "learned": ",".join(p.learned) or "-", "lr_scale": p.lr_scale,
                     "wd_scale": p.wd_scale, "clip_unit": p.grad_unit, "depth_mult": p.depth_mult,
                     "eps_scale": p.eps_scale, "tied": p.tied})
    return rows
