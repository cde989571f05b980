"""Config -> parametrized model: the one place where a `TrainConfig` becomes a model.

    model = parametrized_model(cfg)                    # cfg.width, initialized from cfg.seed, on the CPU
    table = describe(parametrized_model(cfg, device="meta"))   # the layer table, no memory, no init

The model comes from the registry (`cfg.build(width)`), and `lrm_mup.parametrize` applies the recipe with the base
shapes of the config: μP's width dimensions are those that differ between a model at `base_width` and one at
`delta_width` (2 × base by default). The delta is built on the meta device (it lends only its shapes); the base is
initialized on the CPU from `cfg.seed`, without touching the global generator, for its init statistics (the std of
each matrix, which `parametrize` sets the target's init from).
Training runs, sweep trials, transfer runs, `lrm-mup describe` and the benchmarks all build through here.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..core.recipes import parametrize
from ..core.shapes import BaseShapes, base_shapes
from .config import TrainConfig


def config_base_shapes(cfg: TrainConfig) -> BaseShapes:
    """The μP base shapes of `cfg`: its model at `base_width` (initialized on the CPU from `cfg.seed` in a forked
    generator: its init statistics) against its model at `delta_width` (on the meta device), both at `base_depth`
    (the depth rule's base)."""
    depth = cfg.base_depth_or_default
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(cfg.seed)
        base = cfg.build(cfg.base_width, depth)
    with torch.device("meta"):
        return base_shapes(base, cfg.build(cfg.delta_or_default, depth))


def parametrized_model(cfg: TrainConfig, width: int | None = None, *, device: str | torch.device | None = None
                       ) -> nn.Module:
    """`cfg`'s model at `width` (default `cfg.width`), parametrized under its recipe, optimizer, placement and alphas.

    On a real device the model is initialized on the CPU after seeding torch's global generator with `cfg.seed`, then
    moved to `device` (if given): the init is a function of the config, the same on every device. On
    `device="meta"` nothing at `width` is initialized or allocated (and the global generator is not touched): the
    layer table only (`lrm_mup.describe`), whatever the width (only the small base model is built, for its init
    statistics, in a forked generator)."""
    width = cfg.width if width is None else width
    meta = device is not None and torch.device(device).type == "meta"
    if not meta:
        torch.manual_seed(cfg.seed)
    with torch.device("meta") if meta else contextlib.nullcontext():
        model = cfg.build(width)
        parametrize(model, config_base_shapes(cfg), recipe=cfg.recipe, optimizer=cfg.optimizer,
                    placement=cfg.placement, alphas=cfg.alphas or None, depth_rule=cfg.depth_rule,
                    zero_init=cfg.zero_init)
    return model.to(device) if device is not None and not meta else model
