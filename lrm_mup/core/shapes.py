"""Width dimensions, from mup's base/delta shape inference.

A dimension is a *width* dimension iff it differs between the base model and the delta model (mup's rule). We keep
mup's `InfShape` objects in a plain dict keyed by parameter name instead of attaching them to parameters
(`p.infshape` is lost by `copy.deepcopy`, `load_state_dict(assign=True)`, DDP/FSDP wrappers); the numbers that matter
go into each layer's `LayerParametrization` when a model is parametrized.

Base shapes are saved as JSON together with the base head dimension, so a proxy run and a target run parametrized
months apart share one base (mup issue #25) without re-building the base model.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from mup import InfShape, make_base_shapes, zip_infshapes
from torch import nn

from .._files import write_json_atomic
from ..errors import ShapeError


def head_dim_of(model: nn.Module) -> int | None:
    """The attention head dimension a model declares (`model.head_dim`), if any."""
    value = getattr(model, "head_dim", None)
    return int(value) if value is not None else None


class BaseShapes(dict):
    """Parameter name -> `InfShape` of the base model (`None` dims of the target filled in later).

    Also carries `head_dim`, the base model's attention head dimension, so that μP's 1/d_head attention scaling can
    be applied when the head dimension grows with width, and `depth`, its number of blocks, the base of the depth
    rules (`core.depth`; None where the model declares no blocks, or in a file saved before it was recorded).
    """

    head_dim: int | None = None
    depth: int | None = None  # the base model's number of blocks, where it declares them (core.depth)

    def dims(self) -> dict[str, tuple[int | None, ...]]:
        """Parameter name -> base dims (None for a finite dim): what base_shapes.json and a ModelParametrization
        hold."""
        return {name: tuple(inf.base_shape()) for name, inf in self.items()}

    @classmethod
    def from_dims(cls, dims: dict[str, Sequence[int | None]], head_dim: int | None,
                  depth: int | None = None) -> BaseShapes:
        """The inverse of `dims()`."""
        out = cls({name: InfShape.from_base_shape(list(d)) for name, d in dims.items()})
        out.head_dim, out.depth = head_dim, depth
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Write as JSON {"head_dim": ..., "depth": ..., "shapes": {name: base dims}} (atomically)."""
        write_json_atomic(path, {"head_dim": self.head_dim, "depth": self.depth, "shapes": self.dims()})

    @classmethod
    def load(cls, path: str | os.PathLike) -> BaseShapes:
        try:
            payload = json.loads(Path(path).read_text())
            return cls.from_dims(payload["shapes"], payload.get("head_dim"), payload.get("depth"))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ShapeError(f"cannot read base shapes from {str(path)!r}: {e}") from None


def _param_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def base_shapes(base: nn.Module, delta: nn.Module) -> BaseShapes:
    """Infer width dimensions from a base model and a wider delta model (same architecture)."""
    b, d = _param_shapes(base), _param_shapes(delta)
    _check_same_names(b, d, "base", "delta")
    if all(b[k] == d[k] for k in b):
        raise ShapeError("base and delta models have identical parameter shapes: build delta wider than base")
    out = BaseShapes(make_base_shapes(b, d))
    out.head_dim, out.depth = head_dim_of(base), declared_depth(base)
    return out


def declared_depth(model: nn.Module) -> int | None:
    """The number of blocks a model declares through `lrm_depth()` ({"blocks": name, ...}), if any."""
    if not hasattr(model, "lrm_depth"):
        return None
    declared = model.lrm_depth()
    blocks = declared.get("blocks") if isinstance(declared, dict) else None
    try:
        return len(model.get_submodule(blocks)) if isinstance(blocks, str) else None
    except (AttributeError, TypeError):
        return None  # a bad declaration is reported by parametrize (core.depth), which reads it in full


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
