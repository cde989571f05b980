"""lrm-mup: μP and learnable multipliers (arXiv 2601.04890) for hyperparameter transfer in LM pretraining.

    model = lrm_mup.parametrize(make(1024), base=make(64), delta=make(128), recipe="lrm")
    opt = lrm_mup.build_optimizer(model, "adamw", lr=3e-3, weight_decay=0.1)
    lrm_mup.clip_grad_norm_(model, 1.0)   # global norm without the multipliers
    plain = lrm_mup.merge(model)          # multipliers folded into plain nn.Linear / nn.Embedding

The flow, one subpackage a stage: `core` (parametrize, optimizers) → `models` (the registry) → `training` (a run and
its folder) → `tuning` (coordinate checks, sweeps, transfer) → `analysis` (what the records say) → `report` (HTML);
`pipelines` chains them (the demo) and `cli` is a thin layer over all of it.
"""
from __future__ import annotations

import importlib

from ._version import __version__
from .errors import (
    ConfigError,
    DataError,
    LrmMupError,
    RecipeError,
    RecordError,
    RoleError,
    RunFolderError,
    ShapeError,
    SweepError,
    TransferError,
)

# The torch-backed API, imported on first use (PEP 562): every `lrm-mup` command imports this package first, and
# `lrm-mup --help` / `--version` must not pay torch's import (seconds) to print a few lines. `lrm_mup.parametrize`
# and `from lrm_mup import parametrize` work as before.
_LAZY = {
    "EffectivePath": "core.multipliers", "merge": "core.multipliers", "multiplier_parameters": "core.multipliers",
    "build_optimizer": "core.optim", "clip_grad_norm_": "core.optim", "param_groups": "core.optim",
    "LayerParametrization": "core.parametrization", "ModelParametrization": "core.parametrization",
    "parametrization_of": "core.parametrization",
    "PLACEMENTS": "core.recipes", "RECIPES": "core.recipes", "apply_parametrization": "core.recipes",
    "describe": "core.recipes", "parametrize": "core.recipes",
    "ROLES": "core.roles", "BaseShapes": "core.shapes", "base_shapes": "core.shapes",
    "save_pretrained": "core.foreign", "falcon_h1_alphas": "core.foreign",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'lrm_mup' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # the next access is a plain lookup
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "parametrize", "build_optimizer", "clip_grad_norm_", "merge", "EffectivePath", "base_shapes", "BaseShapes",
    "save_pretrained", "falcon_h1_alphas",
    "describe", "param_groups", "multiplier_parameters", "RECIPES", "PLACEMENTS", "ROLES", "LrmMupError",
    "ConfigError", "DataError", "RecipeError", "RoleError", "ShapeError", "RunFolderError", "SweepError",
    "TransferError", "RecordError", "parametrization_of", "apply_parametrization", "LayerParametrization",
    "ModelParametrization", "__version__",
]
