"""lrm-mup: μP and learnable multipliers (arXiv 2601.04890) for hyperparameter transfer in LM pretraining.

    model = lrm_mup.parametrize(make(1024), base=make(64), delta=make(128), recipe="lrm")
    opt = lrm_mup.build_optimizer(model, "adamw", lr=3e-3, weight_decay=0.1)
    lrm_mup.clip_grad_norm_(model, 1.0)   # global norm without the multipliers
    plain = lrm_mup.merge(model)          # multipliers folded into plain nn.Linear / nn.Embedding
"""
from .multipliers import EffectivePath, merge, multiplier_parameters
from .optim import build_optimizer, clip_grad_norm_, param_groups
from .recipes import PLACEMENTS, RECIPES, RecipeError, describe, parametrize
from .roles import ROLES, RoleError
from .shapes import BaseShapes, ShapeError, base_shapes

__all__ = [
    "parametrize", "build_optimizer", "clip_grad_norm_", "merge", "EffectivePath", "base_shapes", "BaseShapes",
    "describe", "param_groups", "multiplier_parameters", "RECIPES", "PLACEMENTS", "ROLES", "RecipeError", "RoleError",
    "ShapeError",
]
__version__ = "0.1.0"
