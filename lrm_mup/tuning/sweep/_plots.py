"""Optuna's own plots of a sweep (plotly figures named in their layout's meta), for the tuning report: the report
never opens an Optuna storage itself, it is handed these figures.

A grid over width and seed is not a search over them: width changes what the objective measures and seed is noise.
So nothing pools widths: the history is drawn per width (one series each, each with its own best-so-far line), and
the slice and the importances at the proxy width over the searched parameters alone (not width, not seed)."""
from __future__ import annotations

import warnings

import optuna
import plotly.graph_objects as go
from optuna import visualization as vis

from ...errors import LrmMupError
from ._results import _resolve
from ._spec import SweepSpec
from ._storage import storage_errors

OBJECTIVE = "val bits/byte"  # every study's objective (its metric name, `_storage._studies`)
AXES = ("width", "seed")     # grid axes of a sweep, not hyperparameters


def optuna_figures(where, spec: SweepSpec | None = None, *,
                   storage: str | None = None) -> tuple[list[go.Figure], list[str]]:
    """Per study of the sweep at `where` (a run folder, a storage URL or a storage; `spec`: its studies, default every
    study there; `storage`: the database URL of a folder whose manifest masks it): the optimization history per width,
    slices and parameter importances (PED-ANOVA, numpy only; it needs two searched parameters or more) at the proxy
    width, each titled and named in its layout's meta ({"figure": "optuna_history:STUDY"}, ...). Anything that
    cannot be drawn becomes a note (the second list) instead."""
    try:
        store, url = _resolve(where, storage)
        with storage_errors(url):
            return _figures(store, spec)
    except LrmMupError as e:  # one line, any URL in it masked; the rest of the report does not depend on it
        return [], [f"Optuna plots skipped: cannot read the sweep's storage ({e})"]


def _figures(storage, spec: SweepSpec | None) -> tuple[list[go.Figure], list[str]]:
    figures: list[go.Figure] = []
    notes: list[str] = []
    names = [spec.study_name(r) for r in spec.recipes] if spec is not None else \
        sorted(optuna.get_all_study_names(storage))
    for name in names:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            continue
        done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
        if not done:
            notes.append(f"{name}: no completed trial, no Optuna plots")
            continue
        by_width: dict = {}
        for t in done:
            by_width.setdefault(t.user_attrs.get("width", t.params.get("width")), []).append(t)
        widths = sorted(by_width, key=lambda w: (w is None, w))
        per_width = {w: _in_memory(f"width {w}", by_width[w]) for w in widths}
        proxy = widths[0]
        searched = sorted({p for t in by_width[proxy] for p in t.params} - set(AXES))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig = vis.plot_optimization_history(list(per_width.values()), target_name=OBJECTIVE)
            figures.append(_named(fig, f"optuna_history:{name}", f"{name}: optimization history, per width"))
            if not searched:
                notes.append(f"{name}: no searched parameter at width {proxy}: no slice, no importances")
                continue
            try:
                fig = vis.plot_slice(per_width[proxy], params=searched, target_name=OBJECTIVE)
                figures.append(_named(fig, f"optuna_slice:{name}", f"{name}: slice at width {proxy} (the proxy)"))
            except Exception as e:  # noqa: BLE001
                notes.append(f"{name}: slice plot skipped ({type(e).__name__}: {e})")
            if len(searched) < 2:
                notes.append(f"{name}: parameter importances skipped: {', '.join(searched)} is the only searched "
                             f"parameter at width {proxy} (width and seed are grid axes), so its importance is 1 "
                             "by construction; the LR curves show its effect")
                continue
            try:  # PED-ANOVA (Optuna's default since 5.0) needs numpy only; fANOVA would need scikit-learn
                evaluator = getattr(optuna.importance, "PedAnovaImportanceEvaluator", None)
                fig = vis.plot_param_importances(per_width[proxy], params=searched, target_name=OBJECTIVE,
                                                 evaluator=evaluator() if evaluator else None)
                label = "PED-ANOVA" if evaluator else "fANOVA"
                figures.append(_named(fig, f"optuna_importances:{name}",
                                      f"{name}: parameter importances at width {proxy}, {label}"))
            except ImportError as e:
                notes.append(f"{name}: parameter importances skipped: {e} (fANOVA needs scikit-learn)")
            except Exception as e:  # noqa: BLE001 - e.g. too few trials
                notes.append(f"{name}: parameter importances skipped ({type(e).__name__}: {e})")
    return figures, notes


def _in_memory(name: str, trials: list) -> optuna.Study:
    """A throwaway study holding `trials` (one width's), for Optuna's plotting functions."""
    study = optuna.create_study(study_name=name, direction="minimize")
    study.add_trials(trials)
    return study


def _named(fig: go.Figure, name: str, title: str) -> go.Figure:
    fig.update_layout(meta={"figure": name}, title=title)
    return fig
