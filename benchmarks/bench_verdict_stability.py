"""How stable the coordinate check's verdicts are: the demo's check and the default check (`lrm-mup coord-check`'s
defaults) over several independent seed sets (seed_base 0, k, 2k, … with k seeds each), with one torch thread.

    python benchmarks/bench_verdict_stability.py [--check demo|default|both] [--sets 5] [--fixed-batch] [--out DIR]
    python benchmarks/bench_verdict_stability.py --judge FILE.json --seeds-per-set 2 [--widths 64,128,256]

The first form runs each seed set and writes DIR/<check>-<mode>-<seed_base>.json; the second re-judges one saved
result with many seeds as consecutive seed sets (seeds are independent runs — each seeds its own init and batches —
so seeds 2..3 of a 10-seed result are the check with seed_base=2, seeds=2), optionally at a subset of its widths.
Prints, per seed set, each recipe's verdict and its worst series with their bands, then the tally per recipe.
"""
import argparse
import json
import os
import time
from collections import Counter

import torch

from lrm_mup.data import load_corpus
from lrm_mup.models import MODELS
from lrm_mup.pipelines.demo import COORD
from lrm_mup.tuning.coord_check import (
    DEFAULT_BASE_WIDTH,
    DEFAULT_DELTA_WIDTH,
    DEFAULT_PROXY,
    DEFAULT_WIDTHS,
    CoordCheckResult,
    coord_check,
)

# the demo's check: its sweep's model (sweeps/demo.toml: depth 2, base width 64, the default head dim) at
# base × COORD["factors"], with COORD's steps, seeds, batch and context
CHECKS = {
    "demo": dict(widths=tuple(64 * f for f in COORD["factors"]), seeds=COORD["seeds"], steps=COORD["steps"],
                 last_steps=COORD["last_steps"], batch_size=COORD["batch_size"], context=COORD["context"],
                 model={"depth": 2}),
    "default": dict(widths=DEFAULT_WIDTHS, seeds=3, steps=10, last_steps=5, batch_size=16, context=32,
                    model=DEFAULT_PROXY),
}


def line(result: CoordCheckResult, worst: int = 2) -> str:
    parts = []
    for r in result.config["recipes"]:
        bad = "; ".join(f"{v.quantity} {v.module} {result.describe(v)}" for v in result.failures(r)[:worst])
        parts.append(f"{r} {result.status(r)}" + (f" ({bad})" if bad and r != "sp" else ""))
    return " | ".join(parts)


def tally(results: list[CoordCheckResult]) -> str:
    counts = {r: Counter(x.status(r) for x in results) for r in results[0].config["recipes"]}
    return "; ".join(f"{r}: " + ", ".join(f"{s} {c[s]}/{len(results)}" for s in ("PASS", "INCONCLUSIVE", "FAIL")
                                          if c[s]) for r, c in counts.items())


def split(path: str, k: int, widths: list[int] | None) -> list[CoordCheckResult]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    config, records = data["config"], data["records"]
    config["head_dims"] = {int(w): d for w, d in config.get("head_dims", {}).items()}
    seeds = sorted({r["seed"] for r in records})
    out = []
    for i in range(len(seeds) // k):
        chosen = set(seeds[i * k:(i + 1) * k])
        sub = [r for r in records if r["seed"] in chosen and (widths is None or r["width"] in widths)]
        out.append(CoordCheckResult({**config, "seeds": k, "seed_base": min(chosen),
                                     "widths": widths or config["widths"]}, sub))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", choices=["demo", "default", "both"], default="both")
    parser.add_argument("--sets", type=int, default=5)
    parser.add_argument("--fixed-batch", action="store_true", help="one fixed batch instead of fresh batches")
    parser.add_argument("--out", default="runs/verdict-stability")
    parser.add_argument("--judge", help="re-judge this saved result as consecutive seed sets instead")
    parser.add_argument("--seeds-per-set", type=int, default=2)
    parser.add_argument("--widths", help="with --judge: judge at these widths only (comma-separated)")
    args = parser.parse_args()
    if args.judge:
        widths = [int(w) for w in args.widths.split(",")] if args.widths else None
        results = split(args.judge, args.seeds_per_set, widths)
        for x in results:
            print(f"seeds from {x.config['seed_base']}: {line(x)}")
        print("tally:", tally(results))
        return
    torch.set_num_threads(1)
    corpus = load_corpus(None)
    os.makedirs(args.out, exist_ok=True)
    mode = "fixed" if args.fixed_batch else "fresh"
    for name in (["demo", "default"] if args.check == "both" else [args.check]):
        c = CHECKS[name]
        results = []
        for i in range(args.sets):
            start = time.perf_counter()
            result = coord_check(lambda w: MODELS["proxy"](w, context=c["context"], **c["model"]), c["widths"],
                                 base_width=DEFAULT_BASE_WIDTH, delta_width=DEFAULT_DELTA_WIDTH, steps=c["steps"],
                                 seeds=c["seeds"], seed_base=i * c["seeds"], last_steps=c["last_steps"],
                                 batch_size=c["batch_size"], context=c["context"], corpus=corpus,
                                 fresh_batches=not args.fixed_batch, progress=False)
            result.to_json(os.path.join(args.out, f"{name}-{mode}-{i * c['seeds']}.json"))
            results.append(result)
            print(f"{name} ({mode}) seeds from {i * c['seeds']}, {time.perf_counter() - start:.0f} s: {line(result)}",
                  flush=True)
        print(f"{name} ({mode}) tally:", tally(results), flush=True)


if __name__ == "__main__":
    main()
