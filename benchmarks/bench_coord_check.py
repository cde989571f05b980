"""Time the default coordinate check: recipes sp, lr-only, mup, lrm × widths 64..512 × 10 steps × 3 seeds on the
Shakespeare corpus, the proxy as `lrm-mup coord-check` builds it. Target: under 2 minutes on a 2-core CPU.

    python benchmarks/bench_coord_check.py [--threads N] [--report DIR]

Prints the wall time, the process CPU time (with one thread: the wall time on an idle machine), the machine with its
load average (other processes slow the wall time, and two OpenMP threads stall badly when a core is taken), and the
verdicts (the summary).
"""
import argparse
import os
import platform
import time

import torch

from lrm_mup.data import load_corpus
from lrm_mup.models import proxy
from lrm_mup.tuning.coord_check import (
    DEFAULT_BASE_WIDTH,
    DEFAULT_DELTA_WIDTH,
    DEFAULT_PROXY,
    DEFAULT_WIDTHS,
    coord_check,
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--report", default=None, help="also write the HTML/JSON report into this folder")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    corpus = load_corpus(None)  # fetched once, outside the timing
    context = 32

    def build(width):
        return proxy(width, **DEFAULT_PROXY, context=context)

    start, cpu = time.perf_counter(), time.process_time()
    result = coord_check(build, DEFAULT_WIDTHS, base_width=DEFAULT_BASE_WIDTH, delta_width=DEFAULT_DELTA_WIDTH,
                         corpus=corpus, context=context, progress=False)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average at the end {load:.1f}")
    print(f"wall time: {wall:.1f} s ({'under' if wall < 120 else 'OVER'} the 2 min target), CPU time {cpu:.1f} s, "
          f"{len(result.records)} records")
    print(result.summary(worst=8))
    if args.report:
        from lrm_mup.report import write_coord_check_report

        print(write_coord_check_report(result, args.report))


if __name__ == "__main__":
    main()
