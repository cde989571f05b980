"""What each `lrm-mup` command does once its arguments are parsed (`lrm_mup.cli` holds the parser and imports this
module only when a command runs, so that `--help` and `--version` need no torch). Bad input raises an
`lrm_mup.errors.LrmMupError`: the CLI prints it as one line and exits with status 2.

`train` and `transfer` also run under torchrun (`torchrun --nproc_per_node N -m lrm_mup train ...`): every rank runs
the command, rank 0 alone prints and writes (lrm_mup.training.distributed)."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from dataclasses import fields
from pathlib import Path

from . import data as data_mod
from ._files import check_out_folder
from ._names import STORAGE_ENV
from ._secrets import mask_url
from ._threads import parse_workers
from .analysis import equilibrium_table
from .core import _fused
from .core.recipes import DESCRIBE_COLUMNS, RECIPES, describe
from .errors import ConfigError
from .models import check_model, model_builder
from .models.hf import read_config_file
from .models.hybrid import ssm_fields
from .pipelines.ablation import run_ablation
from .pipelines.demo import run_demo
from .pipelines.tuning_report import report_verdict, tuning_report
from .report import write_coord_check_report, write_equilibrium_report
from .training import TrainConfig, distributed, parametrized_model, resumed_config, train
from .training.threads import threads_set
from .tuning import coord_check as cc
from .tuning import equilibrium as eq
from .tuning.sweep import JOURNAL, MANIFEST, load_sweep, run_sweep, summary_lines
from .tuning.sweep import records as sweep_records
from .tuning.tiers import load_ablation
from .tuning.transfer import format_summary, run_transfer

DATA_PARALLEL = ("train", "transfer")  # the commands that run under torchrun
THREADED = ("train", "coord-check", "sweep", "transfer", "equilibrium", "ablation")  # train or check here (--threads)


def _command_threads(args: argparse.Namespace):
    """The threads of a command (lrm_mup._threads): --threads for this process and, handed down, its workers; else
    the rule for this process when it trains itself (one worker, or a torchrun rank among LOCAL_WORLD_SIZE on this
    machine), said on stderr (rank 0) when the command has run (one stopped by bad input says its one-line error
    only). Commands with worker processes say their workers' choice as the workers start; the demo chooses its own
    (lrm_mup.pipelines.demo)."""
    workers = getattr(args, "workers", None) or 1
    here = args.command in THREADED and workers in (1, "1")
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    rank0 = int(os.environ.get("RANK", "0")) == 0
    return threads_set(getattr(args, "threads", None), rule=here, workers=ranks, where="--threads",
                       log=rank0 and here, say_at_end=True)


def run(args: argparse.Namespace) -> int:
    """Run the parsed command `args.command`; returns its exit status."""
    if distributed.launched() and args.command not in DATA_PARALLEL:
        raise ConfigError(f"{args.command!r} does not run under torchrun (WORLD_SIZE={os.environ['WORLD_SIZE']}); "
                          f"only {' and '.join(DATA_PARALLEL)} do: run it as one process")
    _fused.mode()  # a bad LRM_MUP_FUSED is one line before any work (the kernels are built on first use)
    rank = int(os.environ.get("RANK", "0"))
    # every rank computes the same summary lines; rank 0 prints them
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink if rank else sys.stdout), \
            _command_threads(args):
        return COMMANDS[args.command](args)


def ssm_given(args: argparse.Namespace) -> dict:
    """The --ssm-NAME flags given (cli.add_ssm_args), as TrainConfig.ssm: {NAME: value}."""
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("ssm.") and v is not None}


def train_config(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if ssm_given(args):
        given["ssm"] = ssm_given(args)
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
        if ssm_given(args):
            given["ssm"] = ssm_given(args)
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
    print("\ncolumns:")
    name_width = max(map(len, cols))
    for c in cols:
        print(f"  {c.ljust(name_width)}  {DESCRIBE_COLUMNS.get(c, '')}")
    return 0


def cmd_transfer(args) -> int:
    overrides = {k: getattr(args, k) for k in ("device", "compile", "parallel", "micro_batch", "steps")
                 if getattr(args, k) is not None}
    out = args.out or _timestamped("runs/transfer")
    summary = run_transfer(args.source, out, widths=args.widths, lr_offsets=args.lr_offsets,
                           lr_sweep_widths=args.lr_sweep_widths, seeds=args.seeds, overrides=overrides or None,
                           workers=args.workers, log=None if args.quiet else print, storage=args.storage,
                           depths=args.depths)
    print(format_summary(summary))
    print(f"[{out}/transfer.json]")
    return 0


def cmd_coord_check(args) -> int:
    parse_workers(args.workers)  # a bad count: one line, before any work
    bad = [r for r in args.recipes if r not in RECIPES]
    if bad:
        raise ConfigError(f"--recipes: {bad[0]!r} is not a recipe; allowed: {', '.join(RECIPES)}")
    if len(set(args.widths)) < 2 or min(args.widths) <= 0:
        raise ConfigError(f"--widths {args.widths} is invalid: give at least two distinct positive widths")
    for name in ("steps", "seeds"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ConfigError(f"--{name} {getattr(args, name)} is invalid: must be at least 1")
    if args.seed_base < 0:
        raise ConfigError(f"--seed-base {args.seed_base} is invalid: must be at least 0")
    if not 0 < args.confidence < 1:
        raise ConfigError(f"--confidence {args.confidence} is invalid: must lie strictly between 0 and 1")
    out = check_out_folder(args.out or _timestamped("runs/coord-check"), "report folder")  # before all the work
    if args.depths is not None:
        return _depth_coord_check(args, out)
    model = args.model
    if args.model_config is not None and model == "proxy":  # the file names its model class
        model = f"hf:{read_config_file(args.model_config)['model_type']}"
    model_fields = {**cc.DEFAULT_PROXY, "context": args.context}
    data_mod.check_tokenizer(args.tokenizer)
    if args.tokenizer is not None:
        model_fields["vocab"] = data_mod.tokenizer_vocab(args.tokenizer)
    if args.model_config is not None:
        model_fields.update(config=args.model_config, head_dim=None)  # the file's head dim stays fixed
    model_fields.update(ssm_fields(model, ssm_given(args)))  # --ssm-NAME: the hybrid's alone
    for width in (*args.widths, args.base_width, args.delta_width):
        check_model(model, width, **model_fields)  # a width the model cannot take: one line, before any work
    build = lambda width, make=model_builder(model): make(width, **model_fields)  # noqa: E731
    corpus = data_mod.load_corpus(args.data, tokenizer=args.tokenizer)
    result = cc.coord_check(build, args.widths, base_width=args.base_width, delta_width=args.delta_width,
                            recipes=args.recipes, steps=args.steps, seeds=args.seeds, seed_base=args.seed_base,
                            lr=args.lr, optimizer=args.optimizer, corpus=corpus, context=args.context,
                            fresh_batches=cc.FRESH_BATCHES if args.fresh_batches is None else args.fresh_batches,
                            threshold=args.threshold, level=args.confidence,
                            last_steps=max(1, min(5, args.steps // 2)), progress=not args.quiet,
                            workers=args.workers)
    paths = write_coord_check_report(result, out)
    print(result.summary())
    print(f"report: {paths['html']}  numbers: {paths['json']}")
    return coord_check_exit(result, strict=args.strict, strict_inconclusive=args.strict_inconclusive)


def coord_check_exit(result: cc.CoordCheckResult, *, strict: bool, strict_inconclusive: bool) -> int:
    """The exit status of `coord-check`: 1 when --strict (or --strict-inconclusive) and a recipe FAILs; 3 when
    --strict-inconclusive and no recipe fails but one is INCONCLUSIVE; else 0. A check too small to judge
    (`judgeable`) counts by its series' statuses all the same: --strict asks for a verdict."""
    statuses = {result.status(r) for r in result.config["recipes"]}
    if (strict or strict_inconclusive) and "FAIL" in statuses:
        return 1
    return 3 if strict_inconclusive and "INCONCLUSIVE" in statuses else 0


def _depth_coord_check(args, out) -> int:
    """`coord-check --depths`: the check across depth (`tuning.coord_check.depth_coord_check`); its page, numbers and
    summary, and the width check's exit status."""
    if len(set(args.depths)) < 2 or min(args.depths) <= 0:
        raise ConfigError(f"--depths {args.depths} is invalid: give at least two distinct positive depths")
    base_depth = min(args.depths) if args.base_depth is None else args.base_depth
    if base_depth <= 0:
        raise ConfigError(f"--base-depth {base_depth} is invalid: must be a positive integer")
    model_fields = {key: value for key, value in cc.DEFAULT_PROXY.items() if key != "depth"}
    model_fields["context"] = args.context
    build = lambda width, depth, make=model_builder(args.model): make(width, depth=depth, **model_fields)  # noqa: E731
    for width in (args.width, 2 * args.width):
        check_model(args.model, width, **model_fields)  # a width the model cannot take: one line, before any work
    corpus = data_mod.load_corpus(args.data)
    result = cc.depth_coord_check(build, args.depths, width=args.width, base_depth=base_depth,
                                  depth_rule=args.depth_rule, recipes=args.recipes, steps=args.steps,
                                  seeds=args.seeds, lr=args.lr, optimizer=args.optimizer, corpus=corpus,
                                  context=args.context, threshold=args.threshold,
                                  fresh_batches=cc.FRESH_BATCHES if args.fresh_batches is None else args.fresh_batches,
                                  last_steps=max(1, min(5, args.steps // 2)), progress=not args.quiet,
                                  workers=args.workers)
    paths = write_coord_check_report(result, out)  # the width check's page, with depth on the x-axis
    print(result.summary())
    print(f"report: {paths['html']}  numbers: {paths['json']}")
    return coord_check_exit(result, strict=args.strict, strict_inconclusive=args.strict_inconclusive)


def cmd_sweep(args) -> int:
    spec = load_sweep(args.config)
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, not {args.workers}")
    out = args.out or f"runs/{spec.name}"
    storage = args.storage or os.environ.get(STORAGE_ENV)  # the environment keeps a password off the command line
    run_sweep(spec, out, storage=storage, workers=args.workers, progress=not args.quiet)
    where = mask_url(storage) if storage else f"{out}/{JOURNAL}"
    print(f"sweep {spec.name!r} done: results in {out} (storage {where}; lrm_mup.tuning.sweep.records({out!r}))")
    for line in summary_lines(out, spec, storage=storage):
        print("  " + line)
    return 0


def cmd_report(args) -> int:
    out = args.out or f"reports/{Path(args.sweep).resolve().name}"
    path = tuning_report(args.sweep, args.transfer, out, plotlyjs=args.plotlyjs, storage=args.storage)
    for line in report_verdict(path.parent):
        print(line)
    print(f"tuning report: {path}")
    return 0


def cmd_equilibrium(args) -> int:
    if args.abm:
        if args.run_dir is not None:
            raise ConfigError(f"--abm simulates noise alone: give no run folder (got {args.run_dir!r})")
        if len(args.shape) != 2 or min(args.shape) < 1:
            raise ConfigError(f"--shape {args.shape} is invalid: give R,C, two positive integers")
        if not (args.lr > 0 and args.weight_decay > 0):
            raise ConfigError(f"--lr {args.lr:g} / --weight-decay {args.weight_decay:g} is invalid: both must be > 0")
        steps = args.steps if args.steps is not None else max(1000, round(4 / (args.lr * args.weight_decay)))
        print(f"simulating {steps} steps of {args.optimizer} on N(0,1) gradients ...", file=sys.stderr, flush=True)
        print(eq.abm_line(args.optimizer, args.lr, args.weight_decay, steps, args.shape))
        return 0
    if args.run_dir is None:
        raise ConfigError("give a run folder (lrm-mup equilibrium RUN_DIR), or --abm to simulate noise alone")
    progress = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    if args.trial is not None:  # a sweep trial: its norms are in its record
        trial = _sweep_trial(args.run_dir, args.trial, args.recipe)
        out = check_out_folder(args.out or os.path.join(args.run_dir, f"equilibrium-{trial.recipe}-t{trial.trial}"),
                               "output folder")
        rec = eq.trial_equilibrium(trial, log=progress)
    else:
        out = check_out_folder(args.out or args.run_dir, "output folder")  # before the work
        rec = eq.run_equilibrium(args.run_dir, log=progress)
    paths = write_equilibrium_report(rec, out)
    for line in equilibrium_table(rec.series):
        print(line)
    print(f"figure: {paths['html']}  numbers: {paths['json']}")
    return 0


def _sweep_trial(folder: str, number: int, recipe: str | None):
    """Trial `number` (of `recipe`, where the sweep has several) of the sweep in `folder`; one line if not one."""
    if not (Path(folder) / JOURNAL).exists() and not (Path(folder) / MANIFEST).exists():
        raise ConfigError(f"--trial: {folder!r} is not a sweep folder (no {JOURNAL} nor {MANIFEST})")
    found = [t for t in sweep_records(folder) if t.trial == number and recipe in (None, t.recipe)]
    if not found:
        raise ConfigError(f"--trial: the sweep in {folder!r} has no trial {number}"
                          + (f" of recipe {recipe!r}" if recipe else ""))
    if len(found) > 1:
        raise ConfigError(f"--trial {number}: the sweep has one per recipe ({', '.join(t.recipe for t in found)}); "
                          "name one with --recipe")
    return found[0]


def cmd_demo(args) -> int:
    run_demo(args.out, quick=args.quick, data=args.data, sweep_file=args.sweep, workers=args.workers,
             threads=args.threads, log=lambda line: print(line, flush=True))
    return 0


def cmd_ablation(args) -> int:
    for name in ("target", "budgets", "direct_trials", "workers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} {value} is invalid: must be at least 1")
    if not args.seeds:
        raise ConfigError("--seeds is empty: give at least one seed, e.g. --seeds 0,1")
    out = args.out or f"runs/{load_sweep(args.config).name}"
    if args.budget_seeds is not None and not args.budget_seeds:
        raise ConfigError("--budget-seeds is empty: give at least one seed, e.g. --budget-seeds 0")
    path = run_ablation(args.config, out, target=args.target, seeds=args.seeds, budgets=args.budgets,
                        budget_seeds=args.budget_seeds, direct=args.direct, direct_trials=args.direct_trials,
                        workers=args.workers,
                        plotlyjs=args.plotlyjs, log=None if args.quiet else (lambda line: print(line, flush=True)))
    numbers = load_ablation(out)
    print(numbers["verdict"]["sentence"])
    for row in numbers["tiers"]:
        spread = "" if row["seed_range_bpb"] is None else f" (seed range {row['seed_range_bpb']:.4f})"
        mean = "diverged" if row["val_bpb"] is None else f"{row['val_bpb']:.4f}"
        print(f"  {row['recipe']:5s} {row['tier']:4s} {mean} bits/byte at width {numbers['target_width']}{spread}")
    print(f"[{path}]")
    return 0


COMMANDS = {"train": cmd_train, "data": cmd_data, "describe": cmd_describe, "coord-check": cmd_coord_check,
            "sweep": cmd_sweep, "transfer": cmd_transfer, "report": cmd_report, "demo": cmd_demo,
            "equilibrium": cmd_equilibrium, "ablation": cmd_ablation}
