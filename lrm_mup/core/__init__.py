"""The parametrization core: width shapes, matrix roles, multiplier layers, recipes and optimizers.

Nothing here knows about training runs, sweeps or reports; every higher layer builds on these modules. What
`parametrize` did is a typed record: `parametrization_of(model)` (the model's), `layer.parametrization` (a layer's).
"""
from .depth import DEPTH_RULES, DepthLayout
from .foreign import falcon_h1_alphas, save_pretrained
from .multipliers import EffectivePath, merge, multiplied_modules, multiplier_parameters
from .optim import MULT_LR_RATIO, MULTIPLIER_WD, build_optimizer, clip_grad_norm_, param_groups
from .parametrization import LayerParametrization, ModelParametrization, parametrization_of
from .recipes import OPTIMIZERS, PLACEMENTS, RECIPES, apply_parametrization, describe, parametrize
from .roles import ROLES
from .shapes import BaseShapes, base_shapes

__all__ = [
    "parametrize", "apply_parametrization", "parametrization_of", "LayerParametrization", "ModelParametrization",
    "build_optimizer", "clip_grad_norm_", "param_groups", "merge", "EffectivePath",
    "multiplied_modules", "multiplier_parameters", "base_shapes", "BaseShapes", "describe", "RECIPES", "PLACEMENTS",
    "OPTIMIZERS", "ROLES", "MULTIPLIER_WD", "MULT_LR_RATIO", "save_pretrained", "falcon_h1_alphas", "DEPTH_RULES",
    "DepthLayout",
]
