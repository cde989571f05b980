"""Transfer across depth: the depth rule chosen beside the width recipe (`parametrize(..., depth_rule=...)`).

A residual model is x_{l+1} = x_l + F_l(x_l), l = 0..L-1. Width μP says nothing about L: with L blocks of Θ(1)
branches the residual stream grows like √L at init and, once Adam has moved every block by Θ(1), its change grows
like L, so the best LR drifts with depth. The depth rules scale every residual branch by a fixed forward multiplier

    x_{l+1} = x_l + (L_base / L)^α · F_l(x_l)

with α = 0 ("none": plain residuals), α = 1/2 ("sqrt": depth-μP) or α = 1 ("complete": CompleteP, arXiv
2505.01618), and correct AdamW's per-block hyperparameters for a general α. REFERENCE.md §9 names the corrections
(LR and Adam ε) but not their exponents; the exponents below are those of a public port of CompleteP's code (MPT in
llm-foundry: hidden LR × m_L^(α-1), norm/bias LR × m_L^(α-1), ε × m_L^-α, weight decay with no depth factor,
embedding and final norm untouched), with m_L = L / L_base:

| parameter                                      | forward              | AdamW LR × | AdamW ε ×  | WD × |
|------------------------------------------------|----------------------|------------|------------|------|
| residual-branch output matrix (attn out, down) | × m_L^-α             | m_L^(α-1)  | m_L^-α     | 1    |
| other matrices inside the blocks               | × 1                  | m_L^(α-1)  | m_L^-α     | 1    |
| vectors inside the blocks (norms, biases)      | × 1                  | m_L^(α-1)  | m_L^-α     | 1    |
| learnable multipliers inside the blocks (lrm)  | × 1                  | m_L^(α-1)  | m_L^-α     | 1    |
| embedding, final norm, readout                 | × 1                  | 1          | 1          | 1    |

Why: a branch's Adam update moves its output by ~ (branch multiplier) × LR (Adam's update size is set by the LR, not
by the gradient's scale); L such moves add up coherently in the residual stream, so L · m_L^-α · LR_block must not
depend on L for the stream's change to be depth-independent: LR_block ∝ m_L^(α-1). For α = 1 the LR needs no
correction (each block's relative update stays Θ(1): every layer keeps learning, CompleteP's "complete feature
learning"); for α = 1/2 it shrinks as m_L^-1/2 (depth-μP's lazier blocks). Adam's ε is compared with √v, the
gradient's RMS: every gradient inside a block passes through that block's branch multiplier, so it is m_L^-α × the
base depth's, and ε follows it to weigh the same at every depth. Only the block parameters get it: the embedding's
and readout's gradients carry no depth factor. (That port applies ε × m_L^-α to every parameter at once; REFERENCE
§9 says the reference code fixed an Adam-ε scaling bug after arXiv 2512.22382 without saying which; scaling ε only
where the gradient scales is the reading that follows from the argument above.) Weight decay gets no depth factor.
The width part of ε is not this module's (width μP leaves ε alone, REFERENCE §2). Learnable multipliers are not in
CompleteP; they are per-unit vectors inside the blocks like norm gains, and get the block vectors' rule (our
choice).
At L = L_base every factor is 1: every recipe under every depth rule is exactly itself, and SP at the base width.

Where it applies: the model declares its depth layout, `lrm_depth()` -> {"blocks": NAME of the nn.ModuleList (or
nn.Sequential) of blocks, "branches": names, relative to a block, of the nn.Linear layers whose output is added to
the residual stream} (the proxy: {"blocks": "blocks", "branches": ["attn.o", "mlp.down"]}), or the caller passes
the same mapping as `parametrize(..., depth_layout=...)` (a Hugging Face Llama: {"blocks": "model.layers",
"branches": ["self_attn.o_proj", "mlp.down_proj"]}). The branch multiplier is a fixed float in the branch layer's
`LayerParametrization` (`depth_mult`, folded into `fixed_mult`), never trained.

The depth axis: mup's shape inference compares parameter shapes by name, and a deeper model has more names
(`blocks.7.attn.q.weight`), so depth is not a shape dimension. The base depth is the number of blocks of the base
model (`BaseShapes.depth`, saved in base_shapes.json; a file saved before it existed gets it from its block names),
and a model of another depth is measured against the base's blocks: every block of the model takes the shapes of
the base's block 0 (the base's blocks must be alike). Base and delta must have the same depth (they differ in width).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from .._names import DEPTH_RULES as DEPTH_RULE_NAMES
from .._names import check_table
from ..errors import RecipeError, RoleError, ShapeError
from .shapes import BaseShapes

# α of each depth rule: residual branches × (L_base / L)^α
DEPTH_RULES = {"none": 0.0, "sqrt": 0.5, "complete": 1.0}
check_table("DEPTH_RULES", DEPTH_RULES, DEPTH_RULE_NAMES)


@dataclass(frozen=True)
class DepthLayout:
    """Where a model's depth is: its block container and, inside each block, its residual-branch output layers."""

    blocks: str                 # module name of the nn.ModuleList / nn.Sequential of blocks
    branches: tuple[str, ...]   # per block, the nn.Linear layers (names relative to a block) the residual adds

    @classmethod
    def parse(cls, value, where: str) -> DepthLayout:
        if isinstance(value, DepthLayout):
            return value
        if not (isinstance(value, dict) and set(value) == {"blocks", "branches"} and isinstance(value["blocks"], str)
                and value["blocks"] and not isinstance(value["branches"], str)
                and all(isinstance(b, str) and b for b in value["branches"]) and value["branches"]):
            raise RoleError(f"depth layout {value!r} from {where}: it must be {{'blocks': NAME of the block list, "
                            "'branches': [names, relative to a block, of the layers the residual adds]}")
        return cls(value["blocks"], tuple(value["branches"]))

    def to_dict(self) -> dict:
        return {"blocks": self.blocks, "branches": list(self.branches)}

    def block_of(self, name: str) -> tuple[int, str] | None:
        """(block index, name inside the block) of a module or parameter name, None outside the blocks."""
        m = re.fullmatch(re.escape(self.blocks) + r"\.(\d+)\.(.+)", name)
        return (int(m.group(1)), m.group(2)) if m else None


@dataclass(frozen=True)
class DepthScales:
    """The factors of one depth rule at depth L against L_base (module docstring's table)."""

    rule: str
    depth: int
    base_depth: int

    @property
    def alpha(self) -> float:
        return DEPTH_RULES[self.rule]

    @property
    def branch_mult(self) -> float:
        """(L_base / L)^α: the residual branches' forward multiplier."""
        return (self.base_depth / self.depth) ** self.alpha

    @property
    def lr_scale(self) -> float:
        """(L / L_base)^(α - 1): AdamW LR of every parameter inside the blocks."""
        return (self.depth / self.base_depth) ** (self.alpha - 1.0)

    @property
    def eps_scale(self) -> float:
        """(L_base / L)^α: AdamW ε of every parameter inside the blocks."""
        return (self.base_depth / self.depth) ** self.alpha


def check_rule(rule: str) -> None:
    if rule not in DEPTH_RULES:
        raise RecipeError(f"unknown depth rule {rule!r}; allowed: {', '.join(DEPTH_RULES)}")


def layout_of(model: nn.Module, override=None) -> DepthLayout | None:
    """The model's depth layout: `override` (parametrize's depth_layout), else its `lrm_depth()`, else None."""
    if override is not None:
        return DepthLayout.parse(override, "depth_layout")
    if hasattr(model, "lrm_depth"):
        return DepthLayout.parse(model.lrm_depth(), f"{type(model).__name__}.lrm_depth()")
    return None


def depth_of(model: nn.Module, layout: DepthLayout) -> int:
    """L: the number of blocks of `model`; checks that every declared branch is an nn.Linear in every block."""
    try:
        blocks = model.get_submodule(layout.blocks)
    except AttributeError:
        raise RoleError(f"depth layout: the model has no module {layout.blocks!r} holding its blocks") from None
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)) or len(blocks) == 0:
        raise RoleError(f"depth layout: {layout.blocks!r} is a {type(blocks).__name__}, not a non-empty "
                        "nn.ModuleList / nn.Sequential of blocks")
    for i, block in enumerate(blocks):
        for branch in layout.branches:
            try:
                layer = block.get_submodule(branch)
            except AttributeError:
                raise RoleError(f"depth layout: block {layout.blocks}.{i} has no branch layer {branch!r}") from None
            if not isinstance(layer, nn.Linear):
                raise RoleError(f"depth layout: branch {layout.blocks}.{i}.{branch} is a {type(layer).__name__}; "
                                "a residual branch is scaled through its output nn.Linear")
    return len(blocks)


def base_depth_of(shapes: BaseShapes, layout: DepthLayout) -> int | None:
    """L_base: `shapes.depth`, or (base shapes saved before it was recorded) the block indices in its names; None
    when the base has no parameter under the layout's blocks (another model: `infshapes` says how they differ)."""
    if shapes.depth is not None:
        return shapes.depth
    indices = {b[0] for name in shapes if (b := layout.block_of(name)) is not None}
    return max(indices) + 1 if indices else None


def aligned(shapes: BaseShapes, model: nn.Module, layout: DepthLayout) -> BaseShapes:
    """The base shapes renamed to `model`'s blocks: block i of the model gets the base's block-0 shapes (when the
    depths are equal, the base shapes themselves). The base's blocks must be alike, else a depth has no meaning."""
    base_depth, depth = base_depth_of(shapes, layout), depth_of(model, layout)
    if base_depth is None:
        return shapes
    block0: dict[str, object] = {}
    for name, inf in shapes.items():
        where = layout.block_of(name)
        if where is not None and where[0] == 0:
            block0[where[1]] = inf
    for name, inf in shapes.items():
        where = layout.block_of(name)
        if where is not None and (where[1] not in block0 or block0[where[1]].base_shape() != inf.base_shape()):
            raise ShapeError(f"base block {layout.blocks}.{where[0]} differs from block 0 at {where[1]!r}: transfer "
                             "across depth needs alike blocks")
    if depth == base_depth:
        return shapes
    out = BaseShapes({name: inf for name, inf in shapes.items() if layout.block_of(name) is None})
    for i in range(depth):
        out.update({f"{layout.blocks}.{i}.{rest}": inf for rest, inf in block0.items()})
    out.head_dim, out.depth = shapes.head_dim, base_depth
    # the init statistics (by parameter) and embedding constants (by module) follow the same renaming
    out.init_std = _renamed(shapes.init_std, layout, depth)
    out.module_scales = _renamed(shapes.module_scales, layout, depth)
    return out


def _renamed(table: dict[str, float] | None, layout: DepthLayout, depth: int) -> dict[str, float] | None:
    """`table` keyed by the base's names -> keyed by a `depth`-block model's names (every block from block 0)."""
    if table is None:
        return None
    out = {name: v for name, v in table.items() if layout.block_of(name) is None}
    block0 = {where[1]: v for name, v in table.items() if (where := layout.block_of(name)) and where[0] == 0}
    for i in range(depth):
        out.update({f"{layout.blocks}.{i}.{rest}": v for rest, v in block0.items()})
    return out


@dataclass(frozen=True)
class LayerDepth:
    """What the depth rule does to one matrix: its branch multiplier and its LR / ε factors."""

    branch_mult: float = 1.0
    lr_scale: float = 1.0
    eps_scale: float = 1.0


NO_DEPTH = LayerDepth()


def layer_depth(name: str, layout: DepthLayout | None, scales: DepthScales | None, has_bias: bool) -> LayerDepth:
    """The depth factors of matrix `name` (module name): table of the module docstring."""
    if layout is None or scales is None or scales.rule == "none":
        return NO_DEPTH
    where = layout.block_of(name)
    if where is None:
        return NO_DEPTH
    branch = where[1] in layout.branches
    if branch and has_bias:
        raise RoleError(f"residual branch {name!r} has a bias: the depth rule scales a branch through its weight, "
                        "and an unscaled bias would still add up over the blocks; use bias-free branch layers")
    return LayerDepth(scales.branch_mult if branch else 1.0, scales.lr_scale, scales.eps_scale)


def parameter_depth(name: str, record) -> LayerDepth:
    """The LR / ε factors of a non-matrix parameter (norm gain, bias, learnable multiplier) by its name, from a
    `ModelParametrization`: the block rule inside the blocks, 1 elsewhere."""
    if record.depth_rule == "none" or not record.depth_layout:
        return NO_DEPTH
    layout = DepthLayout.parse(record.depth_layout, "the model's parametrization record")
    if layout.block_of(name) is None:
        return NO_DEPTH
    scales = DepthScales(record.depth_rule, record.depth, record.base_depth)
    return LayerDepth(1.0, scales.lr_scale, scales.eps_scale)


def plan(model: nn.Module, shapes: BaseShapes, rule: str, optimizer: str, override=None
         ) -> tuple[BaseShapes, DepthLayout | None, DepthScales | None]:
    """What `parametrize` needs: the base shapes aligned to the model's depth, its layout and the rule's scales."""
    check_rule(rule)
    layout = layout_of(model, override)
    if layout is None:
        if rule != "none":
            raise RoleError(f"depth rule {rule!r} needs the model's residual branches: declare lrm_depth() -> "
                            "{'blocks': ..., 'branches': [...]} on the model, or pass depth_layout=")
        return shapes, None, None
    if rule != "none" and optimizer != "adamw":
        raise RecipeError(f"depth rule {rule!r} is derived for AdamW (CompleteP), not {optimizer!r}: use "
                          "depth_rule='none' with Muon")
    base, base_depth = aligned(shapes, model, layout), base_depth_of(shapes, layout)
    if base_depth is None:  # base shapes of another model: infshapes names the parameters that differ
        return base, layout, None
    return base, layout, DepthScales(rule, depth_of(model, layout), base_depth)

