"""The parametrization as typed records: what `parametrize` made of each layer, and of the whole model.

    layer.parametrization            # LayerParametrization of a converted nn.Linear / nn.Embedding
    parametrization_of(model)        # ModelParametrization, found through DDP / FSDP / torch.compile wrappers

A `LayerParametrization` is everything μP decided for one matrix: its role and kind, its fan-in width multiplier m,
the fixed forward multiplier (α·m^-1 for μP hidden matrices, ...), which multipliers are learnable, its LR and WD
scales, whether its weight is tied to an earlier layer's, and `grad_unit` (stored gradient × grad_unit = lr-only's
gradient of the same matrix). `parametrize` builds it once per layer and `multipliers.convert` declares it on the
layer (`_Multiplied.parametrization`); the float the forward multiplies by (`fixed_mult`) is copied from it there.

A `ModelParametrization` is the arguments of `parametrize` (recipe, optimizer, placement, per-module multiplier and
role overrides, alphas, depth rule and depth layout), the base shapes it measured widths against (so no base model
is needed to redo it) and the layer records by module name. It is metadata, not state: `state_dict` does not hold it;
`parametrize` (or `apply_parametrization` from a saved record) rebuilds it. Its JSON round trip is exact:
`ModelParametrization.from_json(rec.to_json()) == rec`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from .._record import Record
from ..errors import RecipeError, RecordError
from .roles import ROLE_KIND
from .shapes import BaseShapes

MULTIPLIERS = ("scale", "row", "col")  # the learnable multipliers s (shape (1,)), r (per output), c (per input)
MODEL_ATTR = "lrm_parametrization"  # where `parametrize` stores the ModelParametrization on the model
# what `foreign.guard` adds to a Hugging Face model: methods that would silently break the parametrization,
# replaced on the instance by ones that refuse, and a state-dict marker (a buffer) that a plain class refuses
GUARDED_METHODS = ("save_pretrained", "resize_token_embeddings")
UNMERGED_MARKER = "lrm_mup_unmerged"


@dataclass(frozen=True)
class LayerParametrization(Record):
    """What one converted layer is. W = fixed_mult · s · r ⊙ W̃ ⊙ c with s, r, c those of `learned` (else 1)."""

    SCHEMA: ClassVar[str] = "layer-parametrization"
    role: str                       # query, mlp_down, readout, ... (roles.ROLE_KIND)
    kind: str                       # input, hidden, readout, finite: which dims are width dims
    fan_in_mult: float              # m = fan-in / base fan-in (1 for embeddings and finite fan-ins)
    fixed_mult: float               # the recipe's μP forward multiplier (never trained)
    learned: tuple[str, ...]        # learnable multipliers, in MULTIPLIERS order ("row", "col"); () if none
    lr_scale: float                 # the optimizer group's LR is lr × this
    wd_scale: float                 # and its weight decay wd × this
    tied: bool                      # the weight is owned (initialised, optimized) by another layer
    grad_unit: float = 1.0          # stored gradient × this = lr-only's gradient (m for mup/lrm hidden matrices)
    module_scale: float = 1.0       # the constant the module's own forward applies (Gemma's √hidden embedding
    #                                 scale): the converted forward applies fixed_mult instead; merge divides it out
    depth_mult: float = 1.0         # the depth rule's residual-branch multiplier (L_base/L)^α, part of fixed_mult
    eps_scale: float = 1.0          # the optimizer group's Adam ε is eps × this (depth rule: (L_base/L)^α in blocks)

    def __post_init__(self):
        if ROLE_KIND.get(self.role) != self.kind:
            raise RecordError(f"layer role {self.role!r} with kind {self.kind!r}: the role must be one of "
                              f"{', '.join(ROLE_KIND)} and its kind {ROLE_KIND.get(self.role, 'that role')!r}")
        if tuple(m for m in MULTIPLIERS if m in self.learned) != tuple(self.learned):
            raise RecordError(f"learned multipliers {self.learned!r}: each of {', '.join(MULTIPLIERS)} at most once, "
                              "in that order")
        for name in ("fan_in_mult", "fixed_mult", "lr_scale", "wd_scale", "grad_unit", "module_scale", "depth_mult",
                     "eps_scale"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise RecordError(f"layer {name} is {value!r}; it must be a positive finite number")


@dataclass(frozen=True)
class ModelParametrization(Record):
    """What `parametrize` did to a model: its arguments, the base shapes and every layer's record by module name."""

    SCHEMA: ClassVar[str] = "model-parametrization"
    recipe: str
    optimizer: str
    placement: str | None                           # None unless the recipe has learnable multipliers
    multipliers: dict[str, str] = field(default_factory=dict)  # {module pattern: "row,col" | "scale" | "none"}
    roles: dict[str, str] = field(default_factory=dict)        # {module pattern: role} overrides
    alphas: dict[str, float] = field(default_factory=dict)     # {role or kind: α}
    base_shapes: dict[str, tuple[int | None, ...]] = field(default_factory=dict)  # parameter -> base dims
    base_head_dim: int | None = None
    layers: dict[str, LayerParametrization] = field(default_factory=dict)
    base_init_std: dict[str, float] | None = None  # parameter -> std of the base model's init (None: unknown)
    init: str = "rescale"                           # "rescale" or "keep": what parametrize did with the init
    free_tensors: dict[str, str] = field(default_factory=dict)  # raw width parameters kept as they are -> role
    base_module_scales: dict[str, float] | None = None  # module -> c of lookup × c embeddings in the base
    # the depth rule (core.depth); records saved before it existed load as "none" with no layout
    depth_rule: str = "none"
    depth_layout: dict = field(default_factory=dict)  # {"blocks": name, "branches": [...]}; {} if none declared
    depth: int | None = None                          # L, the model's blocks (None without a layout)
    base_depth: int | None = None                     # L_base, the base model's blocks
    zero_init: tuple[str, ...] = ()                   # roles started at zero (older records: none)

    def base(self) -> BaseShapes:
        """The base shapes as `BaseShapes` (what `parametrize` takes as `base`; `.save` writes base_shapes.json)."""
        return BaseShapes.from_dims(self.base_shapes, self.base_head_dim, self.base_init_std,
                                    self.base_module_scales, self.base_depth)

    def options(self) -> dict:
        """The keyword arguments of `parametrize` besides the base: parametrize(model, rec.base(), **rec.options())
        parametrizes a model of any width of the same definition as this one was."""
        return {"recipe": self.recipe, "optimizer": self.optimizer, "placement": self.placement,
                "multipliers": dict(self.multipliers) or None, "roles": dict(self.roles) or None,
                "alphas": dict(self.alphas) or None, "init": self.init, "depth_rule": self.depth_rule,
                "depth_layout": dict(self.depth_layout) or None, "zero_init": self.zero_init}


def parametrization_of(model: nn.Module) -> ModelParametrization:
    """The record `parametrize` left on `model`, found through wrappers that hold it as a submodule (DDP's `.module`,
    torch.compile's `_orig_mod`; FSDP keeps the module itself)."""
    for module in model.modules():
        record = module.__dict__.get(MODEL_ATTR)
        if record is not None:
            return record
    raise RecipeError("model is not parametrized: call lrm_mup.parametrize(model, base, delta, recipe) first")


def set_parametrization(model: nn.Module, record: ModelParametrization) -> None:
    """Store `record` on `model` (the one place it is set; `multipliers.merge` removes it)."""
    model.__dict__[MODEL_ATTR] = record
