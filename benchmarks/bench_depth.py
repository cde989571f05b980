"""LR transfer across depth (issue 13): run sweeps/depth_transfer.toml (log2 LR × depth 2, 4, 8 × depth rule
none / complete, width 32; recipes mup and lrm: at the base width sp and lr-only are mup exactly) and print, per
recipe and depth rule, the optimum log2 LR at every depth and its spread (max − min), with the final validation
bits/byte per LR; the numbers also go to <out>/depth_transfer.json. Re-running resumes the sweep (finished trials are
kept).

    OMP_NUM_THREADS=1 python benchmarks/bench_depth.py --out runs/depth-transfer

Sized for one CPU thread (about 20 minutes on a shared 2-core machine): tiny width, 60 steps, one seed. A spread
within 1 (log2) is the transfer criterion REFERENCE §3 uses across width; the grid's step is 1, so a spread of 1 is
one grid point and with one seed the optimum can move a point on noise alone.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from dataclasses import asdict, replace

import torch

from lrm_mup.analysis import grid_edge_optima, lr_curves, optimum_spread
from lrm_mup.tuning.sweep import SweepSpec, load_sweep, records, run_sweep


def only_recipes(spec: SweepSpec, recipes: tuple[str, ...]) -> SweepSpec:
    """The sweep restricted to `recipes` (its search keys too), as a file listing only them would parse."""
    keep = tuple(r for r in spec.recipes if r in recipes)
    search = tuple(replace(p, recipes=tuple(r for r in p.recipes if r in keep)) for p in spec.search)
    return replace(spec, recipes=keep, search=search)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", default="sweeps/depth_transfer.toml")
    p.add_argument("--out", default="runs/depth-transfer")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--recipes", type=lambda t: tuple(t.split(",")), default=("mup", "lrm"),
                   help="recipes to run (default mup,lrm: at the base width sp and lr-only are mup exactly)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    spec = only_recipes(load_sweep(args.sweep), args.recipes)
    start = time.perf_counter()
    run_sweep(spec, args.out, workers=1, progress=False)
    seconds = time.perf_counter() - start
    trials = records(args.out, spec)
    curves = lr_curves(trials, axis="depth")
    spread = optimum_spread(curves)
    edges = grid_edge_optima(curves)
    machine = platform.processor() or platform.machine()
    print(f"{spec.name}: {len(trials)} trials, {seconds:.0f} s this call, {machine}, {args.threads} thread(s)")
    for series, by_depth in curves.items():
        s = spread[series]
        opts = ", ".join(f"L={d}: {s.opt_log2_lr[d]:+g}" if s.opt_log2_lr[d] is not None else f"L={d}: none"
                         for d in s.widths)
        edge = f"  (optimum on the grid's edge at L={edges[series]})" if edges.get(series) else ""
        print(f"{series:28s} optimum log2 LR {opts}; spread {s.spread}{edge}")
        for d, c in by_depth.items():
            vals = " ".join(f"{v:6.3f}" if math.isfinite(v) else "   inf" for v in c.val_bpb)
            print(f"    L={d}: val bpb at log2 LR {c.log2_lr[0]:+g}..{c.log2_lr[-1]:+g}: {vals}")
    payload = {"sweep": spec.to_dict(), "seconds_this_call": seconds,
               "curves": {k: {d: asdict(c) for d, c in v.items()} for k, v in curves.items()},
               "spread": {k: asdict(v) for k, v in spread.items()}, "edges": edges}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "depth_transfer.json"), "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1, default=str)


if __name__ == "__main__":
    main()
