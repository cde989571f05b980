"""What the benchmark scripts share: their common command-line flags and one training step (zero_grad, forward,
backward, the effective path's gradient mapping, clipping, optimizer step), so every model in a comparison is timed
doing exactly the same work."""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.distributed as dist

import lrm_mup
from lrm_mup.training import distributed


def add_common_args(p: argparse.ArgumentParser, *, batch: int, threads: int) -> None:
    """--depth --context --batch --warmup --rounds --threads, with the script's defaults for batch and threads."""
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per model")
    p.add_argument("--rounds", type=int, default=15, help="timed steps per model (interleaved)")
    p.add_argument("--threads", type=int, default=threads, help="torch threads (per process)")


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *,
               path: lrm_mup.EffectivePath | None = None, clip: float | None = None,
               forward: Callable | None = None) -> Callable[[], None]:
    """One optimizer step of `model` on the batch (x, y), as a function to time. `path`: the effective path maps its
    gradients after backward and refreshes its merged matrices after the step; `clip`: lrm_mup's clipping;
    `forward(x, y) -> (logits, loss)`: how the loss is computed (default `model(x, y)`; an HF model:
    `lrm_mup.training.engine.lm_forward(model)`)."""
    forward = model if forward is None else forward

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        _, loss = forward(x, y)
        loss.backward()
        if path is not None:
            path.map_grads()
        if clip is not None:
            lrm_mup.clip_grad_norm_(model, clip)
        opt.step()
        if path is not None:
            path.refresh()
    return step


def time_interleaved(steps: dict[str, Callable[[], None]], warmup: int, rounds: int, *, world=None,
                     sync: Callable[[], None] | None = None, device: str = "cpu") -> dict[str, list[float]]:
    """Seconds of each step function per round: `warmup` untimed calls each, then `rounds` rounds calling every
    function once, in an order rotated each round (so that load on a shared machine hits all of them alike).
    `sync`: called before and after each timed step (torch.cuda.synchronize); `world` (lrm_mup.training.distributed,
    under torchrun): the ranks start each timed step together and a step's time is the slowest rank's
    (reduced on `device`: "cuda" under NCCL)."""
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    times = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if world is not None and world.size > 1:
                distributed.barrier(world)
            if sync is not None:
                sync()
            t0 = time.perf_counter()
            steps[name]()
            if sync is not None:
                sync()
            elapsed = time.perf_counter() - t0
            if world is not None and world.size > 1:
                t = torch.tensor([elapsed], dtype=torch.float64, device=world.device(device))
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
                elapsed = t.item()
            times[name].append(elapsed)
    return times


def print_ratio_table(times: dict[str, list[float]], tokens: int, reference: str = "plain") -> None:
    """A markdown table: step ms, tokens/s and, per model, tokens/s over the reference's: the median over rounds of
    the per-round ratio [IQR], and the ratio of the best (least disturbed) steps."""
    print(f"\n| model | step ms (median / min) | tokens/s (median / best) | ours/{reference} tokens/s: paired median "
          "[IQR]; best/best |")
    print("|---|---:|---:|---:|")
    for name, t in times.items():
        med, best = statistics.median(t), min(t)
        per_round = [tp / tn for tn, tp in zip(t, times[reference])]  # (tokens/s ours) / (tokens/s reference)
        q = statistics.quantiles(per_round, n=4)
        ratio = "1 (reference)" if name == reference else (
            f"{statistics.median(per_round):.3f} [{q[0]:.3f}, {q[2]:.3f}]; {min(times[reference]) / best:.3f}")
        print(f"| {name} | {1e3 * med:.1f} / {1e3 * best:.1f} | {tokens / med:,.0f} / {tokens / best:,.0f} | {ratio} |")
