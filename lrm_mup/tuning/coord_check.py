"""Coordinate checks across widths, with numeric verdicts (what `lrm-mup coord-check` runs).

mup's coordinate check plots mean |activation| per module for three steps and leaves the verdict to the eye; it is
blind to what SDPA hides (attention logits), to updates and to multipliers, and users report flat pictures followed by
failed transfers. This one trains every recipe for `steps` steps at several widths (same seeds, same batch) and
records at each step t (t=0 is the init, before any update), per module:

    act   mean |output| of every nn.Linear / nn.Embedding / norm layer and of every block (the residual stream),
          plus the attention logits q·kᵀ·scale (causal part, read from the model's q_probe / k_probe), the logits,
          and an SSM mixer's x, B, C, dt (after softplus) and scan output y (its `ssm_probes`)
    dw    relative update ‖ΔW‖/‖W‖ of each effective matrix; spectral norm for hidden matrices (μP's condition is a
          width-independent ‖ΔW‖₂/‖W‖₂; the Frobenius ratio of a low-rank update to a random matrix shrinks like
          width^-1/2 even under μP), Frobenius for matrices with a fixed dimension (embedding, readout), where both
          norms follow the same width law but the spectral norm of a vocab × width matrix (≈ √width + √vocab) is
          far from its asymptote at small widths. Caveat: where widening adds attention heads, the query/key update
          is made of more per-head pieces, its stable rank grows and its spectral ratio drifts slightly negative at
          small widths (measured under μP: slope ≈ -0.2 at widths 32..256, ≈ -0.1 at 64..512). An SSM's dt
          segment (models/hybrid.py) is this at its extreme, one row per SSM head: its spectral ratio's slope is
          -1/2 × the growth exponent of the update's stable rank, between -1/2 and μP's 0 (measured ≈ -0.15 per
          doubling at 16..64 heads), judged against 0 with no exception (README, "SSM notes")
    dy    ‖ΔW·x‖/‖W·x‖: the change of each matrix's output caused by its own update, on the measurement batch
    mult  mean |value| of each learnable multiplier (recipe lrm)
    dact  (the check across depth, `depth_coord_check`) mean |x_t - x_0| of the residual stream leaving the last
          block: how far training has moved it

The verdict (`lrm_mup.analysis`: `slopes`, `judge`, `slope_band`, `CoordCheckResult`; this module only measures)
fits, for every series (recipe, module, quantity) and step, the slope of log2(seed-mean value) against
log2(width) by least squares, with a confidence band from the per-seed values (`lrm_mup.analysis.slope_band`).
A series is judged twice: at the init (t=0, where μP's readout and attention scaling show) and by its MEAN slope
over the last `last_steps` steps (the training dynamics; the mean, because step-to-step jitter of a fit is noise
while a sustained drift is not, and one blown-up step still moves the mean by its share). The steps in between are
the transient in which μP's vanishing initial logits give way to learned ones (the readout's relative update is
~ width^1/2 at t=1): plotted, not judged. A series passes when the bands of both slopes lie within `threshold` of
the expected slope, which is 0 except for the declared exceptions in `EXPECTED`; it fails when a band lies wholly
outside, and is inconclusive when a band straddles the limit (more seeds or widths decide it). A recipe fails if
any series fails, else is inconclusive if any series is, else passes. A step where a
quantity is zero at every width (updates at t=0) is skipped with a note.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from collections import defaultdict
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import analysis
from .._threads import choose_threads, choose_workers, parse_workers
from ..analysis import EXPECTED, LOGITS, QUANTITIES, Expected, Verdict
from ..core import depth as depth_mod
from ..core.multipliers import multiplied_modules
from ..core.optim import build_optimizer, clip_grad_norm_
from ..core.recipes import RECIPES, parametrize
from ..core.roles import HIDDEN
from ..core.shapes import base_shapes
from ..data import Corpus, load_corpus
from ..errors import CoordCheckError
from ..models import logits_of
from ..models.hf import attention_probe
from ..training.threads import threads_argument
from ._cells import run_cells

__all__ = ["coord_check", "depth_coord_check", "CoordCheckResult", "Verdict", "Expected", "EXPECTED", "QUANTITIES",
           "LOGITS", "DEFAULT_WIDTHS", "DEFAULT_BASE_WIDTH", "DEFAULT_DELTA_WIDTH", "DEFAULT_PROXY", "FRESH_BATCHES"]

# What `lrm-mup coord-check` runs by default (benchmarks/bench_coord_check.py times it: < 2 min on 2 CPU cores):
# the proxy at these widths with these GPTConfig fields (its context set to the check's), and coord_check's defaults.
DEFAULT_WIDTHS = (64, 128, 256, 512)
DEFAULT_BASE_WIDTH, DEFAULT_DELTA_WIDTH = 64, 128
DEFAULT_PROXY = {"depth": 2, "head_dim": 32}
# The default batch mode, chosen from a measurement (benchmarks/RESULTS.md, "issue 12: verdicts with their
# uncertainty"): train on a fresh batch each step. On one fixed batch wider models memorise it faster, a bias that
# grows with the step and that no number of seeds removes: with 10 seeds at widths 64..256 (batch 16) lrm's
# embedding dy sits at +0.23, band [+0.19, +0.27], and at batch 8 dy of attn.o at -0.18 [-0.20, -0.16] in every
# μP recipe. Fresh batches leave no such drift (10 seeds: every μP centre within ±0.17); their larger seed-to-seed
# scatter is noise, which the band counts and more seeds remove. The cost: one extra forward per step.
FRESH_BATCHES = True


@threads_argument  # threads=N for the call (default: the caller's, or $LRM_MUP_THREADS)
def coord_check(
    build: Callable[[int], nn.Module],
    widths: Sequence[int],
    *,
    base_width: int,
    delta_width: int,
    recipes: Sequence[str] = ("sp", "lr-only", "mup", "lrm"),
    steps: int = 10,
    seeds: int = 3,
    seed_base: int = 0,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    optimizer: str = "adamw",
    corpus: Corpus | None = None,
    batch_size: int = 16,
    context: int = 32,
    fresh_batches: bool = FRESH_BATCHES,
    threshold: float = 0.2,
    last_steps: int = 5,
    level: float = analysis.VERDICT_LEVEL,
    progress: bool = True,
    workers: int | str = 1,
) -> "CoordCheckResult":
    """Train `build(width)` under each recipe for `steps` steps at every width and seed, and judge the records.

    build: the user's constructor; the model maps token ids (B, T) to logits, or to a tuple whose first element is
      the logits (the loss is always cross-entropy on the corpus' next bytes, computed here).
    base_width / delta_width: the widths `parametrize` infers μP's base shapes from.
    corpus: a `lrm_mup.data.Corpus` (default: the Shakespeare corpus). With fresh_batches=True (the default,
      `FRESH_BATCHES`) each step trains on a new batch and the measurements stay on one fixed batch per seed (so
      that Δy compares like with like); with False that fixed batch is also the training batch.
    seeds / seed_base: the seeds seed_base, …, seed_base + seeds − 1 (each seeds the init and the batches); another
      seed_base gives an independent repetition of the check.
    threshold / last_steps / level: a series passes when the `level` confidence band of its slope lies within
      `threshold` of the expected one at t=0 and on average over the last `last_steps` steps, fails when it lies
      outside and is inconclusive when it straddles the limit (module docstring, `lrm_mup.analysis.judge`).
    weight_decay: 0 by default, as in mup's check; recipe lr-wd differs from lr-only only through it.
    workers: the runs (recipe × width × seed) are independent: with workers > 1 they run in that many forked
      processes (`lrm_mup.tuning._cells`), each at $LRM_MUP_THREADS threads (set by `threads=`) or the thread rule's
      count for that many processes, said on stderr with `progress`; "auto": one per free core, more under load
      (`lrm_mup._threads.workers_for_load`). The records are those of one process at the same threads. Linux only;
      1 (the default) runs here, in this process.
    """
    widths = _check_settings("width", widths, recipes, steps, seeds, lr, weight_decay, batch_size, context,
                             threshold, last_steps, level, seed_base)
    parse_workers(workers, "workers")
    corpus = corpus if corpus is not None else load_corpus(None, progress=progress)
    corpus.check_context(context)
    shapes = base_shapes(build(base_width), build(delta_width))
    runs = [(r, w, s) for r in recipes for w in widths for s in range(seed_base, seed_base + seeds)]

    def run(cell):
        recipe, width, seed = cell
        gen = torch.Generator().manual_seed(seed)
        batches = [corpus.batch("train", batch_size, context, gen) for _ in range(1 + steps * fresh_batches)]
        with torch.random.fork_rng():  # same init for every recipe, and the caller's RNG left alone
            torch.manual_seed(seed)
            model = parametrize(build(width), shapes, recipe=recipe, optimizer=optimizer)
        opt = build_optimizer(model, optimizer, lr=lr, weight_decay=weight_decay)
        rows, head_dim = _train_and_record(model, opt, batches, steps)
        roles = {name: m.parametrization.role for name, m in multiplied_modules(model)}
        return [{"recipe": recipe, "width": width, "seed": seed, **row} for row in rows], head_dim, roles

    records, head_dims, roles = [], {}, {}
    done = _run_all(run, runs, workers, progress, "width", cost=lambda cell: cell[1] ** 2)  # a step ~ width²
    for (_, width, _), (rows, head_dim, run_roles) in zip(runs, done):
        records += rows
        head_dims[width] = head_dim
        roles.update(run_roles)
    config = {"widths": widths, "base_width": base_width, "delta_width": delta_width, "recipes": list(recipes),
              "steps": steps, "seeds": seeds, "seed_base": seed_base, "lr": lr, "weight_decay": weight_decay,
              "optimizer": optimizer, "corpus": corpus.name, "batch_size": batch_size, "context": context,
              "fresh_batches": fresh_batches, "threshold": threshold, "last_steps": last_steps, "level": level,
              "head_dims": head_dims, "roles": roles, "mup_readout": mup_readout(recipes)}
    return CoordCheckResult(config, records)


def _check_settings(axis, values, recipes, steps, seeds, lr, weight_decay, batch_size, context, threshold,
                    last_steps, level=analysis.VERDICT_LEVEL, seed_base=0) -> list[int]:
    """The arguments both checks share, validated (one line each); returns the axis values sorted, deduplicated."""
    for name, value in (("lr", lr), ("threshold", threshold)):
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
            raise CoordCheckError(f"{name}={value!r} is invalid: it must be a positive finite number")
    if not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay) and weight_decay >= 0):
        raise CoordCheckError(f"weight_decay={weight_decay!r} is invalid: it must be a finite number >= 0")
    if not (isinstance(level, float) and 0 < level < 1):
        raise CoordCheckError(f"level={level!r} is invalid: a confidence level strictly between 0 and 1")
    if not (isinstance(seed_base, int) and not isinstance(seed_base, bool) and seed_base >= 0):
        raise CoordCheckError(f"seed_base={seed_base!r} is invalid: it must be an integer >= 0")
    for name, value in (("steps", steps), ("seeds", seeds), ("batch_size", batch_size), ("context", context)):
        if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise CoordCheckError(f"{name}={value!r} is invalid: it must be a positive integer")
    values = sorted(set(values))
    if len(values) < 2:
        raise CoordCheckError(f"{axis}s {values}: a slope needs at least two {axis}s")
    if not 1 <= last_steps <= steps:
        raise CoordCheckError(f"last_steps={last_steps} must be between 1 and steps={steps}")
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise CoordCheckError(f"unknown recipe {unknown[0]!r}; allowed: {', '.join(RECIPES)}")
    return values


# ----------------------------------------------------------------------------------------------------------
# The same check across depth


@threads_argument
def depth_coord_check(
    build: Callable[[int, int], nn.Module],
    depths: Sequence[int],
    *,
    width: int,
    base_depth: int,
    depth_rule: str,
    delta_width: int | None = None,
    recipes: Sequence[str] = ("sp", "mup", "lrm"),
    steps: int = 10,
    seeds: int = 3,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    optimizer: str = "adamw",
    corpus: Corpus | None = None,
    batch_size: int = 16,
    context: int = 32,
    fresh_batches: bool = FRESH_BATCHES,
    threshold: float = 0.2,
    last_steps: int = 5,
    progress: bool = True,
    workers: int | str = 1,
) -> "CoordCheckResult":
    """`coord_check` with depth as the axis: `build(width, depth)` at one `width` and several `depths`, each under
    `depth_rule` (`lrm_mup.core.depth`) against `base_depth`, judged by the slope of log2 value against log2 depth.

    The width is the μP base width (delta: `delta_width`, default 2 × width), so the width recipes differ only by
    their width-independent parts and depth is the only thing that moves. Blocks are compared by position: the last
    block's modules (and its output, the residual stream the final norm reads) are named `<blocks>.last...`; the
    other blocks are not kept (their number differs between depths). Declared exceptions are the rule's own
    (`analysis.depth_expected`): the branch outputs carry (L_base/L)^α, and under "sqrt" the block updates shrink as
    (L/L_base)^-1/2 with their LR. Under "none", theory says the residual stream (`<blocks>.last`) grows with
    depth: like √L at init, and its change under Adam like L; that is the series the rule exists to flatten."""
    depth_mod.check_rule(depth_rule)
    depths = _check_settings("depth", depths, recipes, steps, seeds, lr, weight_decay, batch_size, context,
                             threshold, last_steps)
    parse_workers(workers, "workers")
    if not (isinstance(base_depth, int) and base_depth > 0):
        raise CoordCheckError(f"base_depth={base_depth!r} is invalid: it must be a positive integer")
    corpus = corpus if corpus is not None else load_corpus(None, progress=progress)
    corpus.check_context(context)
    delta_width = 2 * width if delta_width is None else delta_width
    shapes = base_shapes(build(width, base_depth), build(delta_width, base_depth))
    runs = [(r, d, s) for r in recipes for d in depths for s in range(seeds)]

    def run(cell):
        recipe, depth, seed = cell
        gen = torch.Generator().manual_seed(seed)
        batches = [corpus.batch("train", batch_size, context, gen) for _ in range(1 + steps * fresh_batches)]
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = parametrize(build(width, depth), shapes, recipe=recipe, optimizer=optimizer, depth_rule=depth_rule)
        layout = depth_mod.layout_of(model)
        if layout is None:
            raise CoordCheckError("a check across depth needs the model's blocks: declare lrm_depth() on it")
        opt = build_optimizer(model, optimizer, lr=lr, weight_decay=weight_decay)
        rows, _ = _train_and_record(model, opt, batches, steps, watch=[f"{layout.blocks}.{depth - 1}"])
        roles = {kept: m.parametrization.role for name, m in multiplied_modules(model)
                 if (kept := _by_position(name, layout, depth)) is not None}
        kept_rows = [{"recipe": recipe, "depth": depth, "width": width, "seed": seed, **row, "module": kept}
                     for row in rows if (kept := _by_position(row["module"], layout, depth)) is not None]
        return kept_rows, layout, roles

    records, roles, layout = [], {}, None
    done = _run_all(run, runs, workers, progress, "depth", cost=lambda cell: cell[1])  # a step ~ depth
    for rows, layout, run_roles in done:
        records += rows
        roles.update(run_roles)
    scales = depth_mod.DepthScales(depth_rule, max(depths), base_depth)
    config = {"axis": "depth", "depths": depths, "width": width, "base_depth": base_depth, "depth_rule": depth_rule,
              "depth_alpha": scales.alpha, "depth_lr_exponent": scales.alpha - 1.0 if depth_rule != "none" else 0.0,
              "blocks": layout.blocks, "branches": [f"{layout.blocks}.last.{b}" for b in layout.branches],
              "base_width": width, "delta_width": delta_width, "recipes": list(recipes), "steps": steps,
              "seeds": seeds, "lr": lr, "weight_decay": weight_decay, "optimizer": optimizer, "corpus": corpus.name,
              "batch_size": batch_size, "context": context, "fresh_batches": fresh_batches, "threshold": threshold,
              "last_steps": last_steps, "head_dims": {}, "roles": roles, "mup_readout": mup_readout(recipes)}
    return CoordCheckResult(config, records)


def _run_all(run: Callable[[tuple], object], runs: list[tuple], workers, progress: bool, axis: str,
             cost: Callable[[tuple], float]) -> list:
    """[run(cell) for cell in runs], in the chosen worker processes (`_cells.run_cells`; `workers` already checked),
    with the progress counter; the choice of workers and their threads is said on stderr with `progress`."""
    count = choose_workers(workers, len(runs), "workers")
    threads = None
    if count > 1:
        choice = choose_threads(count)
        threads = choice.threads
        if progress:
            print(f"coord check: {count} worker processes; {choice.line()}", file=sys.stderr, flush=True)
    bar = _progress([cell[1] for cell in runs], progress)
    return run_cells(run, runs, workers=count, threads=threads, cost=cost, what="run",
                     done=lambda cell: bar(f"{cell[0]} {axis} {cell[1]} seed {cell[2]}", cell[1]))


def _by_position(name: str, layout: depth_mod.DepthLayout, depth: int) -> str | None:
    """The name a check across depth records module `name` under: the last block's modules (and the block itself)
    as `<blocks>.last...`, modules outside the blocks as themselves, None for the other blocks' (not kept)."""
    blocks, last = layout.blocks, f"{layout.blocks}.{depth - 1}"
    if name == last or name.startswith(last + "."):
        return f"{blocks}.last" + name[len(last):]
    if name == blocks or name.startswith(blocks + "."):
        return None
    return name


def _progress(widths: list[int], enabled: bool) -> Callable[[str, int], None]:
    """A counter on stderr, one tick per finished run (`widths`: each run's width, or depth; `tick(what, width)`
    in any order), with the time left: each remaining run costs the mean time between ticks measured at its width,
    or, for a width not finished yet, the widest measured width's time × (width ratio)² (a step's cost grows about
    as width² at these sizes). With worker processes the time between ticks is a run's time over the workers, so
    the estimate holds for them too."""
    start = last = time.perf_counter()
    seconds: dict[int, list[float]] = {}
    remaining = list(widths)
    count = 0

    def left() -> float | None:
        measured = {w: sum(t) / len(t) for w, t in seconds.items()}
        if not measured:
            return None
        ref = max(measured)
        return sum(measured.get(w, measured[ref] * (w / ref) ** 2) for w in remaining)

    def tick(what: str, width: int) -> None:
        nonlocal count, last
        now = time.perf_counter()
        if count > 0 or widths.count(width) == 1:  # the first run also pays one-time warm-ups: not a sample
            seconds.setdefault(width, []).append(now - last)
        remaining.remove(width)
        count, last = count + 1, now
        if enabled:
            done, rest = count == len(widths), left()
            eta = (f"{now - start:.0f} s in all" if done else "" if rest is None else f"about {rest:.0f} s left")
            line = f"\rcoord check {count}/{len(widths)}: {what}" + (f", {eta}" if eta else "")
            print(line + "    ", end="\n" if done else "", file=sys.stderr, flush=True)

    return tick


# ----------------------------------------------------------------------------------------------------------
# Recording one run


class _Probe:
    """Forward hooks that read one forward pass: module outputs, matrix inputs (for Δy) and the q, k that attention
    receives. The model's own output gives the logits (`lrm_mup.models.logits_of`: a tensor, a tuple's first element
    or an HF output's `.logits`); a module whose output IS the logits (the readout) is recorded only as "logits".

    Attention logits q·kᵀ·scale are read from either of two taps (`_attention_taps`): a module's `q_probe` /
    `k_probe` (the proxy, and any model that declares them) or, on a transformers model, the attention-function
    registry (`lrm_mup.models.hf.attention_probe`: the query and key after RoPE and q/k norms, and the `scaling`
    the model passes). The head dim recorded is that of the q the tap saw, so a growing head dim is known per width."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.active = False
        self.outputs: dict[str, torch.Tensor] = {}
        self.inputs: dict[str, torch.Tensor] = {}
        self.qk: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.scales: dict[str, float] = {}
        blocks = {id(child) for m in model.modules() if isinstance(m, (nn.ModuleList, nn.Sequential))
                  for child in m.children()}
        for name, m in model.named_modules():
            matrix = isinstance(m, (nn.Linear, nn.Embedding))
            if matrix or _is_norm(m) or id(m) in blocks:
                m.register_forward_hook(self._output_hook(name, keep_input=matrix))
        _attention_taps(model, self)
        _hook_ssm_series(model, self)

    def _output_hook(self, name, keep_input):
        def hook(module, args, output):
            output = output[0] if isinstance(output, (tuple, list)) and output else output  # HF blocks: (h, ...)
            if self.active and isinstance(output, torch.Tensor):
                self.outputs[name] = output  # not detached: `activations` recognises the logits by identity
                if keep_input:
                    self.inputs[name] = args[0].detach()
        return hook

    def _qk_hook(self, name):
        def hook(module, args, output):
            if self.active:
                self.qk[name].append(output.detach())
        return hook

    def tap(self, name: str, q: torch.Tensor, k: torch.Tensor, scale: float) -> None:
        """What an attention tap hands over: the query and key (B, H, T, d_head) of module `name`, and its scale."""
        if self.active:
            self.qk[name] = [q, k]
            self.scales[name] = scale

    def forward(self, model: nn.Module, x: torch.Tensor, record: bool = True) -> torch.Tensor:
        """The logits of `model(x)`; with record=True (the measurement batch) the hooks keep what they see."""
        self.active = record
        if record:
            self.outputs.clear(), self.inputs.clear(), self.qk.clear()
        with attention_probe(model, self.tap) if record else contextlib.nullcontext():
            return logits_of(model(x))

    @torch.no_grad()
    def activations(self, logits: torch.Tensor) -> dict[str, float]:
        acts = {name: _mean_abs(out) for name, out in self.outputs.items() if out is not logits}
        for name, (q, k) in self.qk.items():
            scores = (q.float() @ k.float().transpose(-2, -1)) * self.scales[name]
            causal = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
            acts[f"{name}.logits"] = _mean_abs(scores[..., causal])
        acts[LOGITS] = _mean_abs(logits)
        return acts

    def head_dim(self) -> int | None:
        return next((q.shape[-1] for q, _ in self.qk.values()), None)


def _attention_taps(model: nn.Module, probe: _Probe) -> None:
    """Connect the attention logits of `model` to `probe`: forward hooks on the `q_probe` / `k_probe` identities a
    module declares (its scale read from `module.scale`); an HF model is tapped in `_Probe.forward` instead, through
    transformers' attention registry, while the measurement batch runs."""
    for name, m in model.named_modules():
        if all(isinstance(getattr(m, probe_name, None), nn.Module) for probe_name in ("q_probe", "k_probe")):
            probe.scales[name] = m.scale
            m.q_probe.register_forward_hook(probe._qk_hook(name))
            m.k_probe.register_forward_hook(probe._qk_hook(name))


def _hook_ssm_series(model: nn.Module, probe: _Probe) -> None:
    """The SSM's inner series: a mixer that lists `ssm_probes` (nn.Identity submodules, models/hybrid.py: x, B, C
    after the conv, dt after softplus, the scan output y) has each recorded as an "act" series like any module
    output (`name.x_probe`, ...); its matrices (in_proj segments, out_proj) are recorded as matrices already."""
    for name, m in model.named_modules():
        for attr in getattr(m, "ssm_probes", ()):
            child = getattr(m, attr, None)
            if isinstance(child, nn.Module):
                child.register_forward_hook(probe._output_hook(f"{name}.{attr}", keep_input=False))


def _mean_abs(t: torch.Tensor) -> float:
    return (torch.linalg.vector_norm(t.detach(), 1) / t.numel()).item()


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)) or type(m).__name__.endswith("Norm")


class _SpectralNorm:
    """‖M‖₂ by power iteration, warm-started from the previous call's vector for the same key: matrices and Adam's
    updates change direction slowly from step to step, so a few iterations stay accurate where an SVD per matrix
    and step would cost more than the training."""

    def __init__(self, cold_iters: int = 20, warm_iters: int = 8):
        self.cold_iters, self.warm_iters, self.vectors = cold_iters, warm_iters, {}

    def __call__(self, key, m: torch.Tensor) -> float:
        v = self.vectors.get(key)
        iters = self.warm_iters
        if v is None:
            v = torch.randn(m.shape[1], generator=torch.Generator().manual_seed(0), dtype=m.dtype)
            iters = self.cold_iters
        for _ in range(iters):
            v = m.T @ F.normalize(m @ v, dim=0)
            norm = v.norm()
            v = v / norm
        self.vectors[key] = v
        return norm.item()


def _train_and_record(model, opt, batches, steps, watch: Sequence[str] = ()) -> tuple[list[dict], int | None]:
    """Train `steps` steps and record every quantity; `watch`: modules whose output's change since the init,
    mean |y_t - y_0| on the measurement batch, is recorded too (quantity "dact"; the check across depth watches
    the residual stream)."""
    probe, spectral = _Probe(model), _SpectralNorm()
    initial: dict[str, torch.Tensor] = {}
    matrices = multiplied_modules(model)
    multipliers = [(f"{name}.mult_{kind}", p) for name, m in matrices for kind, p in m.learned_multipliers().items()]
    (x, y), fresh = batches[0], len(batches) > 1
    rows = []

    def add(step, module, quantity, value):
        rows.append({"step": step, "module": module, "quantity": quantity, "value": value})

    def norm(key, kind, w):
        return spectral(key, w) if kind == HIDDEN else w.norm().item()

    def effective():
        return {name: m.effective_weight().detach().clone() for name, m in matrices}

    for name, _ in matrices:  # nothing has moved yet
        add(0, name, "dw", 0.0), add(0, name, "dy", 0.0)
    weights = effective()
    for t in range(steps + 1):
        training = t < steps
        with torch.set_grad_enabled(training and not fresh):
            logits = probe.forward(model, x)
        for name, value in probe.activations(logits).items():
            add(t, name, "act", value)
        for name in watch:
            out = probe.outputs[name].detach()
            initial.setdefault(name, out.clone())
            add(t, name, "dact", _mean_abs(out - initial[name]))
        for name, p in multipliers:
            add(t, name, "mult", p.detach().abs().mean().item())
        if not training:
            break
        if fresh:
            x_train, y_train = batches[t + 1]
            logits = probe.forward(model, x_train, record=False)
        else:
            y_train = y
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y_train.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_grad_norm_(model, 1.0)
        opt.step()
        with torch.no_grad():
            updated = effective()
            for name, m in matrices:
                kind, w0 = m.parametrization.kind, weights[name]
                delta = updated[name] - w0
                add(t + 1, name, "dw", _ratio(norm((name, "dw"), kind, delta), norm((name, "w"), kind, w0)))
                x_in = probe.inputs[name]
                dy = F.embedding(x_in, delta) if isinstance(m, nn.Embedding) else F.linear(x_in, delta)
                add(t + 1, name, "dy", _ratio(dy.norm().item(), probe.outputs[name].detach().norm().item()))
            weights = updated
    return rows, probe.head_dim()


def _ratio(change: float, before: float) -> float:
    """A relative update; NaN for a matrix (or output) that was zero before the step, which has none: a zero-init
    matrix (the hybrid's readout-like SSM segments) at step 1, a transient step that is plotted, not judged."""
    return change / before if before else math.nan


# ----------------------------------------------------------------------------------------------------------
# The result: the verdicts are lrm_mup.analysis's


def mup_readout(recipes: Sequence[str]) -> list[str]:
    """The recipes with μP's readout and attention scaling (all but sp): where the declared exceptions apply."""
    return [r for r in recipes if r in RECIPES and RECIPES[r].mup_readout]


class CoordCheckResult(analysis.CoordCheckResult):
    """`lrm_mup.analysis.CoordCheckResult` with the config's "mup_readout" recipes filled in from the recipe table
    when it does not list them (planted configs, results saved before it was written)."""

    def __init__(self, config: dict, records: list[dict]):
        if "mup_readout" not in config:
            config = {**config, "mup_readout": mup_readout(config["recipes"])}
        super().__init__(config, records)
