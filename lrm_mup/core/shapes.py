"""Width dimensions, from mup's base/delta shape inference.

A dimension is a *width* dimension iff it differs between the base model and the delta model (mup's rule). We keep
mup's `InfShape` objects in a plain dict keyed by parameter name instead of attaching them to parameters
(`p.infshape` is lost by `copy.deepcopy`, `load_state_dict(assign=True)`, DDP/FSDP wrappers); the numbers that matter
go into each layer's `LayerParametrization` when a model is parametrized.

Base shapes are saved as JSON together with the base head dimension and the base model's init statistics (the
std of every matrix at init: `BaseShapes.init_std`), so a proxy run and a target run parametrized months apart share
one base (mup issue #25) without re-building the base model, and `parametrize` can set the target's init from the
base's whatever init convention the model has (HF's std 0.02 at every width, a user's own; see `recipes`). A base
on the meta device, or a base_shapes.json written before the statistics existed, carries none (`init_std is None`).
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from mup import InfShape, make_base_shapes, zip_infshapes
from torch import nn

from .._files import write_json_atomic
from ..errors import ShapeError
from .roles import embedding_scale


def head_dim_of(model: nn.Module) -> int | None:
    """The attention head dimension a model declares: `model.head_dim`, else (Hugging Face models, duck-typed) its
    `config.head_dim`, else `config.hidden_size // config.num_attention_heads`; None if it declares none."""
    value = getattr(model, "head_dim", None)
    if value is not None:
        return int(value)
    config = getattr(model, "config", None)
    value = getattr(config, "head_dim", None)
    if isinstance(value, int) and value > 0:
        return value
    hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0 and hidden % heads == 0:
        return hidden // heads
    return None


@torch.no_grad()
def init_stds(model: nn.Module) -> dict[str, float] | None:
    """Parameter name -> std of its entries (float64), for every parameter with 2 or more dims: the init statistics
    `parametrize` scales the target's init from. None when any parameter is on the meta device (nothing to measure).
    """
    params = list(model.named_parameters())
    if any(p.is_meta for _, p in params):
        return None
    return {name: float(p.detach().double().std()) if p.numel() > 1 else 0.0 for name, p in params if p.ndim >= 2}


def module_scales(model: nn.Module) -> dict[str, float]:
    """Module name -> c for every nn.Embedding subclass whose forward is lookup × c (`roles.embedding_scale`)."""
    return {name: c for name, m in model.named_modules() if (c := embedding_scale(m)) is not None}


class BaseShapes(dict):
    """Parameter name -> `InfShape` of the base model (`None` dims of the target filled in later).

    Also carries `head_dim`, the base model's attention head dimension, so that μP's 1/d_head attention scaling can
    be applied when the head dimension grows with width, and `init_std`, the std of every matrix of the base model
    at init ({parameter: std}; None where unknown: a meta base or an older file), and `module_scales`, the constant
    c of each embedding whose forward is lookup × c (Gemma's √hidden), which μP keeps at the base's value.
    """

    head_dim: int | None = None
    init_std: dict[str, float] | None = None
    module_scales: dict[str, float] | None = None

    def dims(self) -> dict[str, tuple[int | None, ...]]:
        """Parameter name -> base dims (None for a finite dim): what base_shapes.json and a ModelParametrization
        hold."""
        return {name: tuple(inf.base_shape()) for name, inf in self.items()}

    @classmethod
    def from_dims(cls, dims: dict[str, Sequence[int | None]], head_dim: int | None,
                  init_std: dict[str, float] | None = None,
                  module_scales: dict[str, float] | None = None) -> BaseShapes:
        """The inverse of `dims()` (with the head dim, init statistics and embedding constants beside them)."""
        out = cls({name: InfShape.from_base_shape(list(d)) for name, d in dims.items()})
        out.head_dim = head_dim
        if module_scales is not None:
            out.module_scales = {k: float(v) for k, v in module_scales.items()}
        if init_std is not None:
            bad = [k for k, v in init_std.items() if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0)]
            if bad:
                raise ShapeError(f"base init std of {bad[0]!r} is {init_std[bad[0]]!r}; it must be a finite "
                                 "number >= 0")
            out.init_std = {k: float(v) for k, v in init_std.items()}
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Write as JSON {"head_dim": ..., "shapes": {name: base dims}, "init_std": {name: std} | null,
        "module_scales": {module: c} | null} (atomically)."""
        write_json_atomic(path, {"head_dim": self.head_dim, "shapes": self.dims(), "init_std": self.init_std,
                                 "module_scales": self.module_scales})

    @classmethod
    def load(cls, path: str | os.PathLike) -> BaseShapes:
        """Read a file `save` wrote; files from before the init statistics load with `init_std = None`."""
        try:
            payload = json.loads(Path(path).read_text())
            return cls.from_dims(payload["shapes"], payload.get("head_dim"), payload.get("init_std"),
                                 payload.get("module_scales"))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ShapeError(f"cannot read base shapes from {str(path)!r}: {e}") from None


def _param_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def base_shapes(base: nn.Module, delta: nn.Module) -> BaseShapes:
    """Infer width dimensions from a base model and a wider delta model (same architecture), and measure the base's
    init statistics (`init_stds`) if the base holds real tensors (the delta may be on the meta device)."""
    b, d = _param_shapes(base), _param_shapes(delta)
    _check_same_names(b, d, "base", "delta")
    if all(b[k] == d[k] for k in b):
        raise ShapeError("base and delta models have identical parameter shapes: build delta wider than base")
    out = BaseShapes(make_base_shapes(b, d))
    out.head_dim = head_dim_of(base)
    out.init_std = init_stds(base)
    out.module_scales = module_scales(base)
    return out


def infshapes(model: nn.Module, base: BaseShapes) -> dict[str, InfShape]:
    """Parameter name -> `InfShape` of `model` against `base` (width multipliers = dim / base dim)."""
    shapes = _param_shapes(model)
    _check_same_names(dict(base), shapes, "base", "model")
    for name, inf in base.items():
        if len(inf) != len(shapes[name]):
            raise ShapeError(f"parameter {name!r} has {len(shapes[name])} dims in the model but {len(inf)} in the base")
    return zip_infshapes(dict(base), shapes)


def _check_same_names(a: dict, b: dict, a_name: str, b_name: str) -> None:
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_a or only_b:
        raise ShapeError(
            f"{a_name} and {b_name} differ in parameter names (only in {a_name}: {only_a[:3]}, "
            f"only in {b_name}: {only_b[:3]}): build them from the same definition, before parametrizing"
        )
