"""What a training run is: `TrainConfig` (every setting of a run, validated on construction) and its LR schedule.

Execution settings (`EXECUTION`) say how a step is computed, not what it computes: a run may resume with other values
(another machine, less memory). Every other field defines the run.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch

from .. import data as data_mod
from .._names import DEPTH_RULES, DEVICES, PATHS, SCHEDULES
from ..core.recipes import OPTIMIZERS, PLACEMENTS, RECIPES, check_alphas, check_zero_init
from ..errors import ConfigError, RecipeError
from ..models import check_model, is_hf, model_builder
from ..models.hf import read_config_file
from ..models.hybrid import ssm_fields
from ..models.proxy import DEFAULT_HEAD_DIM
from . import distributed

# how a step is computed, not what it computes: a run may resume with other values (another machine, less memory)
EXECUTION = ("micro_batch", "device", "compile", "parallel")
SEED_RANGE = 2**64  # torch generators take seeds in [0, 2**64)


@dataclass
class TrainConfig:
    """Every setting of one training run: the model, the recipe, the optimizer and its schedule, data, execution."""

    recipe: str = "lrm"
    optimizer: str = "adamw"
    model: str | None = None       # a model name (lrm_mup.models): proxy (default), hf:llama, ..., pkg.module:build
    model_config: str | None = None  # an HF config JSON (model hf:TYPE, TYPE its model_type), scaled to the width
    tokenizer: str | None = None   # None: bytes; a tokenizer.json; bpe:N (trained on the training split, cached)
    width: int = 128
    depth: int = 2
    head_dim: int | None = None     # set one of head_dim / heads; neither: head_dim 32 (DEFAULT_HEAD_DIM)
    heads: int | None = None
    ssm: dict = field(default_factory=dict)  # model hybrid: its SSM fields by short name (models.hybrid.SSM_FIELDS)
    context: int = 128
    base_width: int = 64            # the μP base; delta is 2× base unless given
    delta_width: int | None = None
    depth_rule: str = "none"        # residual branches × (base_depth/depth)^α: none / sqrt / complete (core.depth)
    base_depth: int | None = None   # the depth rule's base: blocks of the base and delta models (default: depth)
    steps: int = 200
    batch: int = 16                 # sequences per optimizer step, over all processes
    micro_batch: int | None = None  # sequences per forward in each process (gradient accumulation; default: all)
    lr: float = 3e-3                # matrices (Muon's LR under "muon")
    adam_lr: float | None = None    # AdamW groups under "muon" (default: lr)
    weight_decay: float = 0.1
    mult_lr: float | None = None    # learnable multipliers (default: the AdamW LR / 4, core.optim.MULT_LR_RATIO)
    mult_wd: float = 2e-3
    placement: str | None = None    # lrm only: all / symmetry-free / scalar
    alphas: dict[str, float] = field(default_factory=dict)
    init_std: float = 1.0
    zero_init: list[str] = field(default_factory=list)  # roles started at zero: readout, query (μP's zero init)
    warmup: int | None = None       # default: 10% of steps
    schedule: str = "cosine"
    clip: float = 1.0
    seed: int = 0
    eval_every: int = 50
    eval_batches: int = 8
    data: str | None = None         # None: the Shakespeare corpus
    device: str = "auto"
    compile: bool | None = None     # default: on CUDA only
    path: str = "auto"              # "autograd", "effective" (merged matrices), or auto: engine.training_path
    parallel: str = "ddp"           # under torchrun: DDP replicas, or "fsdp" shards

    def __post_init__(self):
        def bad(name, allowed):
            raise ConfigError(f"{name}={getattr(self, name)!r} is invalid: {allowed}")

        choices = {"recipe": RECIPES, "optimizer": OPTIMIZERS, "schedule": SCHEDULES, "depth_rule": DEPTH_RULES,
                   "device": DEVICES, "path": PATHS, "parallel": distributed.PARALLEL}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                bad(name, "allowed: " + ", ".join(allowed))
        if self.model_config is not None:
            if not isinstance(self.model_config, str):
                bad("model_config", "must be the path of an HF config JSON")
            kind = read_config_file(self.model_config)["model_type"]
            if self.model is None:
                self.model = f"hf:{kind}"  # the file names its model class
            elif not is_hf(self.model):
                bad("model_config", f"an HF config file needs model hf:{kind}, not {self.model!r}")
        if self.model is None:
            self.model = "proxy"
        if not isinstance(self.model, str):
            bad("model", "must be a model name: proxy, hf:llama, ... or pkg.module:build")
        model_builder(self.model)  # an unknown name, a builder that does not import: one line
        if self.tokenizer is not None and not isinstance(self.tokenizer, str):
            bad("tokenizer", "must be a tokenizer.json path or bpe:N")
        data_mod.check_tokenizer(self.tokenizer)
        ssm_fields(self.model, self.ssm)  # SSM fields only for the hybrid, by their names (values: below)
        if self.head_dim is not None and self.heads is not None:
            raise ConfigError(f"heads={self.heads!r} and head_dim={self.head_dim!r} are both set: give one of "
                              "--heads (a fixed number of heads) and --head-dim (a fixed head size)")
        if self.head_dim is None and self.heads is None and self.model_config is None:
            self.head_dim = DEFAULT_HEAD_DIM  # with an HF config file: the file's own head dim stays fixed
        if self.placement is not None:
            if self.recipe != "lrm":
                bad("placement", f"placement applies to recipe 'lrm' only, not {self.recipe!r}")
            if self.placement not in PLACEMENTS:
                bad("placement", "allowed: " + ", ".join(PLACEMENTS))
        for name in ("width", "depth", "context", "base_width", "steps", "batch", "eval_every", "eval_batches"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
                bad(name, "must be a positive integer")
        if not (isinstance(self.seed, int) and not isinstance(self.seed, bool) and 0 <= self.seed < SEED_RANGE):
            bad("seed", "must be an integer in [0, 2**64)")
        if self.micro_batch is not None and not (isinstance(self.micro_batch, int) and 0 < self.micro_batch
                                                 and not isinstance(self.micro_batch, bool)
                                                 and self.batch % self.micro_batch == 0):
            bad("micro_batch", f"must be a positive integer dividing batch={self.batch}")
        if self.parallel == "fsdp" and self.path == "effective":
            bad("path", "the effective path's merged matrices cannot be FSDP-sharded; "
                        "use path autograd, or parallel ddp")
        if self.parallel == "fsdp" and self.optimizer == "muon":
            bad("optimizer", "Muon's Newton-Schulz needs whole matrices, not FSDP shards; use parallel ddp")
        if self.base_depth is not None and not (isinstance(self.base_depth, int) and self.base_depth > 0
                                                and not isinstance(self.base_depth, bool)):
            bad("base_depth", "must be a positive integer (or None: the run's depth)")
        if self.depth_rule != "none" and self.optimizer != "adamw":
            bad("depth_rule", f"the depth rules are derived for AdamW (CompleteP), not {self.optimizer!r}")
        if self.delta_width is not None and self.delta_width == self.base_width:
            bad("delta_width", "must differ from base_width")
        for name in ("lr", "weight_decay", "mult_wd", "clip", "adam_lr", "mult_lr", "init_std"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                          and math.isfinite(value) and value >= 0):
                bad(name, "must be a finite number >= 0")
        if self.lr == 0 or self.init_std == 0:
            bad("lr" if self.lr == 0 else "init_std", "must be > 0")
        if self.warmup is not None and not (isinstance(self.warmup, int) and 0 <= self.warmup <= self.steps):
            bad("warmup", f"must be an integer in [0, steps={self.steps}]")
        if self.data is not None and not isinstance(self.data, str):
            bad("data", "must be a path (a string) or None")
        if self.compile is not None and not isinstance(self.compile, bool):
            bad("compile", "must be true, false or None")
        check_alphas(self.alphas)
        try:
            self.zero_init = list(check_zero_init(self.zero_init))
        except RecipeError as e:
            raise ConfigError(str(e)) from None
        if self.device == "cuda" and not torch.cuda.is_available():
            bad("device", "CUDA is not available on this machine; use --device cpu or auto")
        for width in (self.width, self.base_width, self.delta_or_default):
            check_model(self.model, width, **self.model_fields())  # width vs heads/head_dim, by the model's config

    @property
    def delta_or_default(self) -> int:
        return self.delta_width if self.delta_width is not None else 2 * self.base_width

    @property
    def base_depth_or_default(self) -> int:
        return self.base_depth if self.base_depth is not None else self.depth

    @property
    def warmup_steps(self) -> int:
        return self.warmup if self.warmup is not None else self.steps // 10

    @property
    def vocab(self) -> int:
        """The model's vocabulary: 256 bytes, or the tokenizer's size (`lrm_mup.data.tokenizer_vocab`)."""
        return data_mod.tokenizer_vocab(self.tokenizer)

    def model_fields(self, depth: int | None = None) -> dict:
        """The model fields of the config: the registry constructor's keyword arguments (a user's builder
        `pkg.module:build` gets the width alone), at `depth` (default the config's: the base and delta models are
        built at `base_depth`)."""
        kw = {"depth": self.depth if depth is None else depth, "head_dim": self.head_dim, "heads": self.heads,
              "context": self.context, "init_std": self.init_std}
        if self.vocab != data_mod.VOCAB:
            kw["vocab"] = self.vocab
        if self.model_config is not None:
            kw["config"] = self.model_config
        kw.update(ssm_fields(self.model, self.ssm))
        return kw

    def build(self, width: int, depth: int | None = None) -> torch.nn.Module:
        """The plain model at `width` (and `depth`, default the config's), from the registry;
        `lrm_mup.training.parametrized_model` parametrizes it."""
        return model_builder(self.model)(width, **self.model_fields(depth))

    def differences(self, other: TrainConfig) -> list[str]:
        """The fields, execution settings aside, in which two configs differ: what makes them different runs."""
        a, b = asdict(self), asdict(other)
        return sorted(k for k in a if a[k] != b[k] and k not in EXECUTION)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown config field {unknown[0]!r}; known: {', '.join(sorted(names))}")
        return cls(**d)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """LR multiplier at `step` (0-based): linear warmup, then constant / cosine to 10% / warmup-stable-decay
    (linear decay to 0 over the last 20%)."""
    warmup, total = cfg.warmup_steps, cfg.steps
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
    decay_start = max(warmup, int(0.8 * total))
    return 1.0 if step < decay_start else max(0.0, (total - step) / max(1, total - decay_start))
