"""The names a user types (recipes, optimizers, placements, models, schedules, devices, paths, parallel modes),
torch-free, so that `lrm-mup --help` lists every choice without importing torch (a second or more). The modules that
give the names their meaning define their tables from these: `core.recipes` (RECIPES, PLACEMENTS, OPTIMIZERS),
`core.depth` (DEPTH_RULES),
`models` (the built-in entries of the registry), `training.config` (SCHEDULES, DEVICES, PATHS) and
`training.distributed` (PARALLEL)."""
from __future__ import annotations

import re

RECIPES = ("sp", "lr-only", "lr-wd", "mup", "lrm")
OPTIMIZERS = ("adamw", "muon")
ZERO_INIT_ROLES = ("readout", "query")  # roles parametrize's zero_init may start at zero (μP's zero init)
INITS = ("rescale", "keep")  # what parametrize does with the model's own init (core.recipes)
PLACEMENTS = ("all", "symmetry-free", "scalar", "no-embedding")
DEPTH_RULES = ("none", "sqrt", "complete")  # residual branches × (L_base/L)^α, α = 0, 1/2, 1 (core.depth)
# the built-in models (hf:* need transformers); `lrm_mup.models.register_model` adds a user's to the registry, and a
# name `pkg.module:build` names a user's builder `build(width) -> nn.Module` (see `is_model_name`)
MODELS = ("proxy", "hybrid", "hf:llama", "hf:qwen3", "hf:mistral", "hf:gpt2", "hf:falcon_h1")
HF_PREFIX = "hf:"  # hf:TYPE, TYPE any model_type transformers knows when --model-config gives its config file
SCHEDULES = ("constant", "cosine", "wsd")
DEVICES = ("auto", "cpu", "cuda")
PATHS = ("auto", "autograd", "effective")
PARALLEL = ("ddp", "fsdp")
STORAGE_ENV = "LRM_MUP_STORAGE"  # the storage URL where --storage is not given: no password on a command line


_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
BUILDER = re.compile(rf"{_IDENT}(\.{_IDENT})*:{_IDENT}")  # pkg.module:build (torchtitan-style "module:function")
HF_NAME = re.compile(rf"{HF_PREFIX}[a-z0-9_]+")


def is_model_name(name: str) -> bool:
    """Whether `name` can name a model, by its spelling alone (torch-free, for the CLI): a built-in model, `hf:TYPE`
    or `pkg.module:build` (a name given to `register_model` lives in its Python process only: the command line
    reaches a user's model through `pkg.module:build`). Whether the model exists (the module imports, transformers
    knows the TYPE) is checked when the config is built."""
    return isinstance(name, str) and bool(name in MODELS or HF_NAME.fullmatch(name) or BUILDER.fullmatch(name))


def check_table(kind: str, table, names: tuple[str, ...]) -> None:
    """A table keyed by names (a dict of recipes, placements...) must list exactly `names`, in order: the CLI's
    choices come from here, the meaning from the table."""
    if tuple(table) != names:
        raise ImportError(f"{kind}: the table has {tuple(table)}, lrm_mup._names lists {names}")
