"""How the residual stream's size moves with depth under each depth rule (issue 13): the check across depth
(`depth_coord_check`) at more depths and seeds than the test, and the local slope between neighbouring depths of the
stream leaving the last block (`blocks.last`: its level `act`, its change since init `dact`) at init and over the last
steps, next to what the rule prescribes.

What the rules prescribe for the stream x_L = x_0 + Σ_l (L_base/L)^α F_l(x_l): at init the branch outputs F_l are
Θ(1) with independent signs, so their sum has variance L · (L_base/L)^{2α} v_b (v_b: one branch's variance) and

    |x_L|² ≈ e² + L_base^{2α} v_b · L^{1−2α}        (e: the embedding's size)

whose slope against log2 L is (1 − 2α)/2 × the branches' share of the variance: +1/2 × share without a rule, 0 under
"sqrt", −1/2 × share under "complete". Under "complete" that share falls like 1/L, so the slope is negative at small
depths and goes to 0 (halving per doubling once the branches are a small part): the stream is Θ(1) in the limit, as
CompleteP claims, and a finite-depth check sees a shrinking stream. The change since init, Σ_l (L_base/L)^α ΔF_l with
coherent updates of size LR_block ∝ (L/L_base)^{α−1}, is Θ(1) in L under both rules, with O(L_base/L) corrections
(block l's update changes the input of the blocks after it) that also vanish with depth. A real failure (a wrong
exponent) keeps its slope at every depth; a finite-depth correction shrinks toward 0 as the depths grow. The script
prints the init prediction from the base depth's own numbers (`analysis.stream_share`, `stream_curve`: e and v_b read
off the embedding's and the stream's mean |·| at L_base, treating mean |·| as ∝ RMS) next to the measured init slope;
under "complete" that curve is the declared exception the check judges the stream against
(`analysis.stream_correction`).

    OMP_NUM_THREADS=1 python benchmarks/bench_depth_stream.py --out benchmarks/depth_stream.json
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import time

import torch

from lrm_mup.analysis import seed_means, slope, stream_curve, stream_share
from lrm_mup.data import load_corpus
from lrm_mup.models import GPT, GPTConfig
from lrm_mup.tuning.coord_check import depth_coord_check


def local_slopes(depths: list[int], values: list[float]) -> list[float]:
    """Slope of log2 value against log2 depth between neighbouring depths."""
    return [slope(depths[i:i + 2], values[i:i + 2]) for i in range(len(depths) - 1)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depths", default="2,4,8,16,32")
    p.add_argument("--rules", default="none,sqrt,complete")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--fresh-batches", action="store_true", help="a fresh batch per step (default: one fixed batch, "
                   "as tests/test_depth.py measured)")
    p.add_argument("--data", default="tests/data/shakespeare")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/depth_stream.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    depths = [int(d) for d in args.depths.split(",")]
    corpus = load_corpus(args.data, progress=False)
    build = lambda width, depth: GPT(GPTConfig(width=width, depth=depth, context=16, head_dim=16))  # noqa: E731
    out = {"machine": platform.machine(), "threads": args.threads, "depths": depths, "seeds": args.seeds,
           "steps": args.steps, "width": args.width, "fresh_batches": args.fresh_batches, "rules": {}}
    last = args.steps // 2
    for rule in args.rules.split(","):
        start = time.perf_counter()
        result = depth_coord_check(build, depths, width=args.width, base_depth=depths[0], depth_rule=rule,
                                   recipes=("mup",), steps=args.steps, seeds=args.seeds, context=16, batch_size=8,
                                   last_steps=last, corpus=corpus, fresh_batches=args.fresh_batches, progress=False)
        seconds = time.perf_counter() - start
        means = seed_means(result.records, "depth")
        alpha = result.config["depth_alpha"]
        row = {"seconds": seconds}
        late = range(args.steps - last + 1, args.steps + 1)
        for quantity in ("act", "dact"):
            by_step = means[("mup", "blocks.last", quantity)]
            at0 = [by_step[0][d] for d in depths]
            window = [math.exp(sum(math.log(by_step[t][d]) for t in late) / len(late)) for d in depths]
            row[quantity] = {"init": at0, "late": window, "local_init": local_slopes(depths, at0) if quantity == "act"
                             else None, "local_late": local_slopes(depths, window), "slope_late": slope(depths, window)}
        share = stream_share(result.config, result.records)  # the branches' share at init, at the base depth
        predicted = [v * row["act"]["init"][0] / stream_curve(depths[:1], depths[0], share, alpha)[0]
                     for v in stream_curve(depths, depths[0], share, alpha)]
        row["act"]["predicted_init"] = predicted
        row["act"]["predicted_local_init"] = local_slopes(depths, predicted)
        verdicts = {(v.module, v.quantity): v for v in result.verdicts}
        stream = {q: verdicts[("blocks.last", q)] for q in ("act", "dact")}
        row["verdicts"] = {q: {"status": v.status, "slope": v.slope, "band": [v.low, v.high]}
                           for q, v in stream.items()}
        row["failed"] = sorted(f"{v.quantity} {v.module}" for v in result.verdicts if v.status == "fail")
        out["rules"][rule] = row
        fmt = lambda xs: " ".join(f"{x:+.2f}" for x in xs)  # noqa: E731
        print(f"{rule} (α {alpha:g}), {seconds:.0f} s: verdicts " + ", ".join(
            f"{q} {v['status']} {v['slope']:+.2f} [{v['band'][0]:+.2f}, {v['band'][1]:+.2f}]"
            for q, v in row["verdicts"].items()) + f"; failed: {', '.join(row['failed']) or 'none'}")
        act, dact = row["act"], row["dact"]
        print(f"    act init local slopes {fmt(act['local_init'])} (predicted {fmt(act['predicted_local_init'])})")
        print(f"    act late local slopes {fmt(act['local_late'])}; dact late local {fmt(dact['local_late'])}")
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
