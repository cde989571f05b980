"""The demo's coordinate check on an idle and on a loaded machine: in worker processes chosen by the rule (what the
demo and `lrm-mup coord-check` do now: coord_check(workers="auto")), in one process at the thread rule's count
(lrm_mup._threads; the previous behaviour) and at torch's default threads (the first): the issue-15 target is the
loaded run within 2x of the idle one.

    python benchmarks/bench_load.py [--settings workers,rule,torch] [--widths 64,...,512] [--steps 10] [--seeds 3]
                                    [--busy 2] [--cap 4] [--timeout S]

Each run is a fresh process (torch's default threads are those of a new process) running `coord_check` with the
settings `lrm-mup demo` uses (lrm_mup.pipelines.demo.COORD: widths 64..512, 10 steps, 3 seeds, batch 16, context 32;
the demo sweep's recipes and depth). "loaded": `--busy` CPU-bound Python loops started by this script before the
runs and killed after them, always. A run past `--cap` times the idle time of the same setting is stopped and
reported as "> T s". Prints each time, the threads used, the load seen at the start, and loaded / idle per setting.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUSY = "while True:\n    pass\n"
SETTINGS = {"workers": "worker processes (now)", "rule": "one process, thread rule", "torch": "torch default threads"}


def child(args) -> None:
    """One timed coordinate check in this (fresh) process; one JSON line on stdout."""
    import torch

    from lrm_mup.data import load_corpus
    from lrm_mup.models import proxy
    from lrm_mup.pipelines.demo import COORD, DEMO_TOML
    from lrm_mup.training.threads import threads_set
    from lrm_mup.tuning.coord_check import coord_check
    from lrm_mup.tuning.sweep import load_sweep

    load = os.getloadavg()[0]
    spec = load_sweep(DEMO_TOML)
    corpus = load_corpus(None)
    widths = args.widths or [int(spec.model.get("base_width", 64)) * f for f in COORD["factors"]]
    with threads_set(rule=args.child != "torch", log=True):  # the rule says its choice on stderr
        start = time.perf_counter()
        # this process's threads; with workers each worker's count is in the line they say on stderr
        threads = torch.get_num_threads() if args.child != "workers" else "per worker, see the line"
        steps = args.steps or COORD["steps"]
        coord_check(lambda w: proxy(w, depth=int(spec.model.get("depth", 2)), context=COORD["context"]), widths,
                    base_width=64, delta_width=128, recipes=list(spec.recipes), steps=steps,
                    seeds=args.seeds or COORD["seeds"], last_steps=min(COORD["last_steps"], steps),  # --steps < 5
                    batch_size=COORD["batch_size"], context=COORD["context"], corpus=corpus,
                    progress=args.child == "workers",  # which says its workers on stderr
                    workers="auto" if args.child == "workers" else 1)
        wall = time.perf_counter() - start
    print(json.dumps({"wall": wall, "threads": threads, "load": load}))


def timed(setting: str, args, cap: float | None) -> dict:
    cmd = [sys.executable, __file__, "--child", setting]
    for flag in ("widths", "steps", "seeds"):
        value = getattr(args, flag)
        if value:
            cmd += [f"--{flag}", ",".join(map(str, value)) if flag == "widths" else str(value)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for name in ("OMP_NUM_THREADS", "LRM_MUP_THREADS", "MKL_NUM_THREADS"):  # torch's own default, or the rule's
        env.pop(name, None)
    start = time.perf_counter()
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=cap, check=True)
    except subprocess.TimeoutExpired:
        return {"wall": time.perf_counter() - start, "stopped": True, "threads": None, "load": os.getloadavg()[0]}
    except subprocess.CalledProcessError as e:
        sys.exit(f"bench_load: the {setting} run failed:\n{e.stderr}")
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "stopped": False,
            "line": next((x for x in out.stderr.splitlines() if " worker processes; " in x),
                         next((x for x in out.stderr.splitlines() if x.startswith("threads:")), ""))}


def _wall(r: dict) -> str:
    return f"> {r['wall']:.0f} s (stopped)" if r["stopped"] else f"{r['wall']:7.1f} s"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", choices=list(SETTINGS), help=argparse.SUPPRESS)
    p.add_argument("--settings", type=lambda s: s.split(","), default=list(SETTINGS),
                   help=f"which, in order (default {','.join(SETTINGS)})")
    p.add_argument("--widths", type=lambda s: [int(x) for x in s.split(",")], help="default: the demo's 64..512")
    p.add_argument("--steps", type=int, help="default: the demo's 10")
    p.add_argument("--seeds", type=int, help="default: the demo's 3")
    p.add_argument("--busy", type=int, default=2, help="CPU-bound background processes of the loaded runs")
    p.add_argument("--cap", type=float, default=4.0, help="stop a loaded run past this many times its idle time")
    p.add_argument("--timeout", type=float, help="stop any run past this many seconds (reported as '> T s')")
    args = p.parse_args()
    if args.child:
        return child(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still runs the finally that ends the loops
    print(f"machine: {os.cpu_count()} CPUs, affinity {len(os.sched_getaffinity(0))}, load average at the start "
          f"{os.getloadavg()[0]:.1f}; settings: widths {args.widths or 'demo'}, steps {args.steps or 'demo'}, "
          f"seeds {args.seeds or 'demo'}", flush=True)
    bad = [s for s in args.settings if s not in SETTINGS]
    if bad:
        sys.exit(f"bench_load: --settings {bad[0]!r} is not one of {', '.join(SETTINGS)}")
    settings = {s: SETTINGS[s] for s in args.settings}
    idle = {}
    for s in settings:
        idle[s] = timed(s, args, args.timeout)
        print(f"idle    {settings[s]:30s} {_wall(idle[s])}  threads {idle[s]['threads']}  "
              f"load {idle[s]['load']:.1f}  {idle[s].get('line', '')}", flush=True)
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(args.busy)]
    try:
        time.sleep(2)  # the loops are running before the runs start
        for s in settings:
            cap = args.cap * idle[s]["wall"]
            r = timed(s, args, cap if args.timeout is None else min(cap, args.timeout))
            ratio = (f"  loaded/idle {'>' if r['stopped'] else ''}{r['wall'] / idle[s]['wall']:.2f}"
                     + (" (idle run stopped: not a ratio)" if idle[s]["stopped"] else ""))
            print(f"loaded  {settings[s]:30s} {_wall(r)}  threads {r['threads']}  load {r['load']:.1f}  "
                  f"{r.get('line', '')}{ratio}", flush=True)
    finally:
        for b in busy:
            b.kill()
        for b in busy:
            b.wait()


if __name__ == "__main__":
    main()
