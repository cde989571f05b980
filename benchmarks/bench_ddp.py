"""Data-parallel step time of the training loop (lrm_mup.train.Run) under torchrun, ratios measured in one run.

    torchrun --nproc_per_node 2 benchmarks/bench_ddp.py [--width 256] [--batch 16] [--rounds 15]   # CPU: gloo
    torchrun --nproc_per_node 8 benchmarks/bench_ddp.py --width 2048 --device cuda                  # GPUs: NCCL

Steppers, each one `Run.train_step` on the global batch `--batch` (each rank keeps its rows):
- mup        recipe mup, DDP
- lrm        recipe lrm, DDP (the learnable multipliers are extra small parameters in DDP's buckets)
- lrm-eff    recipe lrm on the effective path: no DDP, one flat all-reduce after `map_grads()`
- lrm-fsdp   recipe lrm sharded by FSDP2 (all-gather before each block, reduce-scatter after)
- lrm-1proc  recipe lrm in one process on the whole global batch (what a rank would do alone)
- plain      the un-parametrized proxy in plain DDP with torch.optim.AdamW and the same sharding: the baseline
Ratios (median over rounds of the per-round ratio; every rank steps every model in the same rotated order, and the
slowest rank's time counts): lrm / mup, lrm-eff / mup, lrm-fsdp / lrm, mup / plain, and lrm / lrm-1proc (ideal
1 / world size).
"""
from __future__ import annotations

import argparse
import datetime
import platform
import statistics

import torch
from _bench import add_common_args, time_interleaved
from torch.nn.parallel import DistributedDataParallel as DDP

from lrm_mup.data import load_corpus
from lrm_mup.training import Run, TrainConfig, distributed


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=256)
    add_common_args(p, batch=16, threads=1)  # --batch is the global batch
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--data", help="text file or folder (default: the Shakespeare corpus)")
    return p.parse_args(argv)


def steppers(args, world: distributed.World, corpus) -> dict:
    cfg = lambda **kw: TrainConfig(width=args.width, depth=args.depth, context=args.context,  # noqa: E731
                                   batch=args.batch, device=args.device, steps=10_000, **kw)
    runs = {"mup": Run.create(cfg(recipe="mup"), corpus, world=world),
            "lrm": Run.create(cfg(recipe="lrm"), corpus, world=world),
            "lrm-eff": Run.create(cfg(recipe="lrm", path="effective"), corpus, world=world),
            "lrm-fsdp": Run.create(cfg(recipe="lrm", parallel="fsdp"), corpus, world=world),
            "lrm-1proc": Run.create(cfg(recipe="lrm"), corpus, world=distributed.SINGLE)}
    out = {name: (lambda run=run: run.train_step(run.wrapped)) for name, run in runs.items()}

    device = world.device(args.device)
    torch.manual_seed(0)
    plain = cfg(recipe="sp").build(args.width).to(device)  # the same model, not parametrized
    ddp = DDP(plain, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.AdamW(plain.parameters(), lr=1e-3, weight_decay=0.1)
    gen = torch.Generator().manual_seed(0)

    def plain_step():
        x, y = corpus.batch("train", args.batch, args.context, gen)
        rows = world.rows(args.batch)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            _, loss = ddp(x[rows].to(device), y[rows].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    out["plain"] = plain_step
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    world = distributed.setup()
    corpus = distributed.main_first(lambda: load_corpus(args.data, progress=world.main), world)
    steps = steppers(args, world, corpus)
    names = list(steps)
    sync = torch.cuda.synchronize if args.device == "cuda" else None
    times = time_interleaved(steps, args.warmup, args.rounds, world=world, sync=sync, device=args.device)
    if not world.main:
        return
    device = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    print(f"# {datetime.date.today()} {platform.node()} {device}, torch {torch.__version__}, world {world.size}, "
          f"{args.threads} thread(s)/process, width {args.width}, depth {args.depth}, global batch {args.batch}, "
          f"context {args.context}, {args.rounds} rounds")
    for name in names:
        print(f"{name:10s} median {1e3 * statistics.median(times[name]):8.2f} ms   "
              f"min {1e3 * min(times[name]):8.2f} ms")
    for a, b in (("lrm", "mup"), ("lrm-eff", "mup"), ("lrm-fsdp", "lrm"), ("mup", "plain"), ("lrm", "lrm-1proc")):
        ratio = statistics.median(x / y for x, y in zip(times[a], times[b]))
        print(f"{a} / {b}: {ratio:.3f} (min/min {min(times[a]) / min(times[b]):.3f})")


if __name__ == "__main__":
    main()
