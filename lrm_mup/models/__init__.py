"""Models chosen by name (`--model`, a sweep's `model.model`): the registry every stage builds from.

A model entry is a constructor taking the width first (`build(width, **fields)`), so base, delta and target are
built from one definition; the remaining fields are the config's model fields (depth, head_dim, heads, context,
init_std). Each model's own config lives beside it (`proxy.py`: `GPTConfig` and `GPT`; `hybrid.py`: `HybridConfig`
and `Hybrid`, Falcon-H1's attention ∥ Mamba-2 block, its scan in `ssd.py`). `register_model` adds a
user's model under a name, which every stage (train, sweep, transfer, coord-check) then accepts.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .._names import MODELS as BUILTIN_MODELS
from .._names import check_table
from ..errors import ConfigError
from .hybrid import Hybrid, HybridConfig, hybrid
from .proxy import GPT, GPTConfig, proxy

__all__ = ["MODELS", "GPT", "GPTConfig", "proxy", "Hybrid", "HybridConfig", "hybrid", "register_model", "build_model"]

MODELS: dict[str, Callable[..., nn.Module]] = {"proxy": proxy, "hybrid": hybrid}
check_table("MODELS", MODELS, BUILTIN_MODELS)


def register_model(name: str, build: Callable[..., nn.Module]) -> None:
    """Make `build(width, **fields)` available as model `name` (one definition, any width)."""
    if not (isinstance(name, str) and name) or not callable(build):
        raise ConfigError(f"register_model needs a name and a constructor, not {name!r}, {build!r}")
    MODELS[name] = build


def build_model(name: str, width: int, **fields) -> nn.Module:
    """The registered model `name` at `width`."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")
    return MODELS[name](width, **fields)
