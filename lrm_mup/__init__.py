"""lrm-mup: μP and learnable multipliers (arXiv 2601.04890) for hyperparameter transfer in LM pretraining.

    model = lrm_mup.parametrize(make(1024), base=make(64), delta=make(128), recipe="lrm")
    opt = lrm_mup.build_optimizer(model, "adamw", lr=3e-3, weight_decay=0.1)
    lrm_mup.clip_grad_norm_(model, 1.0)   # global norm without the multipliers
    plain = lrm_mup.merge(model)          # multipliers folded into plain nn.Linear / nn.Embedding

The flow, one subpackage a stage: `core` (parametrize, optimizers) → `models` (the registry) → `training` (a run and
its folder) → `tuning` (coordinate checks, sweeps, transfer) → `analysis` (what the records say) → `report` (HTML);
`pipelines` chains them (the demo) and `cli` is a thin layer over all of it.
"""
from ._version import __version__
from .core.multipliers import EffectivePath, merge, multiplier_parameters
from .core.optim import build_optimizer, clip_grad_norm_, param_groups
from .core.parametrization import LayerParametrization, ModelParametrization, parametrization_of
from .core.recipes import PLACEMENTS, RECIPES, apply_parametrization, describe, parametrize
from .core.roles import ROLES
from .core.shapes import BaseShapes, base_shapes
from .errors import (
                     ConfigError,
                     DataError,
                     LrmMupError,
                     RecipeError,
                     RoleError,
                     RunFolderError,
                     ShapeError,
                     SweepError,
                     TransferError,
)

__all__ = [
    "parametrize", "build_optimizer", "clip_grad_norm_", "merge", "EffectivePath", "base_shapes", "BaseShapes",
    "describe", "param_groups", "multiplier_parameters", "RECIPES", "PLACEMENTS", "ROLES", "LrmMupError",
    "ConfigError", "DataError", "RecipeError", "RoleError", "ShapeError", "RunFolderError", "SweepError",
    "TransferError", "RecordError", "parametrization_of", "apply_parametrization", "LayerParametrization",
    "ModelParametrization", "__version__",
]
