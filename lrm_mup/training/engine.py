"""The training engine: a `Run` (model, optimizer, schedule, data order, device, process group) and THE step loop.

    run = Run.create(cfg)
    for record in run.steps():          # one StepRecord per optimizer step
        ...                             # log it, checkpoint, report it, stop early (break)
    result = run.result(val_bpb, seconds)

Everything about a run is computed here, once: the model (`parametrized_model`), the compile default (on CUDA only),
the tokens of a step (`batch × context`, the global batch), the model FLOPs (`tokens × model.flops_per_token()`),
when it evaluates (every `eval_every` steps and at the last step), divergence (a non-finite train loss: the loop
yields that step's record and ends) and how it ended (`status`). `train` (the run folder), every sweep trial (several
seeds in `lockstep`), `transfer` (through `train`) and the benchmarks drive this loop; none has its own.

Under `torchrun` every rank runs the same loop on its rows of the global batch (`lrm_mup.training.distributed`):
the model is wrapped in DDP (the effective path averages its mapped gradients itself) or sharded by FSDP, and the
losses and validation it reports are averages over all ranks.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel as DDP

from .. import data as data_mod
from ..core.multipliers import EffectivePath, multiplied_modules, multiplier_parameters
from ..core.optim import build_optimizer, clip_grad_norm_
from ..errors import ConfigError
from ..models import flops_per_token, logits_of
from ..records import RunResult, StepRecord
from . import distributed
from .build import parametrized_model
from .config import TrainConfig, lr_factor

FULL_STATE = StateDictOptions(full_state_dict=True, cpu_offload=True)
Forward = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def lm_forward(model: torch.nn.Module) -> Forward:
    """`(x, y) -> (logits, mean next-token cross-entropy in nats)` through `model(x)`, whatever the model returns
    (a tensor, a tuple, an HF output object: `lrm_mup.models.logits_of`): the one loss of training and validation."""
    def forward(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = logits_of(model(x))
        return logits, F.cross_entropy(logits.flatten(0, 1), y.flatten())
    return forward


def _forward_or(forward: Forward | torch.nn.Module | None, default: Forward) -> Forward:
    """`forward` as a Forward: `default` when None, a module through `lm_forward`, a Forward as it is."""
    if forward is None:
        return default
    return lm_forward(forward) if isinstance(forward, torch.nn.Module) else forward


def diverged(record: StepRecord) -> bool:
    """A step diverged when its train loss is not finite (NaN or ±inf): the engine's one divergence rule."""
    return not math.isfinite(record.loss)


def training_path(cfg: TrainConfig, model: torch.nn.Module, world: distributed.World, compiled: bool = False) -> str:
    """The path a run trains on: `cfg.path`, or for "auto" (the default) the faster one where both apply:

    - "effective" for a model with learnable multipliers (recipe lrm) in one process: its merged matrices are built
      once per optimizer step and its gradient mapping runs once after all micro-batches, where the reparametrized
      forward rebuilds W = a·r⊙W̃⊙c and differentiates through it in every micro-batch;
    - "autograd" without learnable multipliers (mup, sp: nothing to map, the fixed multiplier is one product),
      under FSDP (merged matrices cannot be sharded) and under DDP (DDP overlaps its gradient all-reduce with the
      backward; the effective path all-reduces after it, at the end of the step), and under torch.compile
      (`compiled`; on CUDA by default): the rule's measurement is of eager steps on CPU, and a compiled
      reparametrized forward is one graph the compiler may fuse, so there the known path is kept until measured.

    The measurement behind the rule: benchmarks/bench_overhead.py, benchmarks/RESULTS.md "Issue 15"."""
    if cfg.path != "auto":
        return cfg.path
    if not multiplier_parameters(model) or world.size > 1 or compiled:
        return "autograd"
    return "effective"


def check_world(cfg: TrainConfig, world: distributed.World) -> None:
    """`batch` is the global batch: it must split evenly over the processes, and each share over the micro-batches."""
    if cfg.batch % world.size:
        raise ConfigError(f"batch={cfg.batch} is invalid: the global batch must split evenly over the "
                          f"{world.size} processes")
    if cfg.micro_batch and (cfg.batch // world.size) % cfg.micro_batch:
        raise ConfigError(f"micro_batch={cfg.micro_batch} is invalid: it must divide the {cfg.batch // world.size} "
                          f"sequences each of the {world.size} processes gets of batch={cfg.batch}")


@dataclass
class Run:
    """Everything a training run holds. `steps()` is its loop; `train` drives it into a run folder, a sweep trial
    drives several in `lockstep`; tests may call `train_step` / `evaluate` themselves."""

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
    forward: Forward | None = None          # the training forward: `wrapped`, compiled where compiling is on
    eval_forward: Forward | None = None     # the validation forward: the model itself (no DDP), compiled alike
    last: StepRecord | None = None          # the record of the last step `steps()` took in this process

    @classmethod
    def create(cls, cfg: TrainConfig, corpus: data_mod.Corpus | None = None, progress: bool = True,
               world: distributed.World = distributed.SINGLE) -> Run:
        check_world(cfg, world)
        if corpus is None:
            corpus = distributed.main_first(lambda: data_mod.load_corpus(cfg.data, progress=progress and world.main,
                                                                         tokenizer=cfg.tokenizer), world)
        corpus.check_context(cfg.context)  # a context the data cannot fill: said before anything is built or written
        device = world.device(cfg.device)
        model = parametrized_model(cfg, device=device)
        compile_ = cfg.compile if cfg.compile is not None else device.type == "cuda"  # the one compile default
        path_name = training_path(cfg, model, world, compiled=compile_)
        wrapped = distributed.wrap(model, world, cfg.parallel, device, ddp=path_name == "autograd")
        opt = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, adam_lr=cfg.adam_lr,
                              mult_lr=cfg.mult_lr, mult_wd=cfg.mult_wd)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
        gen = torch.Generator().manual_seed(cfg.seed)
        path = EffectivePath(model) if path_name == "effective" else None
        if corpus.vocab != cfg.vocab:
            raise ConfigError(f"the corpus has a vocabulary of {corpus.vocab} tokens (tokenizer {corpus.tokenizer!r}),"
                              f" the config {cfg.vocab} (tokenizer {cfg.tokenizer!r}): load the corpus with the "
                              "config's tokenizer")
        forward = torch.compile(wrapped) if compile_ else wrapped
        eval_forward = forward if wrapped is model else (torch.compile(model) if compile_ else model)
        return cls(cfg, model, opt, sched, corpus, gen, device, 0, path, world, wrapped, lm_forward(forward),
                   lm_forward(eval_forward))

    # what a run has done: computed here only -----------------------------------------------------------------

    @property
    def tokens_per_step(self) -> int:
        """Tokens of one optimizer step over all processes: the global batch of `context`-long sequences."""
        return self.cfg.batch * self.cfg.context

    @property
    def flops_per_token(self) -> float:
        """Model training FLOPs per token (forward and backward): `lrm_mup.models.flops_per_token` (the model's own
        count, or one from an HF config; 0 if unknown)."""
        return flops_per_token(self.model, self.cfg.context)

    @property
    def tokens(self) -> int:
        return self.step * self.tokens_per_step

    @property
    def flops(self) -> float:
        return self.tokens * self.flops_per_token

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def evaluates_at(self, step: int) -> bool:
        return step % self.cfg.eval_every == 0 or step == self.cfg.steps

    @property
    def status(self) -> str:
        """"diverged" (the last step's loss is not finite), "ok" (all `cfg.steps` done) or "stopped" (resumable)."""
        if self.last is not None and diverged(self.last):
            return "diverged"
        return "ok" if self.step >= self.cfg.steps else "stopped"

    def result(self, val_bpb: float, seconds: float) -> RunResult:
        """How the run stands: its status, step, last train loss, the given validation, tokens, FLOPs, seconds."""
        loss = self.last.loss if self.last is not None else math.nan
        return RunResult(self.status, self.step, loss, val_bpb, self.tokens, self.flops, seconds)

    # the loop --------------------------------------------------------------------------------------------------

    def steps(self, until: int | None = None, *, evaluate: bool = True) -> Iterator[StepRecord]:
        """Train from the current step to step `until` (default `cfg.steps`), yielding each step's record.
        `evaluate`: validation at the steps `evaluates_at` names (its `val_bpb`, and the parameters' RMS `norms`;
        else None). A diverged step (see
        `diverged`) is yielded, unevaluated, and ends the loop. Throughput counts from the first step of this call."""
        last = self.cfg.steps if until is None else until
        start, first = time.perf_counter(), self.step
        while self.step < last:
            loss, norm = self.train_step()
            rate = self.tokens_per_step * (self.step - first) / (time.perf_counter() - start)
            val = self.evaluate() if evaluate and math.isfinite(loss) and self.evaluates_at(self.step) else None
            norms = self.norms() if val is not None else None  # at the eval interval only: off the step's hot path
            self.last = StepRecord(self.step, loss, norm, self.lr, self.tokens, self.flops, rate, val, norms)
            yield self.last
            if diverged(self.last):
                return

    @property
    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def train_step(self, forward: Forward | None = None) -> tuple[float, float]:
        """One optimizer step (through `forward`, default the run's: a module is called as `lm_forward(module)`);
        returns (loss averaged over the ranks, gradient norm without multipliers)."""
        forward = _forward_or(forward, self.forward)
        if self.path is not None:
            self.path.sync()  # the merged matrices see any edit of the weights made since the last step
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
    def evaluate(self, forward: Forward | None = None) -> float:
        """Validation bits per byte on a fixed set of validation windows (split over the ranks), through `forward`
        (default the run's; a module is called as `lm_forward(module)`): the mean loss in nats per token, converted
        with the validation split's tokens per byte (`Corpus.bits_per_byte`; tokens are bytes by default)."""
        forward = _forward_or(forward, self.eval_forward)
        if self.path is not None:
            self.path.sync()
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
        return self.corpus.bits_per_byte(total / count)

    @torch.no_grad()
    def norms(self) -> dict[str, float]:
        """RMS of every stored matrix W̃ (`NAME.weight`, tied ones once) and every learnable multiplier
        (`NAME.mult_row`, ...), by parameter name: what the noise–WD equilibrium is about (`lrm-mup equilibrium`).
        One reduction per tensor, no copy; reads no RNG, so it changes nothing a resume replays. Every rank calls it
        (FSDP shards are summed over the ranks); each gets the same numbers."""
        named = [(f"{n}.weight", m.weight) for n, m in multiplied_modules(self.model) if not m.parametrization.tied]
        named += multiplier_parameters(self.model)
        local = [p.to_local() if isinstance(p, DTensor) else p for _, p in named]
        sums = torch.stack([t.detach().float().pow(2).sum() for t in local]).tolist() if named else []
        if any(isinstance(p, DTensor) for _, p in named):
            sums = distributed.sum_floats(sums, self.world, self.device)
        return {n: math.sqrt(s / p.numel()) for (n, p), s in zip(named, sums)}

    # state -----------------------------------------------------------------------------------------------------

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


def lockstep(runs: Sequence[Run], until: int | None = None, *, evaluate: bool = True
             ) -> Iterator[tuple[StepRecord, ...]]:
    """Step several runs together (a sweep trial's seeds): at every step each run takes its step, in order, then
    their records are yielded as a tuple. Ends at `until` (default each run's `cfg.steps`), or after the step at which
    any run diverged (every run has taken that step). Each run steps exactly as it would alone: runs share nothing
    but the global torch generator, which training does not draw from."""
    for records in zip(*(run.steps(until, evaluate=evaluate) for run in runs)):
        yield records
        if any(diverged(r) for r in records):
            return
