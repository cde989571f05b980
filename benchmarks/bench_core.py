"""Step-time ratios of the core's training paths, measured in one run on CPU.

    python benchmarks/bench_core.py [--widths 256 512] [--rounds 15] [--batch 8] [--context 128]

A step is zero_grad + forward + backward (+ the path's extra work) + optimizer step, on one fixed batch:
- mup        parametrize(..., "mup"), lrm_mup.build_optimizer AdamW, lrm_mup.clip_grad_norm_
- lrm-auto   parametrize(..., "lrm"), same; the forward builds W = a·s·r⊙W̃⊙c, autograd differentiates through it
- lrm-eff    the same lrm model on lrm_mup.EffectivePath: map_grads() after backward, refresh() after the step
- plain      the un-parametrized proxy GPT, torch.optim.AdamW, no clipping
- merged     lrm_mup.merge(lrm model), torch.optim.AdamW, no clipping
Ratios: (a) lrm-auto / mup, (b) lrm-eff / mup, (c) merged / plain.

Noise control: every model is warmed up, then measured in rounds; each round times one step of every model, in an
order rotated from round to round. Reported: median and minimum step time per model; each ratio as the median over
rounds of the per-round ratio (paired, so slow drifts of the machine cancel) and as the ratio of the minima (the least
disturbed steps: use it on a shared machine whose load comes and goes).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import torch
from _bench import add_common_args, train_step

import lrm_mup
from lrm_mup.training import TrainConfig, parametrized_model


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=int, nargs="+", default=[256, 512])
    p.add_argument("--base", type=int, default=64, help="base width for parametrize (delta = 2 × base)")
    add_common_args(p, batch=8, threads=os.cpu_count())
    p.add_argument("--lr", type=float, default=1e-3)
    return p.parse_args(argv)


def make_steppers(width: int, args) -> dict:
    """name -> a function doing one full training step."""
    config = lambda recipe: TrainConfig(recipe=recipe, width=width, depth=args.depth,  # noqa: E731
                                        context=args.context, base_width=args.base)
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (args.batch, args.context + 1), generator=gen)
    x, y = data[:, :-1], data[:, 1:]

    def parametrized(recipe):
        return parametrized_model(config(recipe))  # seeded by the config (seed 0)

    def core_step(model, path=None):
        opt = lrm_mup.build_optimizer(model, "adamw", lr=args.lr, weight_decay=0.1)
        return train_step(model, opt, x, y, path=path, clip=1.0)

    def plain_step(model):
        return train_step(model, torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1), x, y)

    lrm_auto, lrm_eff = parametrized("lrm"), parametrized("lrm")
    torch.manual_seed(0)
    return {
        "mup": core_step(parametrized("mup")),
        "lrm-auto": core_step(lrm_auto),
        "lrm-eff": core_step(lrm_eff, lrm_mup.EffectivePath(lrm_eff)),
        "plain": plain_step(config("sp").build(width)),
        "merged": plain_step(lrm_mup.merge(parametrized("lrm"))),
    }


def measure(steppers: dict, warmup: int, rounds: int) -> dict[str, list[float]]:
    names = list(steppers)
    for _ in range(warmup):
        for name in names:
            steppers[name]()
    times = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            steppers[name]()
            times[name].append(time.perf_counter() - t0)
    return times


RATIOS = {"(a) lrm-auto / mup": ("lrm-auto", "mup"), "(b) lrm-eff / mup": ("lrm-eff", "mup"),
          "(c) merged / plain": ("merged", "plain")}


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu = platform.processor() or platform.machine()
    print(f"# bench_core  {datetime.date.today()}  torch {torch.__version__}  {cpu}"
          f"  cpus={os.cpu_count()} threads={torch.get_num_threads()}  loadavg(before)={os.getloadavg()[0]:.2f}")
    print(f"# depth {args.depth}, context {args.context}, batch {args.batch}, float32, base/delta "
          f"{args.base}/{2 * args.base}, warmup {args.warmup}, {args.rounds} interleaved rounds")
    results = {}
    for width in args.widths:
        times = measure(make_steppers(width, args), args.warmup, args.rounds)
        med = {n: statistics.median(t) for n, t in times.items()}
        best = {n: min(t) for n, t in times.items()}
        ratios = {}
        for label, (a, b) in RATIOS.items():
            per_round = [ta / tb for ta, tb in zip(times[a], times[b])]
            q = statistics.quantiles(per_round, n=4)
            ratios[label] = (statistics.median(per_round), q[0], q[2], best[a] / best[b])
        results[width] = (med, best, ratios)
    names = list(next(iter(results.values()))[0])
    print("\nstep time (ms): median / min over rounds")
    print("| width | " + " | ".join(names) + " |")
    print("|---:|" + "---:|" * len(names))
    for width, (med, best, _) in results.items():
        print(f"| {width} | " + " | ".join(f"{1e3 * med[n]:.1f} / {1e3 * best[n]:.1f}" for n in names) + " |")
    print("\nratios: median of per-round ratios [interquartile range]; ratio of minima")
    print("| width | " + " | ".join(RATIOS) + " |")
    print("|---:|" + "---:|" * len(RATIOS))
    for width, (_, _, ratios) in results.items():
        cells = (f"{m:.3f} [{lo:.3f}, {hi:.3f}]; {mn:.3f}" for m, lo, hi, mn in ratios.values())
        print(f"| {width} | " + " | ".join(cells) + " |")
    print(f"\n# loadavg(after)={os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
