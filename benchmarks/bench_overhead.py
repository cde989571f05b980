"""The step-time overhead of learnable multipliers (issue 15): lrm against mup and plain PyTorch, side by side.

    python benchmarks/bench_overhead.py                 # full run (CPU, 1 thread: ~8 min on an idle core)
    python benchmarks/bench_overhead.py --quick         # widths 256 512, 1k tokens, 5 rounds (a smoke run)
    python benchmarks/bench_overhead.py --profile       # plus a torch.profiler table per stepper (first config)
    torchrun --nproc_per_node 2 benchmarks/bench_overhead.py --quick      # DDP (gloo on CPU): one Run per rank
    python benchmarks/bench_overhead.py --device cuda --compile --widths 2048 4096 --tokens 8192 65536  # a GPU
    python benchmarks/bench_overhead.py --widths 512 1024 --tokens 1024 --steppers mup lrm-eff plain --rounds 41
                                                        # the 1k-token targets only, with enough rounds to decide them

Every stepper is one optimizer step of the real training loop (`lrm_mup.training.Run.train_step`: a batch drawn
from the corpus, forward, backward, the path's gradient mapping, clipping, AdamW, the schedule), except `plain`:
- mup          recipe mup (path autograd: it has no learnable multipliers)
- lrm-rep      recipe lrm, reparametrized forward (path autograd)
- lrm-eff      recipe lrm, effective path (merged matrices; the default, path auto, in one process)
- lrm-eff-eager  lrm-eff with the eager torch ops for the multipliers' full-size work instead of the fused CPU
               kernels (`lrm_mup/core/_fused.py`; the same on CUDA, where the kernels never apply)
- lrm-rep-acc  / lrm-eff-acc: the same with gradient accumulation over `--micro` micro-batches
- plain        benchmarks/bench_model.py's PlainGPT (nn.Linear, nn.Embedding, no lrm_mup), torch AdamW with the
               same fused setting as ours (`lrm_mup.core.optim.fused_adamw`), torch's clip_grad_norm_, the same batches
- merged       lrm_mup.merge(the lrm model) trained like plain (our model class, plain layers)
Under torchrun every rank steps every model (mup/lrm-rep in DDP, lrm-eff all-reducing after its mapping, plain in
DDP); a step's time is the slowest rank's.

Ratios (of step times unless said; median over rounds of the per-round ratio [interquartile range]; after the `;`
the ratio of the fastest steps, the least disturbed on a shared machine): lrm-rep/mup, lrm-eff/mup, fused/eager
(lrm-eff over lrm-eff-eager), eff-acc/rep-acc, merged/plain, and lrm tokens/s / plain tokens/s on lrm's faster
path. Rounds are interleaved in a rotated order (`_bench.time_interleaved`), so load that comes and goes hits
every stepper alike. The overhead budget is timed inside lrm-eff's own steps: the milliseconds its gradient mapping
(`EffectivePath.map_grads`) and its rebuild of the merged matrices (`EffectivePath.refresh`) take per optimizer
step, and their share of its step: the whole of what learnable multipliers add to a step on that path but their
entries in the clipping and the optimizer (vectors), measured without the noise of comparing two runs. The last
column accounts for lrm-eff's step against plain's: its mapping and rebuild, plus its clipping and AdamW minus
plain's (each timed inside both steppers' steps), their sum, and the difference of the two steps' medians.
On CUDA (bf16 autocast, as training does) it also prints the MFU: model FLOPs (`Run.flops_per_token`) per second
over `--peak-tflops`.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from _bench import time_interleaved
from bench_model import plain_like
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.profiler import ProfilerActivity
from torch.profiler import profile as torch_profile

import lrm_mup
from lrm_mup.core import _fused
from lrm_mup.core.optim import fused_adamw
from lrm_mup.data import load_corpus
from lrm_mup.models import GPTConfig
from lrm_mup.training import Run, TrainConfig, distributed, engine

CONTEXT = 128
ALL = ("mup", "lrm-rep", "lrm-eff", "lrm-eff-eager", "lrm-rep-acc", "lrm-eff-acc", "plain", "merged")
NO_MERGED = ALL[:-1]
CORE = ("mup", "lrm-rep", "lrm-eff", "lrm-eff-eager", "plain")
# full run: (width, tokens per step) -> (depth, rounds, steppers); 20.7 TFLOP in all (warm-up included): about 6-7
# min on one idle CPU core at 1 thread (50-60 GFLOP/s); width 1024 at 8k tokens (0.7 TFLOP a step) with the four
# core steppers only
FULL = {(256, 1024): (2, 11, ALL), (512, 1024): (2, 7, ALL), (1024, 1024): (1, 4, ALL),
        (256, 8192): (1, 4, NO_MERGED), (512, 8192): (1, 3, NO_MERGED), (1024, 8192): (1, 2, CORE)}
QUICK = {(256, 1024): (2, 5, ALL), (512, 1024): (2, 5, ALL)}
_CLIP = engine.clip_grad_norm_  # the engine's clipping (lrm_mup.core.optim), untimed
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}  # dense bf16


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="widths 256 512 at 1k tokens, 5 rounds")
    p.add_argument("--widths", type=int, nargs="+", help="override the plan's widths")
    p.add_argument("--tokens", type=int, nargs="+", help="override the plan's tokens per step (multiples of 128)")
    p.add_argument("--depth", type=int, help="override the plan's depth")
    p.add_argument("--rounds", type=int, help="override the plan's rounds")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per stepper")
    p.add_argument("--steppers", nargs="+", metavar="NAME",
                   help=f"time only these (default: the plan's); any of {', '.join(ALL)}")
    p.add_argument("--micro", type=int, default=4, help="micro-batches of the -acc steppers")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--compile", action="store_true", help="torch.compile every model (default off)")
    p.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, for the MFU (CUDA)")
    p.add_argument("--profile", action="store_true", help="torch.profiler table per stepper, first config")
    p.add_argument("--data", help="text file or folder (default: the Shakespeare corpus)")
    args = p.parse_args(argv)
    unknown = sorted(set(args.steppers or ()) - set(ALL))
    if unknown:
        p.error(f"--steppers: unknown {', '.join(unknown)}; choose from {', '.join(ALL)}")
    if args.steppers and not {"mup", "lrm-eff"} <= set(args.steppers):
        p.error("--steppers: mup and lrm-eff are the references of every ratio; name both (and more)")
    return args


def plan(args) -> dict[tuple[int, int], tuple]:
    base = QUICK if args.quick else FULL
    widths = args.widths or sorted({w for w, _ in base})
    tokens = args.tokens or sorted({t for _, t in base})
    out = {}
    for t in tokens:
        for w in widths:
            depth, rounds, names = base.get((w, t), (2, 5, ALL))
            if args.steppers:
                names = tuple(n for n in ALL if n in args.steppers)
            out[(w, t)] = (args.depth or depth, args.rounds or rounds, names)
    return out


def timed(obj, method: str, into: list[float], sync=None, when: Callable[..., bool] | None = None) -> None:
    """Replace `obj.method` by itself timed: each call's seconds are appended to `into` (synchronized on CUDA);
    `when(*args)`: only the calls it accepts are timed (a module function that every run calls)."""
    inner = getattr(obj, method)

    def call(*args, **kwargs):
        if when is not None and not when(*args):
            return inner(*args, **kwargs)
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        out = inner(*args, **kwargs)
        if sync is not None:
            sync()
        into.append(time.perf_counter() - t0)
        return out
    setattr(obj, method, call)


def timed_steps(opt: torch.optim.Optimizer, into: list[float], sync=None) -> None:
    """Time each `opt.step()` into `into` through the optimizer's step hooks (replacing `step` would hide it from
    the LR scheduler's order check)."""
    started = []

    def before(*_):
        if sync is not None:
            sync()
        started.append(time.perf_counter())

    def after(*_):
        if sync is not None:
            sync()
        into.append(time.perf_counter() - started.pop())
    opt.register_step_pre_hook(before)
    opt.register_step_post_hook(after)


def steppers(args, width: int, tokens: int, depth: int, names, world, corpus,
             budget: dict[str, list[float]], sync=None) -> tuple[dict, Run]:
    """name -> one optimizer step, for the steppers `names`; and the lrm run (for its FLOPs per token). lrm-eff's
    gradient mapping and rebuild are timed into `budget["map"]` and `budget["refresh"]`."""
    batch = tokens // CONTEXT

    def run(recipe, path, micro=None):
        cfg = TrainConfig(recipe=recipe, width=width, depth=depth, context=CONTEXT, batch=batch, steps=10_000,
                          device=args.device, compile=args.compile, path=path,
                          micro_batch=batch // world.size // micro if micro else None)
        return Run.create(cfg, corpus, progress=False, world=world)

    made = {"mup": lambda: run("mup", "autograd"), "lrm-rep": lambda: run("lrm", "autograd"),
            "lrm-eff": lambda: run("lrm", "effective"), "lrm-eff-eager": lambda: run("lrm", "effective"),
            "lrm-rep-acc": lambda: run("lrm", "autograd", args.micro),
            "lrm-eff-acc": lambda: run("lrm", "effective", args.micro)}
    runs = {name: made[name]() for name in names if name in made}
    out = {name: (lambda r=r: r.train_step()) for name, r in runs.items()}
    if "lrm-eff-eager" in runs:
        out["lrm-eff-eager"] = lambda r=runs["lrm-eff-eager"]: _eager(r.train_step)
    lrm = runs["lrm-eff"]
    timed(lrm.path, "map_grads", budget.setdefault("map", []), sync)
    timed(lrm.path, "refresh", budget.setdefault("refresh", []), sync)
    engine.clip_grad_norm_ = _CLIP  # the last config's timing off: only this lrm-eff run's calls are timed
    timed(engine, "clip_grad_norm_", budget.setdefault("clip", []), sync, when=lambda model, *_: model is lrm.model)
    timed_steps(lrm.optimizer, budget.setdefault("adamw", []), sync)
    device = lrm.device
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    # the same architecture and init: PlainGPT (no lrm_mup layers) and our GPT with the lrm multipliers merged
    models = {"plain": plain_like(GPTConfig(width=width, depth=depth, context=CONTEXT)).to(device)}
    if "merged" in names:
        models["merged"] = lrm_mup.merge((runs.get("lrm-rep") or run("lrm", "autograd")).model)
    for name, model in models.items():
        wrapped = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if world.size > 1 \
            else model
        forward = torch.compile(wrapped) if args.compile else wrapped
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, fused=fused_adamw(model))
        clip = _Clip(model)
        if name == "plain":
            timed(clip, "step", budget.setdefault("plain clip", []), sync)
            timed_steps(opt, budget.setdefault("plain adamw", []), sync)

        def step(model=model, forward=forward, opt=opt, clip=clip):
            x, y = corpus.batch("train", batch, CONTEXT, gen)
            rows = world.rows(batch)
            opt.zero_grad(set_to_none=True)
            with lrm.autocast:
                _, loss = forward(x[rows].to(device), y[rows].to(device))
            loss.backward()
            clip.step()
            opt.step()
            return loss.item()
        out[name] = step
    return out, lrm


class _Clip:
    """Plain PyTorch's clipping of a model's gradients (torch's clip_grad_norm_ at 1.0), as a method to time."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def step(self) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)


def _eager(step):
    with _fused.eager_ops():
        return step()


RATIOS = (("lrm-rep / mup", "lrm-rep", "mup"), ("lrm-eff / mup", "lrm-eff", "mup"),
          ("fused / eager", "lrm-eff", "lrm-eff-eager"),
          ("eff-acc / rep-acc", "lrm-eff-acc", "lrm-rep-acc"), ("merged / plain", "merged", "plain"),
          ("mup / plain", "mup", "plain"))


def ratio(times, a, b) -> str:
    if a not in times or b not in times:
        return "n/a"
    per_round = [x / y for x, y in zip(times[a], times[b])]
    q = statistics.quantiles(per_round, n=4) if len(per_round) > 1 else per_round * 3
    return f"{statistics.median(per_round):.3f} [{q[0]:.3f}, {q[2]:.3f}]; {min(times[a]) / min(times[b]):.3f}"


def _budget(spent: dict[str, float], med: dict[str, float]) -> str:
    """Where lrm-eff's extra time per step goes, against plain PyTorch, in ms: its mapping and rebuild (plain has
    neither), its clipping and AdamW minus plain's (the multipliers' vectors, our clipping's per-unit norms), their
    sum; and the difference of the two steps' medians, which the sum should account for within its noise."""
    parts = [spent["map"], spent["refresh"], spent["clip"] - spent["plain clip"],
             spent["adamw"] - spent["plain adamw"]]
    return " + ".join(f"{1e3 * x:.1f}" for x in parts) + (f" = {1e3 * sum(parts):.1f} of "
                                                          f"{1e3 * (med['lrm-eff'] - med['plain']):.1f}")


def profile(steps: dict, world) -> None:
    """The top operators by self time over 3 steps of each stepper (torch.profiler, CPU activities)."""
    for name, step in steps.items():
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                step()
        if world.main:
            print(f"\n### profile: {name} (3 steps)")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=36))


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    world = distributed.setup()
    corpus = distributed.main_first(lambda: load_corpus(args.data, progress=world.main), world)
    sync = torch.cuda.synchronize if args.device == "cuda" else None
    peak = args.peak_tflops
    if args.device == "cuda" and peak is None:
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in torch.cuda.get_device_name()), None)
    device = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    if world.main:
        print(f"# bench_overhead {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()} "
              f"{device}, torch {torch.__version__}, {os.cpu_count()} cpus, {args.threads} thread(s)/process, world "
              f"{world.size}, compile {args.compile}, {'bf16 autocast' if args.device == 'cuda' else 'float32'}, "
              f"context {CONTEXT}, warmup {args.warmup}, accumulation {args.micro} micro-batches, "
              f"loadavg {os.getloadavg()[0]:.1f}; multipliers' CPU work: {_fused.status()}")
    rows, start = [], time.perf_counter()
    for i, ((width, tokens), (depth, rounds, names)) in enumerate(plan(args).items()):
        budget: dict[str, list[float]] = {}
        steps, lrm = steppers(args, width, tokens, depth, names, world, corpus, budget, sync)
        if args.profile and i == 0:
            profile(steps, world)
        times = time_interleaved(steps, args.warmup, rounds, world=world, sync=sync, device=args.device)
        if not world.main:
            continue
        med = {n: statistics.median(t) for n, t in times.items()}
        faster = min((n for n in ("lrm-rep", "lrm-eff") if n in med), key=med.get)
        # the calls of the timed rounds (the profile's and the warm-up's come first)
        spent = {k: statistics.median(v[-rounds:]) for k, v in budget.items()}
        share = (spent["map"] + spent["refresh"]) / med["lrm-eff"]
        cells = [ratio(times, a, b) for _, a, b in RATIOS] + [ratio(times, "plain", faster) + f" ({faster})"]
        cells.append(f"{1e3 * spent['map']:.1f} + {1e3 * spent['refresh']:.1f} ({100 * share:.2f} %)")
        cells.append(_budget(spent, med) if "plain" in med else "n/a")
        mfu = ""
        if args.device == "cuda" and peak:
            mfu = f"{100 * lrm.flops_per_token * tokens / med['lrm-eff'] / (peak * 1e12 * world.size):.1f}%"
        rows.append((width, tokens, depth, rounds, 1e3 * med["mup"], 1e3 * med["lrm-eff"], cells, mfu))
        print(f"# done width {width} tokens {tokens} depth {depth} rounds {rounds}: "
              + ", ".join(f"{n} {1e3 * m:.1f} ms" for n, m in med.items())
              + f" (elapsed {time.perf_counter() - start:.0f} s, loadavg {os.getloadavg()[0]:.1f})", flush=True)
    if not world.main:
        return
    head = ["width", "tokens/step", "depth", "rounds", "mup ms", "lrm-eff ms", *(r[0] for r in RATIOS),
            "lrm tokens/s / plain (path)", "lrm-eff map + rebuild ms (% of its step)",
            "lrm-eff − plain ms: map + rebuild + Δclip + ΔAdamW = Σ of Δstep"]
    head += ["MFU lrm-eff"] if args.device == "cuda" else []
    print("\n| " + " | ".join(head) + " |")
    print("|" + "---:|" * len(head))
    for width, tokens, depth, rounds, mup_ms, eff_ms, cells, mfu in rows:
        tail = [mfu or "n/a"] if args.device == "cuda" else []
        print(f"| {width} | {tokens} | {depth} | {rounds} | {mup_ms:.1f} | {eff_ms:.1f} | " + " | ".join(cells + tail)
              + " |")
    print(f"\n# total {time.perf_counter() - start:.0f} s, loadavg {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
