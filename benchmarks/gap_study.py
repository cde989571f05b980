"""Issue 12's open measurements at the demo's target width: what closes the gap to SP's optimum (zero readout/query
init, tuned forward multipliers α, twice the steps) and lrm's placement ablation, on the demo's model, corpus and
budget (sweeps/demo.toml: depth 2, context 64, batch 8, base width 64, width 256, 250 steps, 16 validation batches).

    OMP_NUM_THREADS=1 python benchmarks/gap_study.py --out runs/gap-study     # one or two processes
    python benchmarks/gap_study.py --out runs/gap-study --table                 # Markdown tables from results.json

Each run is one `lrm_mup.training.engine.Run` trained to its last step and validated once (the sweep's rule); its
final validation bits/byte and CPU seconds go to <out>/results.json as soon as it ends. A process claims the next run
no process has claimed (under a file lock), so two processes share the queue and a re-run skips finished runs
(a claim left by a killed process: delete <out>/claims.json). The queue, in priority order (lrm's own baseline,
lrm at log2 LR -7, is sweeps/mult_lr_target.toml's runs at log2 mult_lr -7 (LR) and -9 (LR/4)):
  base:      sp at log2 LR -9 (SP's optimum at 256 in the demo), mup at -7 (its transferred optimum)
  zero-init: mup and lrm (mult_lr = LR) at -7 with zero_init readout + query
  long:      sp at -9 and mup at -7 at 500 steps
  alpha:     mup with the tuning tiers' FULL winner (LR and α tuned by TPE at the proxy width 64)
  placement: lrm at -7, mult_lr LR/4, placement symmetry-free / scalar / no-embedding, seed 0
  more:      mup's own α grid at width 64 (log2 α_in x log2 α_out in {-1, 0, 1}^2) and its best at 256, the
             placements at seed 1, zero_init readout alone, lrm at 500 steps
  mult-lr-seeds: lrm at width 64, log2 LR -7, mult_lr 2^-7 (the old default) and 2^-9, seeds 1 and 2
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from lrm_mup import data as data_mod
from lrm_mup._files import FileLock, json_clean, write_text_atomic
from lrm_mup.training.config import TrainConfig
from lrm_mup.training.engine import Run

DEMO = {"depth": 2, "context": 64, "batch": 8, "base_width": 64, "eval_batches": 16, "steps": 250}
TARGET = 256
PLACEMENTS = ("all", "symmetry-free", "scalar", "no-embedding")


def _alpha_run(width: int, a_in: int, a_out: int) -> tuple[str, str, dict]:
    return ("alpha", f"mup w{width} a_in 2^{a_in} a_out 2^{a_out}",
            {"recipe": "mup", "lr": 2.0 ** -7, "width": width,
             "alphas": {"embedding": 2.0 ** a_in, "readout": 2.0 ** a_out}})


# mup FULL's proxy winner in the tuning tiers (benchmarks/RESULTS.md, issue 12 items 2-4: 12 TPE trials at width 64)
TIERS_FULL = {"lr": 2.0 ** -6.75, "alphas": {"embedding": 2.0 ** -1.88, "readout": 2.0 ** 1.83, "hidden": 2.0 ** -0.72}}
MULT_LR = 2.0 ** -9  # lrm's placement runs: LR/4 at log2 LR -7, the new default, explicit so every process agrees


def variants(results: dict) -> list[tuple[str, str, dict]]:
    """(study, label, TrainConfig overrides) for every run, in priority order; the α run at the target from the
    proxy's own α grid appears once that grid (in `results`) is complete."""
    base = {"sp": -9, "mup": -7}
    out = [("base", f"{r} lr 2^{lr}", {"recipe": r, "lr": 2.0 ** lr}) for r, lr in base.items()]
    zero = ["readout", "query"]
    out += [("zero-init", f"{r} zero readout+query", {"recipe": r, "lr": 2.0 ** -7, "zero_init": zero})
            for r in ("mup", "lrm")]
    out += [("long", f"{r} lr 2^{lr} 500 steps", {"recipe": r, "lr": 2.0 ** lr, "steps": 500})
            for r, lr in base.items()]
    out.append(("alpha", "mup tiers FULL winner", {"recipe": "mup", **TIERS_FULL}))
    place = [("placement", f"lrm {p} seed {seed}",
              {"recipe": "lrm", "lr": 2.0 ** -7, "mult_lr": MULT_LR, "placement": p, "seed": seed})
             for seed in (0, 1) for p in PLACEMENTS if (p, seed) != ("all", 0)]  # all, seed 0: mult_lr_target.toml
    out += place[:3]
    grid = {(a_in, a_out): _alpha_run(64, a_in, a_out) for a_in in (-1, 0, 1) for a_out in (-1, 0, 1)}
    out += grid.values()
    proxy = {a: results[run[1]]["val_bpb"] for a, run in grid.items() if results.get(run[1], {}).get("val_bpb")}
    if len(proxy) == len(grid):
        a_in, a_out = min(proxy, key=proxy.get)
        if (a_in, a_out) != (0, 0):
            out.append(_alpha_run(TARGET, a_in, a_out))
    out += place[3:]
    out += [("zero-init", f"{r} zero readout", {"recipe": r, "lr": 2.0 ** -7, "zero_init": ["readout"]})
            for r in ("mup", "lrm")]
    out.append(("long", "lrm lr 2^-7 500 steps", {"recipe": "lrm", "lr": 2.0 ** -7, "steps": 500}))
    # the mult_lr grid's largest difference (width 64, log2 LR -7: mult_lr = LR vs LR/4) at two more seeds
    out += [("mult-lr-seeds", f"lrm w64 mult_lr 2^{m} seed {seed}",
             {"recipe": "lrm", "lr": 2.0 ** -7, "mult_lr": 2.0 ** m, "width": 64, "seed": seed})
            for seed in (1, 2) for m in (-7, -9)]
    return out


def train(overrides: dict, corpus) -> dict:
    cfg = TrainConfig(**{**DEMO, "width": TARGET, "seed": 0, **overrides})
    cpu = time.process_time()
    run = Run.create(cfg, corpus, progress=False)
    status = "ok"
    for record in run.steps(evaluate=False):
        if not math.isfinite(record.loss):
            status = "diverged"
    val = run.evaluate() if status == "ok" else None
    return {"val_bpb": val, "status": status, "cpu_seconds": time.process_time() - cpu}


def table(results: dict) -> None:
    rows = [(study, label, results[label]) for study, label, _ in variants(results) if label in results]
    for study in dict.fromkeys(s for s, _, _ in rows):
        print(f"\n{study}\n\n| run | val bits/byte | CPU s |\n|---|---:|---:|")
        for s, label, r in rows:
            if s == study:
                v = "diverged" if r["val_bpb"] is None else f"{r['val_bpb']:.4f}"
                print(f"| {label} | {v} | {r['cpu_seconds']:.0f} |")
    print("\nplacement: mean over the seeds run, range, seeds (all at seed 0: sweeps/mult_lr_target.toml)\n")
    for p in PLACEMENTS:
        vals = [results[f"lrm {p} seed {s}"]["val_bpb"] for s in (0, 1) if f"lrm {p} seed {s}" in results]
        vals = [v for v in vals if v is not None]
        if vals:
            print(f"| {p} | {statistics.mean(vals):.4f} | {max(vals) - min(vals):.4f} | {len(vals)} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/gap-study")
    ap.add_argument("--only", default="", help="comma-separated studies (default all)")
    ap.add_argument("--table", action="store_true", help="print the tables and exit")
    args = ap.parse_args()
    path = Path(args.out) / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    load = (lambda: json.loads(path.read_text()) if path.exists() else {})
    if args.table:
        table(load())
        return
    torch.set_num_threads(1)
    only = set(filter(None, args.only.split(",")))
    corpus = data_mod.load_corpus(None, progress=False)
    claims_path, lock = path.with_name("claims.json"), FileLock(path.with_name(".results.lock"))
    while True:
        with lock:  # claim the next run nobody has claimed
            claims = json.loads(claims_path.read_text()) if claims_path.exists() else []
            todo = [v for v in variants(load()) if v[1] not in claims and (not only or v[0] in only)]
            if not todo:
                break
            study, label, overrides = todo[0]
            write_text_atomic(claims_path, json.dumps([*claims, label]) + "\n")
        result = train(overrides, corpus)
        print(f"[{study}] {label}: {result}", flush=True)
        with lock:  # the other process may write too: read, merge, write
            results = load()
            results[label] = {**result, "study": study, "config": overrides}
            write_text_atomic(path, json.dumps(json_clean(results), indent=1) + "\n")


if __name__ == "__main__":
    main()
