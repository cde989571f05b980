"""A sweep's results: one `SweepTrial` record per trial, the best settings per recipe (`lrm_mup.analysis`), a short
summary."""
from __future__ import annotations

import math
import os
from pathlib import Path

import optuna
from optuna.trial import TrialState

from ...analysis import best_configs, best_settings
from ...errors import SweepError
from ...records import SweepTrial
from ._spec import STATUSES, SweepSpec
from ._storage import _is_url, _open_storage, folder_storage, storage_errors
from ._worker import _fmt


def read_storage(where, storage: str | None = None):
    """A storage from a sweep folder (the one its manifest names: `folder_storage`, with `storage` the database URL
    where the manifest's is masked), a storage URL, or an optuna storage object."""
    return _resolve(where, storage)[0]


def _resolve(where, storage: str | None):
    """(storage, its URL or None for a journal) of `where` (see `read_storage`)."""
    if _is_url(where):
        return _open_storage(None, None, where), where
    if not isinstance(where, (str, os.PathLike)):
        return where, getattr(where, "url", None)
    url, _ = folder_storage(where, storage)
    return _open_storage(None, Path(where) if url is None else None, url), url


def records(out_dir_or_storage, spec: SweepSpec | None = None, *, unfinished: bool = False,
            storage: str | None = None) -> list[SweepTrial]:
    """One `SweepTrial` per finished trial (COMPLETE or PRUNED; with `unfinished`, also RUNNING/WAITING/FAIL), in
    study then trial order; `SweepTrial.row()` is the tidy dict of one.

    `params` holds one key per search parameter of the sweep but log2_lr (None where it does not apply); val_bpb is
    the cap for a diverged trial and None if pruned; train_loss NaN where not finite; status ok/diverged/pruned (for
    unfinished trials running/waiting/failed); cpu_seconds the worker process's CPU time (comparable on a busy
    machine); config the TrainConfig dict of the first seed. `spec` limits the trials to that sweep's studies;
    without it every lrm-mup sweep in the storage counts. `storage`: the database URL of a sweep folder whose
    manifest masks it (`read_storage`).
    """
    store, url = _resolve(out_dir_or_storage, storage)
    with storage_errors(url):
        return _records(store, spec, unfinished)


def _records(storage, spec: SweepSpec | None, unfinished: bool) -> list[SweepTrial]:
    rows = []
    keep = (TrialState.COMPLETE, TrialState.PRUNED) if not unfinished else tuple(TrialState)
    for summary in sorted(optuna.get_all_study_summaries(storage, include_best_trial=False),
                          key=lambda s: s._study_id):
        attrs = summary.user_attrs
        if "lrm_mup_sweep" not in attrs or (spec is not None and attrs["lrm_mup_sweep"] != spec.name):
            continue
        names = list((attrs.get("spec") or {}).get("search", {}))
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        for t in study.get_trials(deepcopy=False, states=keep):
            ua = t.user_attrs
            cfg = ua.get("config") or {}
            seeds = ua.get("seeds") or []
            status = ua.get("status") if t.state.is_finished() and t.state != TrialState.FAIL else None
            if status is None:
                status = {TrialState.PRUNED: "pruned", TrialState.FAIL: "failed", TrialState.RUNNING: "running",
                          TrialState.WAITING: "waiting"}.get(t.state, "ok")
            train_loss = ua.get("train_loss")
            rows.append(SweepTrial(
                study=summary.study_name, trial=t.number, state=t.state.name,
                recipe=ua.get("recipe", attrs.get("recipe")), width=ua.get("width"),
                log2_lr=math.log2(cfg["lr"]) if cfg.get("lr") else t.params.get("log2_lr"),
                val_bpb=ua.get("val_bpb"), train_loss=math.nan if train_loss is None else train_loss,
                status=status, tokens=ua.get("tokens", 0), flops=ua.get("flops", 0.0),
                seconds=ua.get("seconds", 0.0), cpu_seconds=ua.get("cpu_seconds", 0.0), config=cfg,
                seed=seeds[0] if len(seeds) == 1 else None, seeds=tuple(seeds),
                params={n: t.params.get(n) for n in names if n != "log2_lr"}, reason=ua.get("reason"),
                norms=ua.get("norms") or {}))
    return rows


def best_params(out_dir_or_storage, spec: SweepSpec, *, width: int | None = None,
                storage: str | None = None) -> dict[str, dict]:
    """{recipe: TrainConfig dict} of the best seed-mean val_bpb per recipe (`lrm_mup.analysis.best_settings`), at
    `width` (default: the sweep's smallest width, the proxy). Recipes with no finished trial at that width are left
    out. `storage`: as for `records`."""
    width = width if width is not None else min(spec.widths)
    if width not in spec.widths:
        raise SweepError(f"width {width} is not one of the sweep's widths {list(spec.widths)}")
    return best_configs(records(out_dir_or_storage, spec, storage=storage), width, recipes=spec.recipes)


def summary_lines(out_dir_or_storage, spec: SweepSpec, *, storage: str | None = None) -> list[str]:
    """A short per-recipe summary: trials, divergences, cost and the best setting (per width for a grid)."""
    trials = records(out_dir_or_storage, spec, storage=storage)
    lines = []
    for recipe in spec.recipes:
        mine = [t for t in trials if t.recipe == recipe]
        counts = {s: sum(t.status == s for t in mine) for s in STATUSES}
        cost = (f"{len(mine)}/{spec.budget(recipe)} trials ({counts['diverged']} diverged, {counts['pruned']} pruned), "
                f"{sum(t.flops for t in mine):.3g} FLOPs, {sum(t.seconds for t in mine):.0f} s")
        bests = []
        for width in spec.widths:
            best = best_settings(mine, width).get(recipe)
            if best is not None:
                shown = " ".join(f"{n}={_fmt(v)}" for n, v in best.params.items() if v is not None)
                bests.append(f"w{width}: {shown} -> {best.val_bpb:.4f}")
        lines.append(f"{recipe:8s} {cost}; best seed-mean val bits/byte: " + ("; ".join(bests) or "none yet"))
    return lines
