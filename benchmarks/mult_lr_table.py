"""The multipliers'-LR study as a table: lrm's final validation loss per width against log2 mult_lr (and log2 LR)
from a finished `lrm-mup sweep sweeps/mult_lr.toml` folder, with the optimum per width and what today's default
(mult_lr = the AdamW LR) loses to it. Prints Markdown for benchmarks/RESULTS.md.

    python benchmarks/mult_lr_table.py runs/mult-lr [more sweep folders of the same model]
"""
import argparse
import math
from collections import defaultdict

from lrm_mup.analysis import trial_loss
from lrm_mup.tuning.transfer import sweep_records


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="sweep run folders (lrm-mup sweep --out)")
    args = parser.parse_args()
    grid = defaultdict(dict)  # width -> (log2 lr, log2 mult_lr) -> loss
    for folder in args.folders:
        _, trials = sweep_records(folder)
        for t in trials:
            if t.recipe == "lrm" and t.state == "COMPLETE":
                mult = t.config.get("mult_lr")
                key = (round(t.log2_lr, 3), round(math.log2(mult), 3) if mult else round(t.log2_lr, 3))
                grid[t.width][key] = trial_loss(t)
    for width in sorted(grid):
        points = grid[width]
        lrs = sorted({lr for lr, _ in points})
        mults = sorted({m for _, m in points})
        print(f"\nwidth {width}: val bits/byte (rows log2 LR, columns log2 mult_lr; * optimum, d default)\n")
        print("| log2 LR | " + " | ".join(f"{m:g}" for m in mults) + " |")
        print("|---:|" + "---:|" * len(mults))
        best = min(points, key=points.get)
        for lr in lrs:
            cells = []
            for m in mults:
                v = points.get((lr, m))
                mark = ("*" if (lr, m) == best else "") + ("d" if m == lr else "")
                cells.append("" if v is None else f"{v:.4f}{mark}")
            print(f"| {lr:g} | " + " | ".join(cells) + " |")
        default = {lr: points.get((lr, lr)) for lr in lrs}
        for lr in lrs:
            row = {m: v for (x, m), v in points.items() if x == lr}
            m_best = min(row, key=row.get)
            if default[lr] is not None:
                print(f"\nlog2 LR {lr:g}: best log2 mult_lr {m_best:g} ({row[m_best]:.4f}); the default (mult_lr = LR) "
                      f"{default[lr]:.4f}, {default[lr] - row[m_best]:+.4f} bits/byte")


if __name__ == "__main__":
    main()
