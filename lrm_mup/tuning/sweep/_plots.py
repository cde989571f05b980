"""Optuna's own plots of a sweep (plotly figures with captions), for the tuning report: the report never opens an
Optuna storage itself, it is handed these figures."""
from __future__ import annotations

import warnings

import optuna
import plotly.graph_objects as go
from optuna import visualization as vis

from ...errors import LrmMupError
from ._results import _resolve
from ._spec import SweepSpec
from ._storage import storage_errors


def optuna_figures(where, spec: SweepSpec | None = None, *,
                   storage: str | None = None) -> tuple[list[go.Figure], list[str]]:
    """Per study of the sweep at `where` (a run folder, a storage URL or a storage; `spec`: its studies, default every
    study there; `storage`: the database URL of a folder whose manifest masks it): optimization history, parameter
    importances (PED-ANOVA, numpy only; fANOVA would need scikit-learn) and slices, each titled and named in its layout's meta ({"figure": "optuna_history:STUDY"}, ...).
    Anything that cannot be drawn becomes a note (the second list) instead."""
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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig = vis.plot_optimization_history(study)
            figures.append(_named(fig, f"optuna_history:{name}", f"{name}: optimization history"))
            fig, label = None, None
            try:  # PED-ANOVA (Optuna's default since 5.0) needs numpy only; fANOVA would need scikit-learn
                evaluator = getattr(optuna.importance, "PedAnovaImportanceEvaluator", None)
                fig = vis.plot_param_importances(study, evaluator=evaluator() if evaluator else None)
                label = "PED-ANOVA" if evaluator else "fANOVA"
            except ImportError as e:
                notes.append(f"{name}: parameter importances skipped: {e} (fANOVA needs scikit-learn)")
            except Exception as e:  # noqa: BLE001 - e.g. a single parameter, or too few trials
                notes.append(f"{name}: parameter importances skipped ({type(e).__name__}: {e})")
            if fig is not None:
                figures.append(_named(fig, f"optuna_importances:{name}", f"{name}: parameter importances, {label}"))
            try:
                fig = vis.plot_slice(study)
                figures.append(_named(fig, f"optuna_slice:{name}", f"{name}: slice plot"))
            except Exception as e:  # noqa: BLE001
                notes.append(f"{name}: slice plot skipped ({type(e).__name__}: {e})")
    return figures, notes


def _named(fig: go.Figure, name: str, title: str) -> go.Figure:
    fig.update_layout(meta={"figure": name})
    fig.update_layout(title=title)
    return fig
