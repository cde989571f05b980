"""The names a user types (recipes, optimizers, placements, models, schedules, devices, paths, parallel modes),
torch-free, so that `lrm-mup --help` lists every choice without importing torch (a second or more). The modules that
give the names their meaning define their tables from these: `core.recipes` (RECIPES, PLACEMENTS, OPTIMIZERS),
`core.depth` (DEPTH_RULES),
`models` (the built-in entries of the registry), `training.config` (SCHEDULES, DEVICES, PATHS) and
`training.distributed` (PARALLEL)."""
from __future__ import annotations

RECIPES = ("sp", "lr-only", "lr-wd", "mup", "lrm")
OPTIMIZERS = ("adamw", "muon")
INITS = ("rescale", "keep")  # what parametrize does with the model's own init (core.recipes)
PLACEMENTS = ("all", "symmetry-free", "scalar")
DEPTH_RULES = ("none", "sqrt", "complete")  # residual branches × (L_base/L)^α, α = 0, 1/2, 1 (core.depth)
MODELS = ("proxy", "hybrid")  # the built-in models; `lrm_mup.models.register_model` adds a user's to the registry
SCHEDULES = ("constant", "cosine", "wsd")
DEVICES = ("auto", "cpu", "cuda")
PATHS = ("autograd", "effective")
PARALLEL = ("ddp", "fsdp")
STORAGE_ENV = "LRM_MUP_STORAGE"  # the storage URL where --storage is not given: no password on a command line


def check_table(kind: str, table, names: tuple[str, ...]) -> None:
    """A table keyed by names (a dict of recipes, placements...) must list exactly `names`, in order: the CLI's
    choices come from here, the meaning from the table."""
    if tuple(table) != names:
        raise ImportError(f"{kind}: the table has {tuple(table)}, lrm_mup._names lists {names}")
