"""Hyperparameter transfer: train the proxy's best settings at target widths, and read off how well they transferred.

`run_transfer(best, out_dir)` takes the best proxy configuration per recipe (a sweep folder via
`lrm_mup.sweep.best_params`, or a JSON file {recipe: TrainConfig dict}; `load_best`) and trains, per recipe:

- the proxy config again at the proxy width (the reference point of the width-scaling fits),
- the same config at each target width, with `base_width`/`delta_width` untouched so that proxy and target share one
  μP base (REFERENCE §2, mup #25), and with the schedule, steps, batch and regularization kept fixed (§3: they are not
  covered by the transfer claim),
- a small direct LR sweep at the largest target width: the transferred LR × 2^offset (offsets -2, -1, +1, +2 by
  default; every LR of the run is shifted together, so tuned ratios such as mult_lr/lr are kept).

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

The record analysis (`lr_curves`, `best_configs`, `sweep_costs`) works on the tidy rows of `lrm_mup.sweep.records`.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..errors import ConfigError, MissingError, TransferError
from ..training import distributed
from ..training.run import TrainConfig, TrainResult, train

SUMMARY = "transfer.json"
BEST = "best.json"
DEFAULT_OFFSETS = (-2, -1, 1, 2)
CPU_FACTORS = (4, 8)                # default target widths on CPU: 4× and 8× the proxy width
GPU_WIDTHS = (1024, 2048, 4096)     # default target widths on CUDA (bf16 autocast and compile come with the device)
MU_P_RECIPES = ("lr-only", "lr-wd", "mup", "lrm")
SPREAD_OK = 1.0                     # REFERENCE §3: optimum log2 LR spread over widths ≤ 1 for μP

# paper's width exponent of the total multiplier (Table 1 "through the multiplier", Fig. 5); Muon's spectral update
# needs no width factor on hidden matrices (recipes.py), so their prediction under Muon is d⁰
PREDICTED = {"embedding": 0.0, "input": 0.0, "readout": -1.0, "query×key": -2.0}
HIDDEN_ROLES = ("query", "key", "value", "attn_out", "mlp_gate", "mlp_up", "mlp_down", "hidden")


# ----------------------------------------------------------------------------------------------------------
# small helpers


def _finite(x) -> float | None:
    """JSON-safe number: NaN/inf become None."""
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def _log2(x: float) -> float:
    return math.log2(x)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _loss(record: dict) -> float:
    """A record's final validation loss; diverged (or non-finite) counts as +inf, as in an argmin over a grid."""
    value = record.get("val_bpb")
    if record.get("status") == "diverged" or not isinstance(value, (int, float)) or not math.isfinite(value):
        return math.inf
    return float(value)


# ----------------------------------------------------------------------------------------------------------
# analysis of sweep records (tidy rows of lrm_mup.sweep.records)


def usable(records: Iterable[dict]) -> list[dict]:
    """Finished trials: status ok or diverged (pruned and unfinished trials say nothing about the final loss)."""
    return [r for r in records if r.get("status") in ("ok", "diverged")]


def lr_curves(records: Iterable[dict]) -> dict[str, dict[int, dict]]:
    """{recipe: {width: {"log2_lr": [...], "val_bpb": [...] (seed mean, inf if a seed diverged), "seeds": [...],
    "opt_log2_lr", "opt_val_bpb"}}}, LRs sorted. The optimum is the argmin of the seed-mean final loss
    (REFERENCE §3); None when every point diverged."""
    groups: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in usable(records):
        groups[r["recipe"]][int(r["width"])][round(float(r["log2_lr"]), 9)].append(_loss(r))
    out: dict = {}
    for recipe in sorted(groups):
        out[recipe] = {}
        for width in sorted(groups[recipe]):
            points = groups[recipe][width]
            lrs = sorted(points)
            vals = [_mean(points[x]) for x in lrs]
            best = min(range(len(lrs)), key=lambda i: vals[i])
            ok = math.isfinite(vals[best])
            out[recipe][width] = {"log2_lr": lrs, "val_bpb": vals, "seeds": [len(points[x]) for x in lrs],
                                  "opt_log2_lr": lrs[best] if ok else None, "opt_val_bpb": vals[best] if ok else None}
    return out


def optimum_spread(curves: dict[str, dict[int, dict]]) -> dict[str, dict]:
    """Per recipe: optimum log2 LR per width and its spread (max − min over widths with a finite optimum)."""
    out = {}
    for recipe, by_width in curves.items():
        opts = {w: c["opt_log2_lr"] for w, c in by_width.items() if c["opt_log2_lr"] is not None}
        spread = max(opts.values()) - min(opts.values()) if len(opts) >= 2 else None
        widths = sorted(by_width)
        out[recipe] = {"widths": widths, "opt_log2_lr": {w: opts.get(w) for w in widths}, "spread": spread,
                       "width_ratio": widths[-1] / widths[0] if widths else None,
                       "transfers": None if spread is None else spread <= SPREAD_OK}
    return out


def best_configs(records: Iterable[dict], width: int | None = None) -> dict[str, dict]:
    """{recipe: TrainConfig dict} of the best seed-mean point at `width` (default: each recipe's smallest width, the
    proxy). The config is the first seed's; use it when a sweep has no `best_params` of its own."""
    records = usable(records)
    curves = lr_curves(records)
    out = {}
    for recipe, by_width in curves.items():
        w = width if width is not None else min(by_width)
        if w not in by_width or by_width[w]["opt_log2_lr"] is None:
            continue
        x = by_width[w]["opt_log2_lr"]
        match = [r for r in records if r["recipe"] == recipe and int(r["width"]) == w
                 and round(float(r["log2_lr"]), 9) == x]
        match.sort(key=lambda r: (r.get("seed", 0), _loss(r)))
        out[recipe] = dict(match[0]["config"])
    if not out:
        raise TransferError("no finished trial with a finite loss in the sweep records: nothing to transfer")
    return out


def sweep_costs(records: Iterable[dict], proxy_width: dict[str, int] | None = None) -> dict[str, dict]:
    """Per recipe: trials, tokens, FLOPs and seconds of the whole sweep and of its proxy-width part (default: the
    recipe's smallest width). Every trial counts, pruned and diverged included: they were paid for."""
    by_recipe: dict = defaultdict(list)
    for r in records:
        if r.get("recipe") is not None:
            by_recipe[r["recipe"]].append(r)
    out = {}
    for recipe, rows in sorted(by_recipe.items()):
        widths = [int(r["width"]) for r in rows if r.get("width") is not None]
        pw = (proxy_width or {}).get(recipe, min(widths) if widths else None)

        def total(rs):
            return {"trials": len(rs), "tokens": sum(r.get("tokens") or 0 for r in rs),
                    "flops": float(sum(r.get("flops") or 0 for r in rs)),
                    "seconds": float(sum(r.get("seconds") or 0 for r in rs))}

        out[recipe] = {"proxy_width": pw, "all": total(rows),
                       "proxy": total([r for r in rows if r.get("width") is not None and int(r["width"]) == pw])}
    return out


# ----------------------------------------------------------------------------------------------------------
# where the proxy's best settings come from


def load_best(source: str | os.PathLike | dict) -> dict[str, dict]:
    """The best proxy config per recipe, {recipe: TrainConfig dict}, from

    - a dict of that form,
    - a JSON file of that form (or a transfer folder's best.json),
    - a sweep run folder (`runs/<name>/` holding optuna.journal): `lrm_mup.sweep.best_params`.
    """
    if isinstance(source, dict):
        raw = source
    else:
        path = Path(source)
        if not path.exists():
            raise MissingError(f"best-settings source {str(path)!r} does not exist: pass a sweep run folder "
                                    "(runs/NAME with optuna.journal) or a JSON file {recipe: config}")
        if path.is_dir():
            if (path / "optuna.journal").exists():
                raw = _best_from_sweep(path)
            elif (path / BEST).exists():
                raw = json.loads((path / BEST).read_text())
            else:
                raise MissingError(f"{str(path)!r} is not a sweep run folder (no optuna.journal) "
                                        f"nor a transfer folder (no {BEST})")
        else:
            try:
                raw = json.loads(path.read_text())
            except ValueError as e:
                raise TransferError(f"{str(path)!r} is not JSON ({e}); expected {{recipe: config}}") from None
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


def _best_from_sweep(folder: Path) -> dict[str, dict]:
    from . import sweep

    spec = sweep_spec(folder)
    best = sweep.best_params(folder, spec) if spec is not None else best_configs(sweep.records(folder))
    if not best:
        raise TransferError(f"sweep {str(folder)!r} has no finished trial at its proxy width yet: nothing to transfer")
    return best


def sweep_spec(folder: str | os.PathLike):
    """The SweepSpec a sweep run folder was run with (from its sweep.json manifest), or None."""
    from . import sweep

    manifest = Path(folder) / sweep.MANIFEST
    if not manifest.is_file():
        return None
    return sweep.parse_sweep(json.loads(manifest.read_text())["spec"], source=str(manifest))


def sweep_records(folder: str | os.PathLike) -> tuple[object, list[dict]]:
    """(spec or None, records) of a sweep run folder."""
    from . import sweep

    folder = Path(folder)
    if not folder.exists():
        raise MissingError(f"sweep folder {str(folder)!r} does not exist")
    spec = sweep_spec(folder)
    return spec, sweep.records(folder, spec)


# ----------------------------------------------------------------------------------------------------------
# the plan: one entry per training run


@dataclass(frozen=True)
class PlannedRun:
    name: str            # folder under out_dir/runs
    recipe: str
    width: int
    offset: int          # log2 LR offset from the transferred LR (0: the transferred LR itself)
    seed: int
    role: str            # "proxy" (proxy width), "target" (transferred LR) or "lr-sweep"
    config: dict         # TrainConfig dict

    @property
    def log2_lr(self) -> float:
        return _log2(self.config["lr"])


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
              overrides: dict | None = None, include_proxy: bool = True) -> list[PlannedRun]:
    """The runs of a transfer, validated before anything trains. `widths`: target widths (default per recipe:
    `default_widths`); `lr_sweep_widths`: where the direct LR sweep runs (default: the largest target width);
    `overrides`: TrainConfig fields set on every run (e.g. device, steps: changing steps breaks the comparison with
    the proxy, so it is for smoke tests)."""
    offsets = sorted({int(o) for o in lr_offsets} - {0})
    runs = []
    for recipe, proxy_cfg in best.items():
        proxy_cfg = {**proxy_cfg, **(overrides or {})}
        pw = int(proxy_cfg["width"])
        targets = sorted(set(widths)) if widths else default_widths(pw, proxy_cfg.get("device", "auto"))
        if any(w <= 0 for w in targets):
            raise TransferError(f"target widths must be positive, got {targets}")
        sweep_at = lr_sweep_widths if lr_sweep_widths is not None else targets[-1:]
        for w in sweep_at:
            if w not in targets:
                raise TransferError(f"LR-sweep width {w} is not one of the target widths {targets}")
        for seed in seeds if seeds else [int(proxy_cfg["seed"])]:
            entries = [(pw, 0, "proxy")] if include_proxy and pw not in targets else []
            for w in targets:
                entries.append((w, 0, "target"))
                if w in sweep_at:
                    entries += [(w, o, "lr-sweep") for o in offsets]
            for w, o, role in entries:
                cfg = shift_lr({**proxy_cfg, "width": w, "seed": seed}, o)
                try:
                    cfg = asdict(TrainConfig.from_dict(cfg))
                except ConfigError as e:
                    raise TransferError(f"{recipe} at width {w}: {e}") from None
                suffix = f"-s{seed}" if seeds else ""
                runs.append(PlannedRun(f"{recipe}-w{w}-lr{o:+d}{suffix}", recipe, w, o, seed, role, cfg))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise TransferError("two runs of the plan share a folder name; give distinct widths/seeds")
    return runs


# ----------------------------------------------------------------------------------------------------------
# running it


def _finished(run_dir: Path) -> dict | None:
    """The final status row of a complete run folder, else None."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return None
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return rows[-1] if rows and "status" in rows[-1] and rows[-1]["status"] != "stopped" else None


def run_one(planned: PlannedRun, run_dir: Path, corpus=None, progress: bool = False) -> TrainResult:
    """One run = one `train(cfg, out)` call (the unit a multi-GPU launcher would hand to a worker). A complete folder
    is read back; an interrupted one with a checkpoint resumes; one without is started again."""
    cfg = TrainConfig.from_dict(planned.config)
    final = _finished(run_dir)
    if final is not None:
        diff = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text())).differences(cfg)
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
                 workers: int = 1, log: Callable[[str], None] | None = print, progress_bars: bool = False) -> dict:
    """Train the plan (see the module doc) under `out_dir` and write `out_dir/transfer.json`; returns its dict.
    `best`: anything `load_best` takes. `workers`: runs trained at once, each in its own process with its share of
    the cores (1: in this process). `log`: receives one line per run (None: silent)."""
    if not (isinstance(workers, int) and workers >= 1):
        raise TransferError(f"workers must be a positive integer, not {workers!r}")
    world = distributed.setup()
    if world.size > 1 and workers > 1:
        raise TransferError(f"workers={workers} under torchrun: the {world.size} processes already share every run; "
                            "leave workers at 1")
    source = str(best) if not isinstance(best, dict) else "dict"
    best = distributed.on_main(lambda: load_best(best), world)  # a sweep's journal is read once
    plan = plan_runs(best, widths, lr_offsets=lr_offsets, lr_sweep_widths=lr_sweep_widths, seeds=seeds,
                     overrides=overrides, include_proxy=include_proxy)
    out = Path(out_dir)
    log = log if world.main else None

    def write_best():
        (out / "runs").mkdir(parents=True, exist_ok=True)
        (out / BEST).write_text(json.dumps(best, indent=1))

    distributed.on_main(write_best, world)
    start = time.perf_counter()
    results: dict[str, TrainResult] = {}

    def report(p: PlannedRun, res: TrainResult, reused: bool) -> None:
        results[p.name] = res
        if log is not None:
            log(f"[{len(results)}/{len(plan)}] {p.recipe} w{p.width} lr 2^{p.log2_lr:.2f} ({p.role}, {p.offset:+d}): "
                f"{res.status}, val {res.val_bpb:.4f} bpb, {res.seconds:.1f} s" + (" (done before)" if reused else ""))

    todo = []
    for p in plan:
        if _finished(out / "runs" / p.name) is not None:
            report(p, run_one(p, out / "runs" / p.name), True)
        else:
            todo.append(p)
    if workers == 1 or len(todo) <= 1:
        for p in todo:
            report(p, _train_one(p, str(out / "runs" / p.name), progress_bars, log is not None), False)
    else:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        todo.sort(key=lambda p: -p.width)  # the longest first: the pool stays busy to the end
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=torch.set_num_threads, initargs=(max(1, cores // workers),)) as pool:
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
    summary["seconds"] = time.perf_counter() - start
    summary = _json_clean(summary)
    if world.main:
        (out / SUMMARY).write_text(json.dumps(summary, indent=1, allow_nan=False))
    return summary


_CORPORA: dict = {}


def _train_one(planned: PlannedRun, run_dir: str, progress: bool = False, verbose: bool = False) -> TrainResult:
    """One run in this process (a pool worker or the caller), the corpus loaded once per process."""
    from .. import data as data_mod

    key = planned.config["data"]
    if key not in _CORPORA:
        world = distributed.setup()
        _CORPORA[key] = distributed.main_first(lambda: data_mod.load_corpus(key, progress=verbose and world.main),
                                               world)
    return run_one(planned, Path(run_dir), _CORPORA[key], progress=progress)


def _json_clean(x):
    """NaN/inf -> None, recursively: transfer.json is strict JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _json_clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_clean(v) for v in x]
    return x


def summarize(best: dict[str, dict], results: list[tuple[PlannedRun, TrainResult]], out: Path, *, source: str = "",
              lr_offsets: Iterable[int] = DEFAULT_OFFSETS) -> dict:
    runs = [{"name": p.name, "recipe": p.recipe, "width": p.width, "offset": p.offset, "seed": p.seed, "role": p.role,
             "log2_lr": p.log2_lr, "lr": p.config["lr"], "status": r.status, "val_bpb": _finite(r.val_bpb),
             "train_loss": _finite(r.train_loss), "tokens": r.tokens, "flops": r.flops, "seconds": r.seconds,
             "path": str(Path("runs") / p.name)}
            for p, r in results]
    recipes = {}
    for recipe, cfg in best.items():
        mine = [x for x in runs if x["recipe"] == recipe]
        recipes[recipe] = _recipe_summary(cfg, mine)
    lrm_dirs = [out / x["path"] for x in runs if x["recipe"] == "lrm" and x["offset"] == 0 and x["status"] == "ok"]
    try:
        multipliers = multiplier_scaling(lrm_dirs) if len({_width_of(d) for d in lrm_dirs}) >= 2 else None
    except (TransferError, FileNotFoundError) as e:
        multipliers = {"error": str(e)}
    return {"version": 1, "source": source, "lr_offsets": sorted({int(o) for o in lr_offsets} - {0}),
            "best": best, "recipes": recipes, "runs": runs, "multipliers": multipliers}


def _width_of(run_dir: Path) -> int:
    return json.loads((run_dir / "config.json").read_text())["width"]


def _recipe_summary(cfg: dict, runs: list[dict]) -> dict:
    """Seed means per (width, offset); the target is the largest width; gaps from its direct LR sweep."""
    points: dict = defaultdict(list)
    for x in runs:
        points[(x["width"], x["offset"])].append(x)
    loss = {k: _mean([v["val_bpb"] if v["val_bpb"] is not None and v["status"] != "diverged" else math.inf
                      for v in vs]) for k, vs in points.items()}
    widths = sorted({w for w, _ in points})
    target = max(widths)
    sweep = sorted((o, loss[(w, o)]) for (w, o) in points if w == target)
    transferred_log2 = _log2(cfg["lr"])
    best_offset, best_loss = min(sweep, key=lambda t: t[1])
    at_zero = loss.get((target, 0), math.inf)
    have_sweep = len(sweep) > 1
    target_runs = points.get((target, 0), [])
    return {
        "proxy_width": cfg["width"],
        "target_width": target,
        "transferred_log2_lr": transferred_log2,
        "val_bpb_by_width": {str(w): _finite(loss.get((w, 0), math.nan)) for w in widths},
        "target_val_bpb": _finite(at_zero),
        "lr_sweep": {"log2_lr": [transferred_log2 + o for o, _ in sweep], "offset": [o for o, _ in sweep],
                     "val_bpb": [_finite(v) for _, v in sweep]},
        "target_optimum_log2_lr": transferred_log2 + best_offset if have_sweep and math.isfinite(best_loss) else None,
        "target_optimum_val_bpb": _finite(best_loss) if have_sweep else None,
        "lr_gap_log2": -best_offset if have_sweep and math.isfinite(best_loss) else None,
        "loss_gap_bpb": _finite(at_zero - best_loss) if have_sweep else None,
        "optimum_at_edge": have_sweep and best_offset in (sweep[0][0], sweep[-1][0]) and best_offset != 0,
        "target_cost": {"runs": len(target_runs),  # one target run (seed mean)
                        **{k: _mean([v[k] for v in target_runs]) for k in ("tokens", "flops", "seconds")}},
        "status": {x["name"]: x["status"] for x in runs},
    }


def load_transfer(transfer_dir: str | os.PathLike) -> dict:
    path = Path(transfer_dir) / SUMMARY
    if not path.exists():
        raise MissingError(f"no {SUMMARY} in {str(transfer_dir)!r}: run `lrm-mup transfer` into that folder first")
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------------------------------------
# width scaling of the learned multipliers (paper Fig. 5)


def multiplier_values(run_dir: str | os.PathLike) -> dict:
    """One `lrm` run's multipliers: per layer its role, block, fixed μP factor, learned values (scalar s, mean |r|,
    mean |c|), learned = s·mean|r|·mean|c| and total = fixed_mult × learned."""
    from ..core.multipliers import multiplied_modules
    from ..core.recipes import parametrize
    from ..core.shapes import base_shapes

    run_dir = Path(run_dir)
    for name in ("config.json", "checkpoint.pt"):
        if not (run_dir / name).exists():
            raise MissingError(f"{str(run_dir)!r} is not a finished run folder: no {name}")
    cfg = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    if cfg.recipe != "lrm":
        raise TransferError(f"{str(run_dir)!r} is a {cfg.recipe!r} run; learned multipliers need recipe 'lrm'")
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True, map_location="cpu")["model"]
    with torch.device("meta"):  # only the layer table: roles and fixed factors
        model = cfg.build(cfg.width)
        shapes = base_shapes(cfg.build(cfg.base_width), cfg.build(cfg.delta_or_default))
        parametrize(model, shapes, recipe=cfg.recipe, optimizer=cfg.optimizer, placement=cfg.placement,
                    alphas=cfg.alphas or None)
    layers = []
    for name, module in multiplied_modules(model):
        learned = {}
        for kind in module.learned_multipliers():
            value = state[f"{name}.mult_{kind}"].float()
            learned[kind] = value.item() if kind == "scale" else value.abs().mean().item()
        product = math.prod(learned.values()) if learned else 1.0
        parts = name.split(".")
        block = int(parts[1]) if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit() else None
        layers.append({"module": name, "role": module.lrm_info.role, "kind": module.lrm_info.kind, "block": block,
                       "fixed_mult": module.fixed_mult, "learned": learned, "learned_product": product,
                       "total": module.fixed_mult * product})
    return {"run": str(run_dir), "width": cfg.width, "optimizer": cfg.optimizer, "placement": cfg.placement or "all",
            "layers": layers}


def _quantities(values: dict) -> dict[str, dict]:
    """Per-run quantities {name: {"total", "fixed", "learned"}}: per role (geometric mean over the role's layers),
    per role and multiplier kind (learned only), and the query·key product per block (geometric mean over blocks)."""
    def gmean(xs):
        xs = [abs(x) for x in xs]
        return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs and all(x > 0 for x in xs) else float("nan")

    by_role = defaultdict(list)
    for layer in values["layers"]:
        by_role[layer["role"]].append(layer)
    out = {}
    for role, layers in by_role.items():
        if not any(layer["learned"] for layer in layers):
            continue  # no learnable multiplier on this role under the placement
        out[role] = {"total": gmean([x["total"] for x in layers]), "fixed": gmean([x["fixed_mult"] for x in layers]),
                     "learned": gmean([x["learned_product"] for x in layers])}
        for kind in ("scale", "row", "col"):
            vals = [x["learned"][kind] for x in layers if kind in x["learned"]]
            if vals:
                out[f"{role}.{kind}"] = {"total": None, "fixed": None, "learned": gmean(vals)}
    q = {x["block"]: x for x in by_role.get("query", [])}
    k = {x["block"]: x for x in by_role.get("key", [])}
    blocks = sorted(set(q) & set(k))
    if blocks and any(q[b]["learned"] or k[b]["learned"] for b in blocks):
        out["query×key"] = {key: gmean([q[b][src] * k[b][src] for b in blocks])
                            for key, src in (("total", "total"), ("fixed", "fixed_mult"),
                                             ("learned", "learned_product"))}
    return out


def fit_exponent(widths: list[float], values: list[float]) -> dict:
    """Least-squares slope of log2(value) on log2(width): value ∝ width^slope. Needs ≥ 2 widths, positive values."""
    pts = [(math.log2(w), math.log2(v)) for w, v in zip(widths, values)
           if v is not None and math.isfinite(v) and v > 0]
    if len({x for x, _ in pts}) < 2:
        return {"slope": None, "intercept": None, "r2": None, "n": len(pts)}
    n = len(pts)
    mx, my = sum(x for x, _ in pts) / n, sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
    intercept = my - slope * mx
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in pts)
    ss_tot = sum((y - my) ** 2 for _, y in pts)
    return {"slope": slope, "intercept": intercept, "r2": 1 - ss_res / ss_tot if ss_tot > 0 else 1.0, "n": n}


def predicted_exponent(name: str, optimizer: str = "adamw") -> float | None:
    """The paper's width exponent of the total multiplier of a quantity (None for per-kind learned series)."""
    if "." in name:
        return None
    if name in PREDICTED:
        return PREDICTED[name]
    if name in HIDDEN_ROLES:
        return 0.0 if optimizer == "muon" else -1.0
    return None


def multiplier_scaling(run_dirs: Iterable[str | os.PathLike]) -> dict:
    """Width-scaling fits of the learned multipliers over `lrm` runs at ≥ 2 widths (runs at one width — seeds — are
    averaged geometrically). Returns {"widths", "runs", "optimizer", "placement", "quantities": {name: {"widths",
    "total", "fixed", "learned" (one value per width), "slope_total", "slope_fixed", "slope_learned", "r2_total",
    "predicted"}}}."""
    values = [multiplier_values(d) for d in run_dirs]
    if not values:
        raise TransferError("no lrm run folders given for the multiplier width-scaling fit")
    combos = {(v["optimizer"], v["placement"]) for v in values}
    if len(combos) > 1:
        raise TransferError(f"runs mix optimizers/placements {sorted(combos)}: fit one combination at a time")
    optimizer, placement = combos.pop()
    per_width: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for v in values:
        for name, q in _quantities(v).items():
            for key, x in q.items():
                if x is not None:
                    per_width[name][v["width"]][key].append(x)
    widths = sorted({v["width"] for v in values})
    if len(widths) < 2:
        raise TransferError(f"the width-scaling fit needs lrm runs at ≥ 2 widths, got {widths}")

    def gmean(xs):
        return math.exp(sum(math.log(abs(x)) for x in xs) / len(xs)) if xs and all(x != 0 for x in xs) else None

    quantities = {}
    for name in sorted(per_width):
        ws = [w for w in widths if w in per_width[name]]
        series = {key: [gmean(per_width[name][w].get(key, [])) for w in ws] for key in ("total", "fixed", "learned")}
        fits = {key: fit_exponent(ws, series[key]) for key in series}
        quantities[name] = {"widths": ws, **series, **{f"slope_{k}": f["slope"] for k, f in fits.items()},
                            "r2_total": fits["total"]["r2"], "r2_learned": fits["learned"]["r2"],
                            "predicted": predicted_exponent(name, optimizer)}
    return {"widths": widths, "runs": [v["run"] for v in values], "optimizer": optimizer, "placement": placement,
            "quantities": quantities}


def format_scaling(scaling: dict, kinds: bool = False) -> str:
    """A text table of the fits, one line per role (and per multiplier kind with `kinds`)."""
    lines = [(f"multiplier width scaling over widths {scaling['widths']} (placement {scaling['placement']}): "
              "slope of log2(multiplier) vs log2(width)"),
             f"  {'quantity':<18} {'total':>7} {'fixed μP':>9} {'learned':>8} {'paper':>6}"]

    def fmt(x) -> str:
        return f"{x:+.3f}" if isinstance(x, (int, float)) else "-"

    for name, q in scaling["quantities"].items():
        if "." in name and not kinds:
            continue
        paper = f"d^{q['predicted']:+.0f}" if q["predicted"] is not None else "-"
        lines.append(f"  {name:<18} {fmt(q['slope_total']):>7} {fmt(q['slope_fixed']):>9} "
                     f"{fmt(q['slope_learned']):>8} {paper:>6}")
    return "\n".join(lines)


def format_summary(summary: dict) -> str:
    lines = []
    for recipe, s in summary["recipes"].items():
        line = (f"{recipe}: proxy w{s['proxy_width']} → target w{s['target_width']}, transferred LR "
                f"2^{s['transferred_log2_lr']:.2f}, target val {_fmt(s['target_val_bpb'])} bpb")
        if s["target_optimum_log2_lr"] is not None:
            edge = " (grid edge: a lower bound)" if s["optimum_at_edge"] else ""
            line += (f"; direct sweep optimum 2^{s['target_optimum_log2_lr']:.2f} ({_fmt(s['target_optimum_val_bpb'])}"
                     f" bpb): LR gap {s['lr_gap_log2']:+.0f} in log2{edge}, loss gap {_fmt(s['loss_gap_bpb'])} bpb")
        lines.append(line)
    if isinstance(summary.get("multipliers"), dict) and "quantities" in summary["multipliers"]:
        lines.append(format_scaling(summary["multipliers"]))
    return "\n".join(lines)


def _fmt(x) -> str:
    return f"{x:.4f}" if isinstance(x, (int, float)) else "n/a"
