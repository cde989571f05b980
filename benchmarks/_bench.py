"""What the benchmark scripts share: their common command-line flags and one training step (zero_grad, forward,
backward, the effective path's gradient mapping, clipping, optimizer step), so every model in a comparison is timed
doing exactly the same work."""
from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

import lrm_mup


def add_common_args(p: argparse.ArgumentParser, *, batch: int, threads: int) -> None:
    """--depth --context --batch --warmup --rounds --threads, with the script's defaults for batch and threads."""
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per model")
    p.add_argument("--rounds", type=int, default=15, help="timed steps per model (interleaved)")
    p.add_argument("--threads", type=int, default=threads, help="torch threads (per process)")


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *,
               path: lrm_mup.EffectivePath | None = None, clip: float | None = None) -> Callable[[], None]:
    """One optimizer step of `model` on the batch (x, y), as a function to time. `path`: the effective path maps its
    gradients after backward and refreshes its merged matrices after the step; `clip`: lrm_mup's clipping."""
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        _, loss = model(x, y)
        loss.backward()
        if path is not None:
            path.map_grads()
        if clip is not None:
            lrm_mup.clip_grad_norm_(model, clip)
        opt.step()
        if path is not None:
            path.refresh()
    return step
