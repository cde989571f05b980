"""What each matrix is: its role, from its width shape, its name, and what the model or the user declares.

The μP rules depend on a matrix's *kind* (which of its dims are width dims); the learnable-multiplier placements
and the attention scaling also need its *role* inside the block (query, key, MLP gate, ...). The kind always comes
from the shapes; the role comes from, in order: the user's overrides, the model's own `lrm_roles()` table, and the
module's name. A declared role that contradicts the shapes is an error, and so is a matrix held by a module type we
cannot reparametrize: we never guess.

Module types (`layout_of`, a table of rules tried in order): exact nn.Linear and nn.Embedding, transformers' Conv1D
(weight stored (fan_in, fan_out)), nn.Embedding subclasses whose forward is lookup × a constant (Gemma). Width
tensors outside these (raw nn.Parameters) go through `_FREE_RULES`: a position table (only its last dim is width)
is kept as it is, as an input tensor; anything else is refused naming the class and what to do.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from mup import InfShape
from torch import nn

from ..errors import RoleError

# kind of a matrix by which of its dims are width dims ((fan_out, fan_in) for nn.Linear)
INPUT, HIDDEN, READOUT, FINITE = "input", "hidden", "readout", "finite"

ROLE_KIND = {
    "embedding": INPUT,
    "input": INPUT,
    "query": HIDDEN,
    "key": HIDDEN,
    "value": HIDDEN,
    "attn_out": HIDDEN,
    "mlp_gate": HIDDEN,
    "mlp_up": HIDDEN,
    "mlp_down": HIDDEN,
    "hidden": HIDDEN,
    "readout": READOUT,
    "finite": FINITE,
    # the Mamba-2 mixer (models/hybrid.py): in_proj's segments z, x, B, C, dt and out_proj. B, C map width to the
    # state size (fixed): readout-like. dt maps width to the SSM heads: hidden where widening adds SSM heads,
    # readout-like at a fixed number of SSM heads. out_proj behind the gated RMSNorm is its own role (placements).
    "ssm_z": HIDDEN,
    "ssm_x": HIDDEN,
    "ssm_b": READOUT,
    "ssm_c": READOUT,
    "ssm_dt": HIDDEN,
    "ssm_dt_readout": READOUT,
    "ssm_out": HIDDEN,
    "ssm_out_normed": HIDDEN,
    # a fused in_proj (z, x, B, C, dt stacked in one matrix: transformers' Mamba-2 mixers, FalconH1Mixer): its
    # kind is its shapes' (hidden: z and x grow with width); the B, C rows get μP's readout init
    # (core/foreign.py `fused_ssm_init`)
    "ssm_in": HIDDEN,
}
ROLES = tuple(ROLE_KIND)

# last component of a module name -> role, for models that declare nothing (Llama, GPT-NeoX, Meta, diffusers names)
_NAME_ROLES = {
    "query": ("q", "q_proj", "query", "wq", "to_q", "q_lin"),
    "key": ("k", "k_proj", "key", "wk", "to_k", "k_lin"),
    "value": ("v", "v_proj", "value", "wv", "to_v", "v_lin"),
    "attn_out": ("o", "o_proj", "out_proj", "wo", "to_out", "out_lin", "dense"),
    "mlp_gate": ("gate", "gate_proj", "w1", "w_gate"),
    "mlp_up": ("up", "up_proj", "w3", "fc1", "c_fc", "fc_in", "w_in"),
    "mlp_down": ("down", "down_proj", "w2", "fc2", "fc_out", "w_out"),
}
_ROLE_BY_NAME = {alias: role for role, aliases in _NAME_ROLES.items() for alias in aliases}


# How a module holds a matrix lrm-mup converts (`multipliers.convert`), tried in order: (layout, test). Modules of no
# layout may still hold width tensors that a rule of `_FREE_RULES` accepts as they are (no conversion).
LINEAR, EMBEDDING, TRANSPOSED_LINEAR = "linear", "embedding", "transposed-linear"
SCALED_EMBEDDING = "scaled-embedding"  # an nn.Embedding subclass whose forward is lookup × a constant (Gemma)


def _is_transposed_linear(module: nn.Module) -> bool:
    """transformers' Conv1D (GPT-2 family): y = x·W + b with W stored (fan_in, fan_out). Duck-typed on the class
    name, its module and its nx/nf fields (transformers is an optional dependency)."""
    cls = type(module)
    return (cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers.")
            and tuple(module.weight.shape) == (getattr(module, "nx", None), getattr(module, "nf", None)))


@torch.no_grad()
def embedding_scale(module: nn.Module) -> float | None:
    """The constant c of an nn.Embedding subclass whose forward is lookup × c (Gemma's √hidden), else None.

    Read from a float `scalar_embed_scale` (Gemma's) if the module has one, else measured from a probe lookup; either
    way a real module's forward must then equal F.embedding(ids, weight) * c exactly. On the meta device only the
    attribute can say."""
    if not isinstance(module, nn.Embedding) or type(module) is nn.Embedding:
        return None
    declared = getattr(module, "scalar_embed_scale", None)
    declared = float(declared) if isinstance(declared, (int, float)) and not isinstance(declared, bool) else None
    w = module.weight
    if w.is_meta:
        return declared
    ids = torch.arange(min(module.num_embeddings, 16), device=w.device)
    out, ref = module(ids), F.embedding(ids, w, module.padding_idx)
    if not isinstance(out, torch.Tensor) or out.shape != ref.shape:
        return None
    measured = float((out.double() * ref.double()).sum() / (ref.double() ** 2).sum().clamp_min(1e-300))
    # the constant as the forward has it: often a float32 buffer (Gemma's embed_scale), so try that rounding too
    for c in dict.fromkeys(x for v in (declared, measured) if v is not None
                           for x in (v, float(torch.tensor(v, dtype=torch.float32)))):
        if torch.equal(out, ref * c):
            return c
    return None


_LAYOUTS = (
    (LINEAR, lambda m: type(m) is nn.Linear),
    (EMBEDDING, lambda m: type(m) is nn.Embedding),
    (TRANSPOSED_LINEAR, _is_transposed_linear),
    (SCALED_EMBEDDING, lambda m: embedding_scale(m) is not None),
)


def layout_of(module: nn.Module) -> str | None:
    """The layout name of a module lrm-mup converts, None for any other module."""
    return next((layout for layout, test in _LAYOUTS if test(module)), None)


@dataclass(frozen=True)
class Matrix:
    """One reparametrizable matrix: the module holding it and what μP needs to know about it."""

    name: str                 # module name
    module: nn.Module         # nn.Linear, nn.Embedding or a foreign layout (`layout_of`)
    role: str
    kind: str
    fan_in_mult: float        # width multiplier of the fan-in dim (1 if finite)
    tied: bool                # weight already owned by an earlier module (tied embedding/readout)
    layout: str = LINEAR


@dataclass(frozen=True)
class FreeTensor:
    """A width tensor held outside the converted layers and accepted as it is (a raw nn.Parameter position table):
    no multipliers, trained as SP's (LR × 1), its init set from the base's like a matrix of its kind."""

    name: str                 # parameter name
    param: nn.Parameter
    role: str
    kind: str


def kind_of(module: nn.Module, infshape: InfShape) -> str:
    """INPUT/HIDDEN/READOUT/FINITE from which dims are width dims."""
    if isinstance(module, nn.Embedding):  # weight (num_embeddings, dim): fan-in = the vocabulary
        vocab_inf, dim_inf = infshape[0].isinf(), infshape[1].isinf()
        if vocab_inf:
            raise RoleError("an nn.Embedding whose number of embeddings grows with width is not a width layout")
        return INPUT if dim_inf else FINITE
    out_axis, in_axis = (1, 0) if _is_transposed_linear(module) else (0, 1)
    out_inf, in_inf = infshape[out_axis].isinf(), infshape[in_axis].isinf()
    return {(True, True): HIDDEN, (False, True): READOUT, (True, False): INPUT, (False, False): FINITE}[
        (out_inf, in_inf)
    ]


def _raw_position_table(module: nn.Module, full: str, p: nn.Parameter, infshape: InfShape,
                        role: str | None) -> FreeTensor | None:
    """A raw nn.Parameter whose only width dim is its last (a learned position table (context, width), added to the
    residual stream): an input tensor (role 'input' or 'embedding'), as nn.Embedding's table would be."""
    if isinstance(module, (nn.Linear, nn.Embedding)):  # a subclass with its own forward: not a raw table
        return None
    width = [d.isinf() for d in infshape]
    if width[-1] and not any(width[:-1]) and (role or "input") in ("input", "embedding"):
        return FreeTensor(full, p, role or "input", INPUT)
    return None


# rules for width tensors held outside the converted layouts, tried in order: (module, parameter name, parameter,
# its InfShape, the role override or None) -> FreeTensor, or None when the rule does not apply
_FREE_RULES = (_raw_position_table,)


def role_from_name(name: str, kind: str) -> str:
    """Best role for a module that nobody declared: by name for hidden matrices, else by kind."""
    if kind == HIDDEN:
        return _ROLE_BY_NAME.get(name.rsplit(".", 1)[-1], "hidden")
    return {INPUT: "embedding", READOUT: "readout", FINITE: "finite"}[kind]


def match_pattern(name: str, table: dict[str, object] | None) -> object | None:
    """Value of the first fnmatch pattern in `table` that matches module `name` (exact names match too)."""
    for pattern, value in (table or {}).items():
        if fnmatch.fnmatchcase(name, pattern):
            return value
    return None


def find_matrices(model: nn.Module, shapes: dict[str, InfShape], overrides: dict[str, str] | None,
                  free: list[FreeTensor] | None = None) -> list[Matrix]:
    """Every matrix of `model` with its role; errors for matrices we cannot reparametrize or roles that misfit.
    Width tensors outside the converted layouts that a rule accepts are appended to `free`."""
    declared = {**mixer_roles(model), **(dict(model.lrm_roles()) if hasattr(model, "lrm_roles") else {})}
    for pattern, role in (overrides or {}).items():
        if role not in ROLE_KIND:
            raise RoleError(f"role override {pattern!r}: {role!r} is not a role; allowed: {', '.join(ROLES)}")
    param_names = {id(p): n for n, p in model.named_parameters()}
    found = []
    for name, module in model.named_modules():
        matrix_params = [(n, p) for n, p in module.named_parameters(recurse=False) if p.ndim >= 2]
        layout = layout_of(module)
        if layout is None:
            if is_depthwise_conv(module):
                continue  # per-channel vectors, not a matrix (per_channel_parameters below)
            for pname, p in matrix_params:
                full = param_names[id(p)]
                if any(d.isinf() for d in shapes[full]):
                    _free_tensor(module, full, p, shapes[full], match_pattern(full, overrides), free)
            continue
        if isinstance(module, nn.Embedding) and (module.max_norm is not None or module.sparse):
            raise RoleError(f"nn.Embedding {name!r} uses max_norm or sparse gradients, which lrm-mup does not support")
        infshape = shapes[param_names[id(module.weight)]]
        kind = kind_of(module, infshape)
        role = match_pattern(name, overrides) or declared.get(name) or role_from_name(name, kind)
        if role not in ROLE_KIND:
            raise RoleError(f"{name!r} declares role {role!r}; allowed: {', '.join(ROLES)}")
        if ROLE_KIND[role] != kind:
            raise RoleError(
                f"{name!r} has role {role!r} ({ROLE_KIND[role]}) but its width dims say {kind}: fix the role override "
                "or the base/delta models"
            )
        in_axis = 0 if layout == TRANSPOSED_LINEAR else 1
        fan_in_mult = 1.0 if isinstance(module, nn.Embedding) else float(infshape[in_axis].width_mult())
        found.append((name, module, role, kind, fan_in_mult, layout))
    # a weight shared by several layers (tied embedding/readout) is owned, for init and optimizer, by its input
    # layer if it has one, else by the first layer holding it; the others only apply their forward multiplier
    owner: dict[int, str] = {}
    for name, module, _, kind, _, _ in sorted(found, key=lambda f: f[3] != INPUT):
        owner.setdefault(id(module.weight), name)
    return [Matrix(name, module, role, kind, m, tied=owner[id(module.weight)] != name, layout=layout)
            for name, module, role, kind, m, layout in found]


def _free_tensor(module: nn.Module, full: str, p: nn.Parameter, infshape: InfShape, role: str | None,
                 free: list[FreeTensor] | None) -> None:
    """Accept a width tensor outside the converted layouts by the first rule of `_FREE_RULES` that applies, or
    refuse it with what the user can do."""
    for rule in _FREE_RULES:
        found = rule(module, full, p, infshape, role)
        if found is not None:
            if free is not None:
                free.append(found)
            return
    dims = "x".join(f"{d.dim}{'(width)' if d.isinf() else ''}" for d in infshape)
    if isinstance(module, (nn.Linear, nn.Embedding)):
        plain = "nn.Linear" if isinstance(module, nn.Linear) else "nn.Embedding"
        raise RoleError(
            f"{full!r} is held by {type(module).__name__}, a subclass of {plain} with a forward of its own, which "
            "lrm-mup cannot reparametrize (it takes nn.Embedding subclasses whose forward is the lookup times a "
            f"constant): use a plain {plain}, or give the constant as a float attribute `scalar_embed_scale`"
        )
    raise RoleError(
        f"{full!r} ({dims}) is a width matrix held by {type(module).__name__}, which lrm-mup cannot reparametrize: "
        "it converts nn.Linear, nn.Embedding and transformers' Conv1D, keeps depthwise nn.Conv1d weights as "
        "per-channel vectors and raw parameters whose only width dim is the last (position tables); write the layer "
        "as nn.Linear (split fused layers into nn.Linear)"
    )


# ----------------------------------------------------------------------------------------------------------
# Per-channel parameters held in ≥ 2-dim tensors: the depthwise causal conv1d of an SSM (models/hybrid.py)


def is_depthwise_conv(module: nn.Module) -> bool:
    """An exact nn.Conv1d with one kernel per channel (groups = in_channels = out_channels): its weight
    (channels, 1, kernel) is a stack of per-channel vectors, not a matrix. Each output channel reads one input
    channel over `kernel` steps, so neither its fan-in nor its fan-out grows with width: μP gives it no width factor,
    like a norm's weight."""
    return (type(module) is nn.Conv1d and module.groups == module.in_channels == module.out_channels)


def per_channel_parameters(model: nn.Module) -> set[int]:
    """ids of the ≥ 2-dim parameters that are per-channel vectors (depthwise conv1d weights): they get the vector
    group (no weight decay, no width scaling, `core.optim.param_groups`) and `find_matrices` leaves them alone."""
    return {id(p) for m in model.modules() if is_depthwise_conv(m) for p in m.parameters(recurse=False)}


# ----------------------------------------------------------------------------------------------------------
# Fused Mamba-2 mixers (transformers' FalconH1Mixer, Mamba2Mixer, ...): one in_proj for the five segments

SSM_SEGMENTS = ("z", "x", "B", "C", "dt")  # the row order of a fused Mamba-2 in_proj


def fused_ssm_segments(module: nn.Module) -> dict[str, slice] | None:
    """The row ranges of z, x, B, C, dt in the fused `in_proj` of a Mamba-2 mixer laid out as transformers' are
    (children in_proj, conv1d, out_proj; parameters A_log, dt_bias, D; sizes intermediate_size = d_ssm, n_groups = G,
    ssm_state_size = N, num_heads = H): rows [d_ssm | d_ssm | G·N | G·N | H]. None for any other module."""
    in_proj, out_proj = getattr(module, "in_proj", None), getattr(module, "out_proj", None)
    sizes = [getattr(module, f, None) for f in ("intermediate_size", "n_groups", "ssm_state_size", "num_heads")]
    if not (isinstance(in_proj, nn.Linear) and isinstance(out_proj, nn.Linear)
            and isinstance(getattr(module, "conv1d", None), nn.Conv1d)
            and all(isinstance(getattr(module, p, None), nn.Parameter) for p in ("A_log", "dt_bias", "D"))
            and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sizes)):
        return None
    d, groups, state, heads = sizes
    lengths = (d, d, groups * state, groups * state, heads)
    if sum(lengths) != in_proj.out_features:
        return None
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    return {seg: slice(a, a + n) for seg, a, n in zip(SSM_SEGMENTS, starts, lengths)}


def _gated_norm(mixer: nn.Module) -> bool:
    """Whether a gated RMSNorm (a norm with a weight) precedes the mixer's out_proj (Falcon-H1: mamba_rms_norm)."""
    if getattr(mixer, "mamba_rms_norm", True) is False:
        return False
    return isinstance(getattr(getattr(mixer, "norm", None), "weight", None), nn.Parameter)


def mixer_roles(model: nn.Module) -> dict[str, str]:
    """Roles of the matrices of fused Mamba-2 mixers (`fused_ssm_segments`), which their names alone would get
    wrong (`out_proj` reads as attention's output): in_proj 'ssm_in', out_proj 'ssm_out', or 'ssm_out_normed'
    behind a gated RMSNorm. A model's own `lrm_roles()` and the user's overrides come first."""
    roles = {}
    for name, module in model.named_modules():
        if fused_ssm_segments(module) is not None:
            prefix = f"{name}." if name else ""
            roles[f"{prefix}in_proj"] = "ssm_in"
            roles[f"{prefix}out_proj"] = "ssm_out_normed" if _gated_norm(module) else "ssm_out"
    return roles
