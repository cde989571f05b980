"""Symmetry drift in bfloat16 (issue 13 item 2; arXiv 2601.04890 §4.1): the lrm proxy trained under CPU bf16 autocast
with the multipliers' weight decay off and at 2e-3 (lrm_mup.core.optim.MULTIPLIER_WD), recording the Q/K row-multiplier
ratio and the residual-branch output norms over the steps (`lrm_mup.tuning.equilibrium.symmetry_drift`).

    python benchmarks/bench_drift.py [--steps 3000] [--mult-lr 0.1] [--every 250] [--out benchmarks/drift.json]

The multiplier LR is raised (0.1) so that ηλT, the number of weight-decay time constants, reaches ~1 in a CPU-sized
run: the decay's pull acts on the timescale 1/(ηλ), the noise's push per step on η.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lrm_mup.core.optim import MULTIPLIER_WD
from lrm_mup.report import drift_section, write_html
from lrm_mup.training import TrainConfig
from lrm_mup.tuning.equilibrium import symmetry_drift


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--mult-lr", type=float, default=0.1)
    p.add_argument("--every", type=int, default=250)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--out", default="benchmarks/drift.json")
    p.add_argument("--html", help="also a Plotly figure of both trajectories")
    args = p.parse_args()
    torch.set_num_threads(1)
    result = {}
    for wd in (0.0, MULTIPLIER_WD):
        cfg = TrainConfig(recipe="lrm", width=args.width, base_width=16, depth=2, head_dim=8, context=32, batch=4,
                          steps=args.steps, schedule="constant", warmup=0, mult_lr=args.mult_lr, mult_wd=wd,
                          data="tests/data/shakespeare", device="cpu")
        start = time.perf_counter()
        rows = symmetry_drift(cfg, every=args.every)
        result[f"mult_wd={wd:g}"] = rows
        last = rows[-1]
        print(f"mult_wd={wd:g}: {time.perf_counter() - start:.0f} s; at step {last['step']}: |log10 rQ/rK| "
              f"{last['qk']:.3f}, residual-branch RMS {last['branch']:.4g} (init {rows[0]['branch']:.4g}), "
              f"loss {last['loss']:.3f}", flush=True)
        for r in rows:
            print(f"  step {r['step']:5d}  qk {r['qk']:.3f}  branch {r['branch']:10.4g}  loss {r['loss']:.3f}")
    with open(args.out, "w") as f:
        json.dump({"config": {"width": args.width, "steps": args.steps, "mult_lr": args.mult_lr}, "runs": result},
                  f, indent=1)
    if args.html:  # the report's renderer (lrm_mup.report.drift_section), on the numbers just written
        write_html(args.html, "bf16 symmetry drift", drift_section(json.loads(Path(args.out).read_text())))

if __name__ == "__main__":
    main()
