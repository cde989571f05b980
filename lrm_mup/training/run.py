"""Training a model under one recipe: config -> model -> parametrize -> train -> metrics.

One loop, readable top to bottom. Everything a run needs is in `TrainConfig`; a run folder holds `config.json`,
`metrics.jsonl` (one JSON object per line: train rows, eval rows, a final status row), `base_shapes.json` and
`checkpoint.pt` (loadable with `weights_only=True`). Resuming from the checkpoint continues exactly where the run
stopped: model, optimizer, LR schedule, data order and RNG all come back, so on CPU a resumed run is bit-identical
to an uninterrupted one.

Under `torchrun` the same loop is data-parallel (`lrm_mup.distributed`): `batch` stays the global batch, the model is
wrapped in DDP (the effective path averages its mapped gradients itself) or sharded by FSDP (`parallel="fsdp"`),
rank 0 writes the run folder, and logged losses and validation are averages over all ranks. The result equals the
single-process run up to float reduction order. Checkpoints hold whole tensors keyed by parameter name, so they
resume at any world size and under either parallelism.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from .. import data as data_mod
from ..core.multipliers import EffectivePath
from ..core.optim import build_optimizer, clip_grad_norm_
from ..core.recipes import OPTIMIZERS, PLACEMENTS, RECIPES, parametrize
from ..core.shapes import base_shapes
from ..errors import ConfigError, MissingError, RunFolderError
from ..models import MODELS, GPTConfig
from ..records import RunResult
from . import distributed

SCHEDULES = ("constant", "cosine", "wsd")
DEVICES = ("auto", "cpu", "cuda")
PATHS = ("autograd", "effective")
# how a step is computed, not what it computes: a run may resume with other values (another machine, less memory)
EXECUTION = ("micro_batch", "device", "compile", "parallel")
FULL_STATE = StateDictOptions(full_state_dict=True, cpu_offload=True)


@dataclass
class TrainConfig:
    recipe: str = "lrm"
    optimizer: str = "adamw"
    model: str = "proxy"
    width: int = 128
    depth: int = 2
    head_dim: int | None = 32
    heads: int | None = None
    context: int = 128
    base_width: int = 64            # the μP base; delta is 2× base unless given
    delta_width: int | None = None
    steps: int = 200
    batch: int = 16                 # sequences per optimizer step, over all processes
    micro_batch: int | None = None  # sequences per forward in each process (gradient accumulation; default: all)
    lr: float = 3e-3                # matrices (Muon's LR under "muon")
    adam_lr: float | None = None    # AdamW groups under "muon" (default: lr)
    weight_decay: float = 0.1
    mult_lr: float | None = None    # learnable multipliers (default: the AdamW LR)
    mult_wd: float = 2e-3
    placement: str | None = None    # lrm only: all / symmetry-free / scalar
    alphas: dict[str, float] = field(default_factory=dict)
    init_std: float = 1.0
    warmup: int | None = None       # default: 10% of steps
    schedule: str = "cosine"
    clip: float = 1.0
    seed: int = 0
    eval_every: int = 50
    eval_batches: int = 8
    data: str | None = None         # None: the Shakespeare corpus
    device: str = "auto"
    compile: bool | None = None     # default: on CUDA only
    path: str = "autograd"          # or "effective": train through merged matrices
    parallel: str = "ddp"           # under torchrun: DDP replicas, or "fsdp" shards

    def __post_init__(self):
        def bad(name, allowed):
            raise ConfigError(f"{name}={getattr(self, name)!r} is invalid: {allowed}")

        choices = {"recipe": RECIPES, "optimizer": OPTIMIZERS, "model": MODELS, "schedule": SCHEDULES,
                   "device": DEVICES, "path": PATHS, "parallel": distributed.PARALLEL}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                bad(name, "allowed: " + ", ".join(allowed))
        if self.placement is not None:
            if self.recipe != "lrm":
                bad("placement", f"placement applies to recipe 'lrm' only, not {self.recipe!r}")
            if self.placement not in PLACEMENTS:
                bad("placement", "allowed: " + ", ".join(PLACEMENTS))
        for name in ("width", "depth", "context", "base_width", "steps", "batch", "eval_every", "eval_batches"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
                bad(name, "must be a positive integer")
        if self.micro_batch is not None and not (isinstance(self.micro_batch, int) and 0 < self.micro_batch
                                                 and self.batch % self.micro_batch == 0):
            bad("micro_batch", f"must be a positive integer dividing batch={self.batch}")
        if self.parallel == "fsdp" and self.path == "effective":
            bad("path", "the effective path's merged matrices cannot be FSDP-sharded; "
                        "use path autograd, or parallel ddp")
        if self.parallel == "fsdp" and self.optimizer == "muon":
            bad("optimizer", "Muon's Newton-Schulz needs whole matrices, not FSDP shards; use parallel ddp")
        if self.delta_width is not None and self.delta_width == self.base_width:
            bad("delta_width", "must differ from base_width")
        for name in ("lr", "weight_decay", "mult_wd", "clip", "adam_lr", "mult_lr", "init_std"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                bad(name, "must be a finite number >= 0")
        if self.lr == 0 or self.init_std == 0:
            bad("lr" if self.lr == 0 else "init_std", "must be > 0")
        if self.warmup is not None and not (isinstance(self.warmup, int) and 0 <= self.warmup <= self.steps):
            bad("warmup", f"must be an integer in [0, steps={self.steps}]")
        if self.device == "cuda" and not torch.cuda.is_available():
            bad("device", "CUDA is not available on this machine; use --device cpu or auto")
        for width in (self.width, self.base_width, self.delta_or_default):
            self.model_config(width)  # width vs heads/head_dim and the rest, checked by the model's own config

    @property
    def delta_or_default(self) -> int:
        return self.delta_width if self.delta_width is not None else 2 * self.base_width

    @property
    def warmup_steps(self) -> int:
        return self.warmup if self.warmup is not None else self.steps // 10

    def model_config(self, width: int) -> dict:
        kw = {"depth": self.depth, "head_dim": self.head_dim, "heads": self.heads, "context": self.context,
              "init_std": self.init_std}
        GPTConfig(width=width, **kw)
        return kw

    def build(self, width: int) -> torch.nn.Module:
        return MODELS[self.model](width, **self.model_config(width))

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


@dataclass
class Run:
    """Everything a training run holds; `train` drives it, tests and sweeps may step it themselves."""

    cfg: TrainConfig
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    corpus: data_mod.Corpus
    generator: torch.Generator
    device: torch.device
    step: int = 0
    path: EffectivePath | None = None
    world: distributed.World = distributed.SINGLE
    wrapped: torch.nn.Module | None = None  # what the training forward runs through: DDP(model), or the model

    @classmethod
    def create(cls, cfg: TrainConfig, corpus: data_mod.Corpus | None = None, progress: bool = True,
               world: distributed.World = distributed.SINGLE) -> Run:
        if corpus is None:
            corpus = distributed.main_first(lambda: data_mod.load_corpus(cfg.data, progress=progress and world.main),
                                            world)
        device = world.device(cfg.device)
        torch.manual_seed(cfg.seed)
        model = cfg.build(cfg.width)
        with torch.device("meta"):  # base and delta only lend their shapes
            shapes = base_shapes(cfg.build(cfg.base_width), cfg.build(cfg.delta_or_default))
        parametrize(model, shapes, recipe=cfg.recipe, optimizer=cfg.optimizer, placement=cfg.placement,
                    alphas=cfg.alphas or None)
        model.to(device)
        wrapped = distributed.wrap(model, world, cfg.parallel, device, ddp=cfg.path == "autograd")
        opt = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, adam_lr=cfg.adam_lr,
                              mult_lr=cfg.mult_lr, mult_wd=cfg.mult_wd)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
        gen = torch.Generator().manual_seed(cfg.seed)
        path = EffectivePath(model) if cfg.path == "effective" else None
        return cls(cfg, model, opt, sched, corpus, gen, device, 0, path, world, wrapped)

    @property
    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def train_step(self, forward) -> tuple[float, float]:
        """One optimizer step; returns (loss averaged over the ranks, gradient norm without multipliers)."""
        x, y = self.corpus.batch("train", self.cfg.batch, self.cfg.context, self.generator)
        rows = self.world.rows(self.cfg.batch)  # every rank draws the global batch and keeps its own rows
        x, y = x[rows], y[rows]
        micro = self.cfg.micro_batch or len(x)
        starts = range(0, len(x), micro)
        self.optimizer.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=self.device)
        for start in starts:
            # DDP all-reduces once, after the last micro-batch; every micro-batch's loss is its mean over equal rows
            last = start == starts[-1]
            with self.wrapped.no_sync() if isinstance(self.wrapped, DDP) and not last else contextlib.nullcontext():
                with self.autocast:
                    _, part = forward(x[start:start + micro].to(self.device), y[start:start + micro].to(self.device))
                (part / len(starts)).backward()
            loss += part.detach() / len(starts)
        if self.path is not None:
            self.path.map_grads()
            distributed.average_gradients(self.model, self.world)
        norm = clip_grad_norm_(self.model, self.cfg.clip) if self.cfg.clip > 0 else torch.tensor(float("nan"))
        self.optimizer.step()
        self.scheduler.step()
        if self.path is not None:
            self.path.refresh()
        self.step += 1
        (loss_sum,) = distributed.sum_floats([loss.item()], self.world, self.device)
        return loss_sum / self.world.size, norm.item()

    @torch.no_grad()
    def evaluate(self, forward) -> float:
        """Validation bits per byte (tokens are bytes) on a fixed set of validation windows (split over the ranks)."""
        total, count = 0.0, 0
        for x, y in self.corpus.val_batches(self.cfg.batch, self.cfg.context, self.cfg.eval_batches):
            rows = self.world.rows(len(x))
            mine = rows.stop > rows.start
            x, y = (x[rows], y[rows]) if mine else (x[:1], y[:1])  # every rank runs every forward (FSDP gathers)
            with self.autocast:
                _, loss = forward(x.to(self.device), y.to(self.device))
            total += loss.item() * x.numel() * mine
            count += x.numel() * mine
        total, count = distributed.sum_floats([total, count], self.world, self.device)
        return total / count / math.log(2)

    def state_dict(self) -> dict:
        """Whole tensors on the CPU, model and optimizer state keyed by parameter name: one format for one process,
        DDP and FSDP at any world size. Every rank calls it (FSDP gathers the shards); rank 0 holds the result."""
        model, optimizer = get_state_dict(self.model, self.optimizer, options=FULL_STATE)
        return {"model": model, "optimizer": optimizer, "scheduler": self.scheduler.state_dict(), "step": self.step,
                "data_rng": self.generator.get_state(), "torch_rng": torch.get_rng_state(), "config": asdict(self.cfg)}

    def load_state_dict(self, state: dict) -> None:
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                       options=StateDictOptions(full_state_dict=True))
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["data_rng"])
        torch.set_rng_state(state["torch_rng"])
        self.step = state["step"]
        if self.path is not None:
            self.path.refresh()


TrainResult = RunResult  # the name earlier releases used


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def train(cfg: TrainConfig, out: str | os.PathLike | None = None, *, resume: bool = False, until: int | None = None,
          progress: bool = True, corpus: data_mod.Corpus | None = None) -> TrainResult:
    """Train under `cfg`, writing the run folder `out` (if given). `resume` continues from `out/checkpoint.pt`;
    `until` stops after that step with a checkpoint (a time-sliced job resumes later). Under torchrun every rank calls
    this with the same arguments (see the module doc); each gets the same result."""
    out = Path(out) if out is not None else None
    world = distributed.setup()
    if cfg.batch % world.size:
        raise ConfigError(f"batch={cfg.batch} is invalid: the global batch must split evenly over the "
                          f"{world.size} processes")
    if cfg.micro_batch and (cfg.batch // world.size) % cfg.micro_batch:
        raise ConfigError(f"micro_batch={cfg.micro_batch} is invalid: it must divide the {cfg.batch // world.size} "
                          f"sequences each of the {world.size} processes gets of batch={cfg.batch}")
    if resume:
        distributed.on_main(lambda: _check_resume(cfg, out), world)
    run = Run.create(cfg, corpus, progress=progress, world=world)
    if resume:  # on the CPU first: a CUDA checkpoint would otherwise land on GPU 0 of every rank
        run.load_state_dict(torch.load(out / "checkpoint.pt", weights_only=True, map_location="cpu", mmap=True))
    elif out is not None:
        distributed.on_main(lambda: _prepare_out(out, cfg, run), world)
    compile_ = cfg.compile if cfg.compile is not None else run.device.type == "cuda"
    forward = torch.compile(run.wrapped) if compile_ else run.wrapped
    evaluate_forward = forward if run.wrapped is run.model else (torch.compile(run.model) if compile_ else run.model)
    tokens_per_step = cfg.batch * cfg.context
    flops_per_token = run.model.flops_per_token() if hasattr(run.model, "flops_per_token") else 0.0
    last = until if until is not None else cfg.steps
    metrics = open(out / "metrics.jsonl", "a") if out is not None and world.main else None
    start, loss, val, status = time.perf_counter(), float("nan"), float("nan"), "ok"
    first_step = run.step
    bar = tqdm(total=last, initial=run.step, disable=not (progress and world.main), desc=f"{cfg.recipe} w{cfg.width}",
               unit="step")
    try:
        while run.step < last:
            loss, norm = run.train_step(forward)
            tokens = run.step * tokens_per_step
            row = {"step": run.step, "loss": loss, "grad_norm": norm, "lr": run.optimizer.param_groups[0]["lr"],
                   "tokens": tokens, "flops": tokens * flops_per_token,
                   "tokens_per_s": tokens_per_step * (run.step - first_step) / (time.perf_counter() - start)}
            if not math.isfinite(loss):
                status = "diverged"
                _log(metrics, row)
                break
            evaluate = run.step % cfg.eval_every == 0 or run.step == cfg.steps
            if evaluate:
                val = run.evaluate(evaluate_forward)
                row["val_bpb"] = val
            _log(metrics, row)
            if evaluate and out is not None and run.step < last:
                _save(run, out / "checkpoint.pt")
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", val=f"{val:.3f}")
    finally:
        bar.close()
    if status == "ok" and run.step < cfg.steps:
        status = "stopped"
    if status != "diverged" and not math.isfinite(val):
        val = run.evaluate(evaluate_forward)
    result = TrainResult(status, run.step, loss, val, run.step * tokens_per_step,
                         run.step * tokens_per_step * flops_per_token, time.perf_counter() - start)
    if metrics is not None:
        _log(metrics, {"status": status, **asdict(result)})
        metrics.close()
    if out is not None and status != "diverged":
        _save(run, out / "checkpoint.pt")
    distributed.barrier(world)  # every rank returns with the run folder complete
    return result


def _save(run: Run, path: Path) -> None:
    """Every rank gathers the state (a collective under FSDP); rank 0 writes it."""
    state = run.state_dict()
    if run.world.main:
        _write_atomic(path, lambda p: torch.save(state, p))


def _log(metrics, row: dict) -> None:
    if metrics is not None:
        metrics.write(json.dumps(row) + "\n")
        metrics.flush()


def _prepare_out(out: Path, cfg: TrainConfig, run: Run) -> None:
    """Create the run folder complete or not at all: written in a temporary sibling, then renamed."""
    if out.exists() and any(out.iterdir()):
        raise RunFolderError(f"run folder {str(out)!r} is not empty: pass --resume to continue it, or another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
        spec = run.model.lrm_spec
        (tmp / "base_shapes.json").write_text(json.dumps({"head_dim": spec["base_head_dim"],
                                                          "shapes": spec["base_shapes"]}, indent=1))
        (tmp / "metrics.jsonl").touch()
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_resume(cfg: TrainConfig, out: Path | None) -> None:
    """The checkpoint exists and holds `cfg`; metrics rows after it are dropped."""
    if out is None or not (out / "checkpoint.pt").exists():
        raise MissingError(f"nothing to resume: no checkpoint.pt in {str(out)!r}")
    state = torch.load(out / "checkpoint.pt", weights_only=True, mmap=True)  # the config only: nothing is read in
    diff = TrainConfig.from_dict(state["config"]).differences(cfg)
    if diff:
        raise ConfigError(f"config differs from the checkpoint's in {', '.join(diff)}; resume with the same config "
                          f"(only {', '.join(EXECUTION)} may change)")
    # metrics written after the checkpoint (a crash between checkpoints) are replayed by the resumed run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    kept = [r for r in rows if "status" not in r and r["step"] <= state["step"]]
    _write_atomic(out / "metrics.jsonl", lambda p: p.write_text("".join(json.dumps(r) + "\n" for r in kept)))
