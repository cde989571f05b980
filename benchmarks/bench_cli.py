"""Wall time of `lrm-mup --help`, `lrm-mup train --help` and `lrm-mup --version` (the console script of this
environment, else `python -m lrm_mup`), against a bare `python -c pass` and `python -c "import torch"`: the parser
imports no torch, so help costs about a bare interpreter start. Each command runs `--repeats` times (after one
warm-up run that fills the OS file cache); the median and the range are printed, with the machine and its load.

    python benchmarks/bench_cli.py [--repeats 10]
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def timed(argv: list[str], repeats: int) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run(argv, env=env, capture_output=True, check=True)  # warm-up: the file cache
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, env=env, capture_output=True, check=True)
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    script = shutil.which("lrm-mup", path=str(Path(sys.executable).parent))
    cli = [script] if script else [sys.executable, "-m", "lrm_mup"]
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        'python -c "import torch"': [sys.executable, "-c", "import torch"],
        "lrm-mup --help": [*cli, "--help"],
        "lrm-mup train --help": [*cli, "train", "--help"],
        "lrm-mup --version": [*cli, "--version"],
    }
    load = os.getloadavg()[0]
    print(f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
          f"{platform.python_version()}, load average {load:.1f}; {'console script' if script else 'python -m lrm_mup'}"
          f", {args.repeats} runs each after one warm-up")
    print("| command | median s | min s | max s |\n|---|---:|---:|---:|")
    for name, argv in cases.items():
        ts = timed(argv, args.repeats)
        print(f"| `{name}` | {statistics.median(ts):.3f} | {min(ts):.3f} | {max(ts):.3f} |")


if __name__ == "__main__":
    main()
