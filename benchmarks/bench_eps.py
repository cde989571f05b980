"""Adam's ε across width (issue 13 item 3): how much of each hidden matrix's Adam update a fixed ε removes, under
lr-only and mup, at widths up to the widest CPU width, and extrapolated to 8192.

    python benchmarks/bench_eps.py [--widths 64 256 1024] [--steps 10] [--eps 1e-8]

Adam's update is m̂ / (sqrt(v̂) + ε). mup stores hidden weights m× lr-only's, so its stored gradients, m̂ and sqrt(v̂)
are 1/m of lr-only's: a fixed ε weighs as m·ε in lr-only's units. The measure per group: the median over the
group's entries of ε / (sqrt(v̂) + ε), the fraction of the update ε removes (0: negligible), after `--steps` real
steps (fixed ε, no per-group rule), and its log-log slope in width, extrapolated to 8192.
"""
from __future__ import annotations

import argparse

import torch

from lrm_mup import analysis
from lrm_mup.core.multipliers import multiplied_modules
from lrm_mup.training import TrainConfig
from lrm_mup.training.engine import Run


def eps_fraction(recipe: str, width: int, steps: int, eps: float) -> float:
    cfg = TrainConfig(recipe=recipe, width=width, base_width=64, depth=2, context=32, batch=4, steps=steps,
                      warmup=0, schedule="constant", data="tests/data/shakespeare", device="cpu", clip=1.0)
    run = Run.create(cfg, progress=False)
    for _ in range(steps):
        run.train_step()
    fractions = []
    for _, m in multiplied_modules(run.model):
        if m.parametrization.kind == "hidden":
            v = run.optimizer.state[m.weight]["exp_avg_sq"]
            step = float(run.optimizer.state[m.weight]["step"])
            denom = (v / (1 - 0.95 ** step)).sqrt()  # sqrt(v̂), bias-corrected as AdamW does
            fractions.append((eps / (denom + eps)).median().item())
    return sorted(fractions)[len(fractions) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--eps", type=float, default=1e-8)
    args = p.parse_args()
    torch.set_num_threads(1)
    for recipe in ("lr-only", "mup"):
        values = [eps_fraction(recipe, w, args.steps, args.eps) for w in args.widths]
        fit = analysis.loglog_fit(args.widths, values)
        at_8k = values[-1] * (8192 / args.widths[-1]) ** fit.slope
        print(f"{recipe:8s} eps={args.eps:g}: median ε/(sqrt(v̂)+ε) of hidden matrices "
              + ", ".join(f"w{w} {v:.3g}" for w, v in zip(args.widths, values))
              + f"; slope {fit.slope:.2f} → w8192 ≈ {at_8k:.3g}", flush=True)


if __name__ == "__main__":
    main()
