"""A sweep's results: tidy records of its trials, the best settings per recipe, a short summary."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import optuna
from optuna.trial import TrialState

from ...errors import SweepError
from ._spec import JOURNAL, MANIFEST, STATUSES, SweepSpec
from ._storage import _is_url, _open_storage
from ._worker import _fmt


def read_storage(where):
    """A storage from a run folder, a storage URL, or an optuna storage object."""
    if _is_url(where):
        return _open_storage(None, None, where)
    if not isinstance(where, (str, os.PathLike)):
        return where
    out = Path(where)
    if (out / JOURNAL).is_file():
        return _open_storage(None, out, None)
    manifest = out / MANIFEST
    if manifest.is_file():
        url = json.loads(manifest.read_text()).get("storage", "")
        if "***" in url:
            raise SweepError(f"{out} was swept with storage {url}; pass that URL (with its password) instead")
        if _is_url(url):
            return _open_storage(None, None, url)
    raise SweepError(f"{str(out)!r} holds no sweep ({JOURNAL} or {MANIFEST}); pass a run folder or a storage URL")


def records(out_dir_or_storage, spec: SweepSpec | None = None, *, unfinished: bool = False) -> list[dict]:
    """Tidy rows, one per finished trial (COMPLETE or PRUNED; with `unfinished`, also RUNNING/WAITING/FAIL).

    Keys: study, trial, state, recipe, width, seed (None for a multi-seed tpe/random trial), seeds, log2_lr,
    one key per search parameter of the sweep (None where it does not apply), val_bpb (bits/byte; the cap for a
    diverged trial, None if pruned), train_loss (nats, last step, seed mean), status (ok/diverged/pruned; for
    unfinished rows running/waiting/failed), reason, tokens, flops, seconds (wall), cpu_seconds (the worker
    process's CPU time: comparable on a busy machine), config (TrainConfig dict of the first seed). `spec` limits the
    rows to that sweep's studies; without it every lrm-mup sweep in the storage counts.
    """

    storage = read_storage(out_dir_or_storage)
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
            row = {"study": summary.study_name, "trial": t.number, "state": t.state.name,
                   "recipe": ua.get("recipe", attrs.get("recipe")), "width": ua.get("width"),
                   "seed": seeds[0] if len(seeds) == 1 else None, "seeds": seeds,
                   "log2_lr": math.log2(cfg["lr"]) if cfg.get("lr") else t.params.get("log2_lr")}
            row.update({n: t.params.get(n) for n in names if n != "log2_lr"})
            row.update({"val_bpb": ua.get("val_bpb"), "train_loss": _nan(ua.get("train_loss")), "status": status,
                        "reason": ua.get("reason"), "tokens": ua.get("tokens", 0), "flops": ua.get("flops", 0.0),
                        "seconds": ua.get("seconds", 0.0), "cpu_seconds": ua.get("cpu_seconds", 0.0), "config": cfg})
            rows.append(row)
    return rows


def _nan(v):
    return float("nan") if v is None else v


def _best_groups(rows: list[dict], names: list[str]):
    """(seed-mean val_bpb, rows) per parameter setting, best first; diverged runs count at the cap."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["state"] == "COMPLETE" and r["val_bpb"] is not None:
            groups.setdefault(tuple(r.get(n) for n in names), []).append(r)
    scored = [(sum(r["val_bpb"] for r in g) / len(g), g) for g in groups.values()]
    return sorted(scored, key=lambda s: s[0])


def best_params(out_dir_or_storage, spec: SweepSpec, *, width: int | None = None) -> dict[str, dict]:
    """{recipe: TrainConfig dict} of the best seed-mean val_bpb per recipe, at `width` (default: the sweep's
    smallest width, the proxy). Recipes with no finished trial at that width are left out."""
    width = width if width is not None else min(spec.widths)
    if width not in spec.widths:
        raise SweepError(f"width {width} is not one of the sweep's widths {list(spec.widths)}")
    rows = [r for r in records(out_dir_or_storage, spec) if r["width"] == width]
    names = ["log2_lr"] + [p.name for p in spec.search if p.name != "log2_lr"]
    best = {}
    for recipe in spec.recipes:
        scored = _best_groups([r for r in rows if r["recipe"] == recipe], names)
        if scored:
            best[recipe] = dict(scored[0][1][0]["config"])
    return best


def summary_lines(out_dir_or_storage, spec: SweepSpec) -> list[str]:
    """A short per-recipe summary: trials, divergences, cost and the best setting (per width for a grid)."""
    rows = records(out_dir_or_storage, spec)
    names = ["log2_lr"] + [p.name for p in spec.search if p.name != "log2_lr"]
    lines = []
    for recipe in spec.recipes:
        mine = [r for r in rows if r["recipe"] == recipe]
        counts = {s: sum(r["status"] == s for r in mine) for s in STATUSES}
        cost = (f"{len(mine)}/{spec.budget(recipe)} trials ({counts['diverged']} diverged, {counts['pruned']} pruned), "
                f"{sum(r['flops'] for r in mine):.3g} FLOPs, {sum(r['seconds'] for r in mine):.0f} s")
        bests = []
        for width in spec.widths:
            scored = _best_groups([r for r in mine if r["width"] == width], names)
            if scored:
                value, group = scored[0]
                shown = " ".join(f"{n}={_fmt(group[0][n])}" for n in names if group[0].get(n) is not None)
                bests.append(f"w{width}: {shown} -> {value:.4f}")
        lines.append(f"{recipe:8s} {cost}; best seed-mean val bits/byte: " + ("; ".join(bests) or "none yet"))
    return lines
