"""Hyperparameter transfer: train the proxy's best settings at target widths, and read off how well they transferred.

`run_transfer(best, out_dir)` takes the best proxy configuration per recipe (a sweep folder via
`lrm_mup.tuning.sweep.best_params`, or a JSON file {recipe: TrainConfig dict}; `load_best`) and trains, per recipe:

- the proxy config again at the proxy width (the reference point of the width-scaling fits),
- the same config at each target width, with `base_width`/`delta_width` untouched so that proxy and target share one
  μP base (REFERENCE §2, mup #25), and with the schedule, steps, batch and regularization kept fixed (§3: they are not
  covered by the transfer claim),
- a small direct LR sweep at the largest target width: the transferred LR × 2^offset (offsets -2, -1, +1, +2 by
  default; every LR of the run is shifted together, so tuned ratios such as mult_lr/lr are kept).

Across depth (`depths=`, `lrm-mup transfer --depths 8`): every target width × target depth, under the proxy's depth
rule against its base depth (`lrm_mup.core.depth`), the direct LR sweep at the deepest target (`plan_runs`).

The direct sweep tells how far the transferred LR is from the target's own optimum on that grid (`lr_gap_log2`,
transferred − optimum) and what that costs (`loss_gap_bpb`, ≥ 0). An optimum on the grid's edge makes the gap a lower
bound (`optimum_at_edge`).

Every run is exactly one `train(cfg, out)` call in its own folder under `out_dir/runs/`; `workers=N` hands these calls
to N processes (one CPU share each). Under torchrun (`torchrun --nproc_per_node 8 -m lrm_mup transfer ...`, or across
machines) every rank walks the same plan and each run is data-parallel over all of them (lrm_mup.distributed); rank 0
writes the files. A run folder that is already complete is read, not retrained, so an interrupted transfer continues
where it stopped. `out_dir/transfer.json` holds the summary, `out_dir/best.json` the proxy configs.

`multiplier_scaling(run_dirs)` is the width-scaling analysis of the learned multipliers (paper Fig. 5): for `lrm` runs
at several widths it reads each checkpoint (`weights_only=True`), rebuilds the layer table from the run's config on
the meta device (roles and the fixed μP factor `fixed_mult`, which is not in the state dict), and fits the slope of
log2(multiplier) against log2(width) per module role: the total multiplier fixed_mult × learned, the fixed μP part and
the learned part alone, next to the paper's predictions (d⁻¹ for matrices and the LM head, d⁻² for the query·key
product, d⁰ for the embedding). When the fixed μP factor is right the learned part is about flat.

Every number computed from the runs (the per-recipe summary, the width-scaling fits, and the analysis of sweep
trials) is `lrm_mup.analysis`'s; this module plans and runs the transfer and reads run folders into records
(`TransferSummary`, `MultiplierValues`).
"""
from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from .. import analysis
from .._files import check_out_folder, undo_on_error, write_json_atomic
from .._threads import choose_threads
from ..core.multipliers import multiplied_modules
from ..data import load_corpus
from ..errors import ConfigError, LrmMupError, MissingError, RecordError, TransferError
from ..records import LayerMultipliers, MultiplierScaling, MultiplierValues, SweepTrial, TransferRun, TransferSummary
from ..training import TrainConfig, TrainResult, distributed, parametrized_model, train
from ..training.threads import apply_threads, threads_set
from . import sweep

__all__ = ["run_transfer", "plan_runs", "PlannedRun", "run_one", "load_best", "sweep_spec", "sweep_records",
           "load_transfer", "summarize", "multiplier_values", "multiplier_scaling", "format_scaling",
           "format_summary", "default_widths", "shift_lr", "SUMMARY", "BEST", "DEFAULT_OFFSETS"]

SUMMARY = "transfer.json"
BEST = "best.json"
DEFAULT_OFFSETS = (-2, -1, 1, 2)
CPU_FACTORS = (4, 8)                # default target widths on CPU: 4× and 8× the proxy width
GPU_WIDTHS = (1024, 2048, 4096)     # default target widths on CUDA (bf16 autocast and compile come with the device)


def _finite(x) -> float | None:
    """JSON-safe number: NaN/inf become None."""
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


# ----------------------------------------------------------------------------------------------------------
# where the proxy's best settings come from


def load_best(source: str | os.PathLike | dict, *, storage: str | None = None) -> dict[str, dict]:
    """The best proxy config per recipe, {recipe: TrainConfig dict}, from

    - a dict of that form,
    - a JSON file of that form (or a transfer folder's best.json),
    - a sweep run folder (`runs/<name>/` from `lrm-mup sweep`, its trials in its optuna.journal or in the database its
      sweep.json names): `lrm_mup.tuning.sweep.best_params`. `storage`: that database's URL where sweep.json masks it
      (default: the environment variable LRM_MUP_STORAGE; `lrm_mup.tuning.sweep.folder_storage`).
    """
    if isinstance(source, dict):
        raw = source
    else:
        path = Path(source)
        if not path.exists():
            raise MissingError(f"best-settings source {str(path)!r} does not exist: pass a sweep run folder "
                               "(runs/NAME from `lrm-mup sweep`) or a JSON file {recipe: config}")
        if path.is_dir() and _is_sweep_folder(path):
            raw = _best_from_sweep(path, storage)
        elif path.is_dir() and not (path / BEST).exists():
            raise MissingError(f"{str(path)!r} is not a sweep run folder (no {sweep.MANIFEST} nor "
                               f"{sweep.JOURNAL}) nor a transfer folder (no {BEST})")
        else:
            path = path / BEST if path.is_dir() else path
            if storage is not None:
                raise TransferError(f"--storage is for a sweep folder, and {str(path)!r} is a best-settings file: "
                                    "leave --storage out")
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as e:
                raise TransferError(f"{str(path)!r} is not a readable JSON file ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0] if str(e) else ''}); expected {{recipe: config}}, as "
                                    f"a transfer writes into {BEST}") from None
    if not isinstance(raw, dict) or not raw:
        raise TransferError("best settings must be a non-empty {recipe: TrainConfig dict}")
    out = {}
    for recipe, cfg in raw.items():
        if not isinstance(cfg, dict):
            raise TransferError(f"best settings for {recipe!r} must be a TrainConfig dict, not {type(cfg).__name__}")
        cfg = {**cfg, "recipe": cfg.get("recipe", recipe)}
        if cfg["recipe"] != recipe:
            raise TransferError(f"best settings under {recipe!r} are for recipe {cfg['recipe']!r}")
        try:
            out[recipe] = asdict(TrainConfig.from_dict(cfg))  # validated, every field filled in
        except ConfigError as e:
            raise TransferError(f"best settings for {recipe!r}: {e}") from None
    return out


def _is_sweep_folder(path: Path) -> bool:
    return (path / sweep.MANIFEST).exists() or (path / sweep.JOURNAL).exists()


def _best_from_sweep(folder: Path, storage: str | None = None) -> dict[str, dict]:
    spec = sweep_spec(folder)
    best = (sweep.best_params(folder, spec, storage=storage) if spec is not None else
            analysis.best_configs(sweep.records(folder, storage=storage)))
    if not best:
        raise TransferError(f"sweep {str(folder)!r} has no setting whose seeds all converged at its proxy width (no "
                            "finished trial yet, or every one diverged): nothing to transfer")
    return best


def sweep_spec(folder: str | os.PathLike):
    """The SweepSpec a sweep run folder was run with (from its sweep.json manifest), or None without one."""
    manifest = sweep.read_manifest(folder)
    if manifest is None:
        return None
    return sweep.parse_sweep(manifest.spec, source=str(Path(folder) / sweep.MANIFEST))


def sweep_records(folder: str | os.PathLike, *, storage: str | None = None) -> tuple[object, list[SweepTrial]]:
    """(spec or None, trials) of a sweep run folder; `storage` as for `load_best`."""
    folder = Path(folder)
    if not folder.exists():
        raise MissingError(f"sweep folder {str(folder)!r} does not exist")
    spec = sweep_spec(folder)
    return spec, sweep.records(folder, spec, storage=storage)


# ----------------------------------------------------------------------------------------------------------
# the plan: one entry per training run


@dataclass(frozen=True)
class PlannedRun:
    name: str            # folder under out_dir/runs
    recipe: str
    width: int
    offset: int          # log2 LR offset from the transferred LR (0: the transferred LR itself)
    seed: int
    role: str            # "proxy" (proxy width and depth), "target" (transferred LR) or "lr-sweep"
    config: dict         # TrainConfig dict
    depth: int = 2       # blocks (the config's "depth")

    @property
    def log2_lr(self) -> float:
        return math.log2(self.config["lr"])


def default_widths(proxy_width: int, device: str = "auto") -> list[int]:
    """Target widths: 1k-4k on a GPU, 4× and 8× the proxy width on a CPU."""
    if distributed.SINGLE.device(device).type == "cuda":
        widths = [w for w in GPU_WIDTHS if w > proxy_width]
        if widths:
            return widths
    return [proxy_width * f for f in CPU_FACTORS]


def shift_lr(cfg: dict, offset: float) -> dict:
    """Every LR of the config × 2^offset (lr, and adam_lr / mult_lr where set), so their ratios are kept."""
    factor = 2.0 ** offset
    out = dict(cfg)
    for key in ("lr", "adam_lr", "mult_lr"):
        if out.get(key) is not None:
            out[key] = out[key] * factor
    return out


def plan_runs(best: dict[str, dict], widths: list[int] | None = None, *, lr_offsets: Iterable[int] = DEFAULT_OFFSETS,
              lr_sweep_widths: list[int] | None = None, seeds: list[int] | None = None,
              overrides: dict | None = None, include_proxy: bool = True,
              depths: list[int] | None = None) -> list[PlannedRun]:
    """The runs of a transfer, validated before anything trains. `widths`: target widths (default per recipe:
    `default_widths`, or the proxy's width alone when `depths` is given); `lr_sweep_widths`: where the direct LR
    sweep runs (default: the largest target width); `overrides`: TrainConfig fields set on every run (e.g. device,
    steps: changing steps breaks the comparison with the proxy, so it is for smoke tests).

    `depths`: target depths (blocks), for a transfer across depth; every target is trained at each width × depth,
    and the direct LR sweep at the deepest. The proxy's depth rule is kept, with its base depth (`base_depth`, or,
    unset, the proxy's depth: the depth its HPs were tuned at), so a target of depth L gets the rule's factors at
    L against L_base (`lrm_mup.core.depth`); under depth rule "none" the same LR goes to the deeper model unchanged
    (the comparison without the rule). Run folders are named `RECIPE-wW-dD-lrO`."""
    offsets = sorted({int(o) for o in lr_offsets} - {0})
    if depths is not None and not (depths and all(isinstance(d, int) and d > 0 for d in depths)):
        raise TransferError(f"target depths {list(depths)} are invalid: give positive block counts, e.g. 4,8")
    runs = []
    for recipe, proxy_cfg in best.items():
        proxy_cfg = {**proxy_cfg, **(overrides or {})}
        pw, pd = int(proxy_cfg["width"]), int(proxy_cfg.get("depth", 2))
        if depths is not None:
            _check_depth_transfer(recipe, proxy_cfg, depths)
            proxy_cfg["base_depth"] = proxy_cfg.get("base_depth") or pd
        targets = (sorted(set(widths)) if widths else [pw] if depths is not None
                   else default_widths(pw, proxy_cfg.get("device", "auto")))
        if any(w <= 0 for w in targets):
            raise TransferError(f"target widths must be positive, got {targets}")
        target_depths = sorted(set(depths)) if depths is not None else [pd]
        sweep_at = lr_sweep_widths if lr_sweep_widths is not None else targets[-1:]
        for w in sweep_at:
            if w not in targets:
                raise TransferError(f"LR-sweep width {w} is not one of the target widths {targets}")
        for seed in seeds if seeds else [int(proxy_cfg["seed"])]:
            pairs = [(w, d) for w in targets for d in target_depths]
            entries = [(pw, pd, 0, "proxy")] if include_proxy and (pw, pd) not in pairs else []
            for w, d in pairs:
                entries.append((w, d, 0, "target"))
                if w in sweep_at and d == target_depths[-1]:
                    entries += [(w, d, o, "lr-sweep") for o in offsets]
            for w, d, o, role in entries:
                cfg = shift_lr({**proxy_cfg, "width": w, "depth": d, "seed": seed}, o)
                where = f"width {w}" + (f", depth {d}" if depths is not None else "")
                try:
                    cfg = asdict(TrainConfig.from_dict(cfg))
                except ConfigError as e:
                    raise TransferError(f"{recipe} at {where}: {e}") from None
                suffix = f"-s{seed}" if seeds else ""
                name = f"{recipe}-w{w}" + (f"-d{d}" if depths is not None else "") + f"-lr{o:+d}{suffix}"
                runs.append(PlannedRun(name, recipe, w, o, seed, role, cfg, d))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise TransferError("two runs of the plan share a folder name; give distinct widths/seeds")
    if depths is not None:
        for cfg in {(r.recipe, r.width, r.depth): r.config for r in runs}.values():  # one per shape: LRs, seeds aside
            _check_builds(cfg)  # a depth rule the model cannot take: one line, before anything trains
    return runs


def _check_depth_transfer(recipe: str, cfg: dict, depths: list[int]) -> None:
    """A proxy config that can be transferred across depth: a model whose depth the config sets (a user's builder
    `pkg.module:build` gets the width alone, so only its own depth is allowed)."""
    model = cfg.get("model") or "proxy"
    if ":" in model and not model.startswith("hf:") and set(depths) != {int(cfg.get("depth", 2))}:
        raise TransferError(f"{recipe}: model {model!r} is built from the width alone, so its depth cannot be set; "
                            "transfer across depth needs the proxy, hybrid or an hf: model")


def _check_builds(cfg: dict) -> None:
    """The config's model parametrizes (on the meta device: the layer table only): its depth rule finds the
    residual branches at every depth (`lrm_mup.core.depth.plan`)."""
    try:
        parametrized_model(TrainConfig.from_dict(cfg), device="meta")
    except LrmMupError as e:
        raise TransferError(f"{cfg['recipe']} at width {cfg['width']}, depth {cfg['depth']}: {e}") from None


# ----------------------------------------------------------------------------------------------------------
# running it


def _finished(run_dir: Path) -> dict | None:
    """The final status row of a complete run folder, else None (also for a metrics file whose last line does not
    parse: a run that stopped mid-write is not complete, and `run_one` continues it)."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        return None
    lines = [line for line in metrics.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    try:
        last = json.loads(lines[-1]) if lines else None
    except ValueError:
        return None
    return last if isinstance(last, dict) and "status" in last and last["status"] != "stopped" else None


def run_one(planned: PlannedRun, run_dir: Path, corpus=None, progress: bool = False) -> TrainResult:
    """One run = one `train(cfg, out)` call (the unit a multi-GPU launcher would hand to a worker). A complete folder
    is read back; an interrupted one with a checkpoint resumes; one without is started again."""
    cfg = TrainConfig.from_dict(planned.config)
    final = _finished(run_dir)
    if final is not None:
        try:
            done = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, ValueError) as e:  # ConfigError is a ValueError too
            raise TransferError(f"run folder {str(run_dir)!r} has no readable config.json ({type(e).__name__}); "
                                "delete that run folder and run the transfer again (it retrains that run only)") \
                from None
        diff = done.differences(cfg)
        if diff:
            raise TransferError(f"run folder {str(run_dir)!r} holds a different config ({', '.join(diff)}): "
                                "use another --out")
        return TrainResult(**{k: final[k] for k in ("status", "step", "train_loss", "val_bpb", "tokens", "flops",
                                                     "seconds")})
    if (run_dir / "checkpoint.pt").exists():
        return train(cfg, run_dir, resume=True, progress=progress, corpus=corpus)
    if run_dir.exists() and distributed.setup().main:
        shutil.rmtree(run_dir)  # our own folder, started and killed before its first checkpoint
    return train(cfg, run_dir, progress=progress, corpus=corpus)


def run_transfer(best, out_dir: str | os.PathLike, *, widths: list[int] | None = None,
                 lr_offsets: Iterable[int] = DEFAULT_OFFSETS, lr_sweep_widths: list[int] | None = None,
                 seeds: list[int] | None = None, overrides: dict | None = None, include_proxy: bool = True,
                 workers: int = 1, log: Callable[[str], None] | None = print,
                 progress_bars: bool = False, storage: str | None = None,
                 depths: list[int] | None = None) -> TransferSummary:
    """Train the plan (see the module doc) under `out_dir` and write `out_dir/transfer.json`; returns its record.
    `best`: anything `load_best` takes (`storage`: the database URL of a sweep folder, as there). `workers`: runs
    trained at once, each in its own process with its share of the cores (1: in this process). `log`: receives one
    line per run (None: silent). Bad input (the source, the plan, the folder, the data) is refused before anything
    is written; a start that fails before the first run leaves nothing in `out_dir`. `depths`: target depths, a
    transfer across depth (`plan_runs`)."""
    if not (isinstance(workers, int) and workers >= 1):
        raise TransferError(f"workers must be a positive integer, not {workers!r}")
    world = distributed.setup()
    if world.size > 1 and workers > 1:
        raise TransferError(f"workers={workers} under torchrun: the {world.size} processes already share every run; "
                            "leave workers at 1")
    source = str(best) if not isinstance(best, dict) else "dict"
    best = distributed.on_main(lambda: load_best(best, storage=storage), world)  # a sweep is read once
    plan = plan_runs(best, widths, lr_offsets=lr_offsets, lr_sweep_widths=lr_sweep_widths, seeds=seeds,
                     overrides=overrides, include_proxy=include_proxy, depths=depths)
    out = Path(out_dir)
    check_out_folder(out, "transfer folder")
    for data, tok in dict.fromkeys((p.config["data"], p.config.get("tokenizer")) for p in plan):  # every context
        corpus = _corpus(data, log is not None, tok)                                               # fitting its data
        for context in sorted({p.config["context"] for p in plan if p.config["data"] == data}):
            corpus.check_context(context)
    log = log if world.main else None

    def write_best():
        with undo_on_error(out):
            (out / "runs").mkdir(parents=True, exist_ok=True)
            write_json_atomic(out / BEST, best)

    distributed.on_main(write_best, world)
    start = time.perf_counter()
    results: dict[str, TrainResult] = {}

    def report(p: PlannedRun, res: TrainResult, reused: bool) -> None:
        results[p.name] = res
        if log is not None:
            shape = f"w{p.width}" + (f" d{p.depth}" if depths else "")
            log(f"[{len(results)}/{len(plan)}] {p.recipe} {shape} lr 2^{p.log2_lr:.2f} ({p.role}, {p.offset:+d}): "
                f"{res.status}, val {res.val_bpb:.4f} bpb, {res.seconds:.1f} s" + (" (done before)" if reused else ""))

    todo = []
    for p in plan:
        if _finished(out / "runs" / p.name) is not None:
            report(p, run_one(p, out / "runs" / p.name), True)
        else:
            todo.append(p)
    if workers == 1 or len(todo) <= 1:
        with threads_set():  # this process: the caller's threads, or $LRM_MUP_THREADS
            for p in todo:
                report(p, _train_one(p, str(out / "runs" / p.name), progress_bars, log is not None), False)
    else:
        todo.sort(key=lambda p: -p.width)  # the longest first: the pool stays busy to the end
        threads = choose_threads(min(workers, len(todo)))  # lrm_mup._threads: before the workers add their load
        if log is not None:
            print(threads.line(), file=sys.stderr, flush=True)
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=apply_threads, initargs=(threads.threads,)) as pool:
            pending = {pool.submit(_train_one, p, str(out / "runs" / p.name), False, False): p for p in todo}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    p = pending.pop(future)
                    if future.exception() is not None:
                        for other in pending:
                            other.cancel()
                        raise future.exception()
                    report(p, future.result(), False)
    summary = summarize(best, [(p, results[p.name]) for p in plan], out, source=source, lr_offsets=lr_offsets)
    summary = replace(summary, seconds=time.perf_counter() - start)
    if world.main:
        summary.to_json(out / SUMMARY)
    return summary


_CORPORA: dict = {}


def _corpus(data, verbose: bool = False, tokenizer: str | None = None):
    """The corpus of `data` and `tokenizer` (a TrainConfig's), loaded once per process (rank 0 first: it may fetch
    it)."""
    if (data, tokenizer) not in _CORPORA:
        world = distributed.setup()
        _CORPORA[data, tokenizer] = distributed.main_first(
            lambda: load_corpus(data, progress=verbose and world.main, tokenizer=tokenizer), world)
    return _CORPORA[data, tokenizer]


def _train_one(planned: PlannedRun, run_dir: str, progress: bool = False, verbose: bool = False) -> TrainResult:
    """One run in this process (a pool worker or the caller), the corpus loaded once per process."""
    return run_one(planned, Path(run_dir), _corpus(planned.config["data"], verbose,
                                                                 planned.config.get("tokenizer")), progress=progress)


def summarize(best: dict[str, dict], results: list[tuple[PlannedRun, TrainResult]], out: Path, *, source: str = "",
              lr_offsets: Iterable[int] = DEFAULT_OFFSETS) -> TransferSummary:
    """The transfer's record from its plan and results: every run, `analysis.recipe_summary` per recipe, and the
    width scaling of the multipliers of the finished `lrm` runs at the transferred LR (read from `out`)."""
    runs = tuple(TransferRun(p.name, p.recipe, p.width, p.offset, p.seed, p.role, p.log2_lr, p.config["lr"], r.status,
                             _finite(r.val_bpb), _finite(r.train_loss), r.tokens, r.flops, r.seconds,
                             str(Path("runs") / p.name), p.depth)
                 for p, r in results)
    recipes = {recipe: analysis.recipe_summary(cfg, [x for x in runs if x.recipe == recipe])
               for recipe, cfg in best.items()}
    at_depth = recipes["lrm"].target_depth if "lrm" in recipes else None  # the width fit: one depth
    lrm_dirs = [out / x.path for x in runs if x.recipe == "lrm" and x.offset == 0 and x.status == "ok"
                and x.depth in (at_depth, None)]
    multipliers, error = None, None
    try:
        multipliers = multiplier_scaling(lrm_dirs) if len({_width_of(d) for d in lrm_dirs}) >= 2 else None
    except (TransferError, FileNotFoundError) as e:
        error = str(e)
    return TransferSummary(source, tuple(sorted({int(o) for o in lr_offsets} - {0})), best, recipes, runs,
                           multipliers, error)


def _width_of(run_dir: Path) -> int:
    return json.loads((run_dir / "config.json").read_text())["width"]


def load_transfer(transfer_dir: str | os.PathLike) -> TransferSummary:
    path = Path(transfer_dir) / SUMMARY
    if not path.exists():
        raise MissingError(f"no {SUMMARY} in {str(transfer_dir)!r}: run `lrm-mup transfer` into that folder first")
    try:
        return TransferSummary.from_json(path)
    except RecordError as e:
        raise TransferError(f"{e}; run `lrm-mup transfer` into that folder again (finished runs are kept)") from None


# ----------------------------------------------------------------------------------------------------------
# width scaling of the learned multipliers (paper Fig. 5)


def multiplier_values(run_dir: str | os.PathLike) -> MultiplierValues:
    """One `lrm` run's multipliers: per layer its role, block, fixed μP factor, learned values (scalar s, mean |r|,
    mean |c|), learned = s·mean|r|·mean|c| and total = fixed_mult × learned."""
    run_dir = Path(run_dir)
    for name in ("config.json", "checkpoint.pt"):
        if not (run_dir / name).exists():
            raise MissingError(f"{str(run_dir)!r} is not a finished run folder: no {name}")
    cfg = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    if cfg.recipe != "lrm":
        raise TransferError(f"{str(run_dir)!r} is a {cfg.recipe!r} run; learned multipliers need recipe 'lrm'")
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True, map_location="cpu")["model"]
    model = parametrized_model(cfg, device="meta")  # only the layer table: roles and fixed factors
    layers = []
    for name, module in multiplied_modules(model):
        learned = {}
        for kind in module.learned_multipliers():
            value = state[f"{name}.mult_{kind}"].float()
            learned[kind] = value.item() if kind == "scale" else value.abs().mean().item()
        product = math.prod(learned.values()) if learned else 1.0
        parts = name.split(".")
        block = int(parts[1]) if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit() else None
        record = module.parametrization
        layers.append(LayerMultipliers(name, record.role, record.kind, block, record.fixed_mult, learned, product,
                                       record.fixed_mult * product))
    return MultiplierValues(str(run_dir), cfg.width, cfg.optimizer, cfg.placement or "all", tuple(layers))


def multiplier_scaling(run_dirs: Iterable[str | os.PathLike]) -> MultiplierScaling:
    """`analysis.multiplier_scaling` of the `lrm` run folders' `multiplier_values` (≥ 2 widths, one optimizer and
    placement; seeds at one width are averaged geometrically)."""
    return analysis.multiplier_scaling([multiplier_values(d) for d in run_dirs])


def format_scaling(scaling: MultiplierScaling, kinds: bool = False) -> str:
    """A text table of the fits, one line per role (and per multiplier kind with `kinds`)."""
    lines = [(f"multiplier width scaling over widths {list(scaling.widths)} (placement {scaling.placement}): "
              "slope of log2(multiplier) vs log2(width)"),
             f"  {'quantity':<18} {'total':>7} {'fixed μP':>9} {'learned':>8} {'paper':>6}"]

    def fmt(x) -> str:
        return f"{x:+.3f}" if isinstance(x, (int, float)) else "-"

    for name, q in scaling.quantities.items():
        if "." in name and not kinds:
            continue
        paper = f"d^{q.predicted:+.0f}" if q.predicted is not None else "-"
        lines.append(f"  {name:<18} {fmt(q.slope_total):>7} {fmt(q.slope_fixed):>9} "
                     f"{fmt(q.slope_learned):>8} {paper:>6}")
    return "\n".join(lines)


def format_summary(summary: TransferSummary) -> str:
    lines = []
    for recipe, s in summary.recipes.items():
        deep = bool(s.val_bpb_by_depth)  # across depth: both shapes, and the rule that carried the HPs
        proxy = f"w{s.proxy_width}" + (f" d{s.proxy_depth}" if deep else "")
        target = f"w{s.target_width}" + (f" d{s.target_depth}" if deep else "")
        rule = f" (depth rule {s.depth_rule}, base depth {s.base_depth})" if deep else ""
        line = (f"{recipe}: proxy {proxy} → target {target}{rule}, transferred LR "
                f"2^{s.transferred_log2_lr:.2f}, target val {_fmt(s.target_val_bpb)} bpb")
        if s.target_optimum_log2_lr is not None:
            edge = " (grid edge: a lower bound)" if s.optimum_at_edge else ""
            line += (f"; direct sweep optimum 2^{s.target_optimum_log2_lr:.2f} ({_fmt(s.target_optimum_val_bpb)}"
                     f" bpb): LR gap {s.lr_gap_log2:+.0f} in log2{edge}, loss gap {_fmt(s.loss_gap_bpb)} bpb")
        lines.append(line)
    if summary.multipliers is not None:
        lines.append(format_scaling(summary.multipliers))
    return "\n".join(lines)


def _fmt(x) -> str:
    return f"{x:.4f}" if isinstance(x, (int, float)) else "n/a"
