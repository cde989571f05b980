"""What each matrix is: its role, from its width shape, its name, and what the model or the user declares.

The μP rules depend on a matrix's *kind* (which of its dims are width dims); the learnable-multiplier placements
and the attention scaling also need its *role* inside the block (query, key, MLP gate, ...). The kind always comes
from the shapes; the role comes from, in order: the user's overrides, the model's own `lrm_roles()` table, and the
module's name. A declared role that contradicts the shapes is an error, and so is a matrix held by a module type we
cannot reparametrize: we never guess.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Matrix:
    """One reparametrizable matrix: the module holding it and what μP needs to know about it."""

    name: str                 # module name
    module: nn.Module         # exact nn.Linear or nn.Embedding
    role: str
    kind: str
    fan_in_mult: float        # width multiplier of the fan-in dim (1 if finite)
    tied: bool                # weight already owned by an earlier module (tied embedding/readout)


def kind_of(module: nn.Module, infshape: InfShape) -> str:
    """INPUT/HIDDEN/READOUT/FINITE from which dims are width dims."""
    if isinstance(module, nn.Embedding):  # weight (num_embeddings, dim): fan-in = the vocabulary
        vocab_inf, dim_inf = infshape[0].isinf(), infshape[1].isinf()
        if vocab_inf:
            raise RoleError("an nn.Embedding whose number of embeddings grows with width is not a width layout")
        return INPUT if dim_inf else FINITE
    out_inf, in_inf = infshape[0].isinf(), infshape[1].isinf()
    return {(True, True): HIDDEN, (False, True): READOUT, (True, False): INPUT, (False, False): FINITE}[
        (out_inf, in_inf)
    ]


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


def find_matrices(model: nn.Module, shapes: dict[str, InfShape], overrides: dict[str, str] | None) -> list[Matrix]:
    """Every matrix of `model` with its role; errors for matrices we cannot reparametrize or roles that misfit."""
    declared = dict(model.lrm_roles()) if hasattr(model, "lrm_roles") else {}
    for pattern, role in (overrides or {}).items():
        if role not in ROLE_KIND:
            raise RoleError(f"role override {pattern!r}: {role!r} is not a role; allowed: {', '.join(ROLES)}")
    param_names = {id(p): n for n, p in model.named_parameters()}
    found = []
    for name, module in model.named_modules():
        matrix_params = [(n, p) for n, p in module.named_parameters(recurse=False) if p.ndim >= 2]
        if type(module) not in (nn.Linear, nn.Embedding):
            if is_depthwise_conv(module):
                continue  # per-channel vectors, not a matrix (per_channel_parameters below)
            for pname, p in matrix_params:
                full = param_names[id(p)]
                if any(d.isinf() for d in shapes[full]):
                    raise RoleError(
                        f"{full!r} is a width matrix held by {type(module).__name__}, not nn.Linear/nn.Embedding: "
                        "lrm-mup reparametrizes only those two (split fused layers into nn.Linear)"
                    )
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
        fan_in_mult = 1.0 if isinstance(module, nn.Embedding) else float(infshape[1].width_mult())
        found.append((name, module, role, kind, fan_in_mult))
    # a weight shared by several layers (tied embedding/readout) is owned, for init and optimizer, by its input
    # layer if it has one, else by the first layer holding it; the others only apply their forward multiplier
    owner: dict[int, str] = {}
    for name, module, _, kind, _ in sorted(found, key=lambda f: f[3] != INPUT):
        owner.setdefault(id(module.weight), name)
    return [Matrix(name, module, role, kind, m, tied=owner[id(module.weight)] != name)
            for name, module, role, kind, m in found]


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
