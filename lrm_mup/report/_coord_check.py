"""The coordinate check's report: its verdicts, then one figure per quantity (log2 value against log2 width, one line
per module, a slider over the steps), from an `lrm_mup.analysis.CoordCheckResult`."""
from __future__ import annotations

import html
import math
import pathlib
import sys

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from ..analysis import QUANTITIES, CoordCheckResult, seed_means
from ._html import write_html, write_pngs


def write_coord_check_report(result: CoordCheckResult, out_dir, *, plotlyjs: str = "inline") -> dict[str, pathlib.Path]:
    """out_dir/coord_check.html (the verdicts, then one figure per quantity), coord_check.json (every number) and,
    where kaleido can run, coord_check_<quantity>.png (each figure at the last step)."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = coord_check_figures(result)
    paths = {"html": write_html(out / "coord_check.html", "Coordinate check", [result.summary(), *figures.values()],
                                plotlyjs=plotlyjs),
             "json": out / "coord_check.json"}
    result.to_json(paths["json"])
    pngs = {out / f"coord_check_{q}.png": fig for q, fig in figures.items()}
    note = write_pngs(pngs)
    if note:
        print(note, file=sys.stderr)
    else:
        paths.update({f"png_{q}": p for q, p in zip(figures, pngs, strict=True)})
    return paths


def coord_check_figures(result: CoordCheckResult) -> dict[str, go.Figure]:
    """One figure per quantity, one panel per recipe: log2 value against log2 width, one line per module, a slider
    over the steps. The on-screen slope is the verdict's slope; failed series are dashed."""
    widths = result.config["widths"]
    means = seed_means(result.records)
    slopes = {(r["recipe"], r["module"], r["quantity"], r["step"]): r for r in result.slopes}
    failed = {(v.recipe, v.module, v.quantity) for v in result.verdicts if not v.passed}
    figures = {}
    for quantity, label in QUANTITIES.items():
        series = sorted(k for k in means if k[2] == quantity)
        if not series:
            continue
        recipes = [r for r in result.config["recipes"] if any(k[0] == r for k in series)]  # mult: lrm only
        modules = sorted({m for _, m, _ in series})
        colour = {m: qualitative.Dark24[i % len(qualitative.Dark24)] for i, m in enumerate(modules)}
        steps = sorted({t for k in series for t, by_width in means[k].items() if any(by_width.values())})
        fig = make_subplots(rows=1, cols=len(recipes), shared_yaxes=True, subplot_titles=[
            f"{r}: {_status(result, r, quantity)}" for r in recipes])
        trace_steps = []
        for t in steps:
            in_legend = set()
            for col, recipe in enumerate(recipes, start=1):
                for module in modules:
                    by_width = means.get((recipe, module, quantity), {}).get(t)
                    if not by_width:
                        continue
                    row = slopes[(recipe, module, quantity, t)]
                    fig.add_trace(_trace(recipe, module, quantity, t, widths, by_width, row, colour[module],
                                         (recipe, module, quantity) in failed, module not in in_legend),
                                  row=1, col=col)
                    trace_steps.append(t)
                    in_legend.add(module)
        last = steps[-1]
        for trace, t in zip(fig.data, trace_steps, strict=True):
            trace.visible = t == last
        fig.update_layout(
            title=f"{label}: log2 value against log2 width (one line per module)",
            height=520, width=max(900, 360 * len(recipes)), hovermode="closest",
            sliders=[{"active": len(steps) - 1, "currentvalue": {"prefix": "step "}, "steps": [
                {"label": str(t), "method": "update", "args": [{"visible": [s == t for s in trace_steps]}]}
                for t in steps]}])
        fig.update_xaxes(title_text="width", tickvals=[math.log2(w) for w in widths],
                         ticktext=[str(w) for w in widths])
        fig.update_yaxes(title_text=f"log2 {quantity}", row=1, col=1)
        figures[quantity] = fig
    return figures


def _status(result: CoordCheckResult, recipe: str, quantity: str) -> str:
    verdicts = [v for v in result.verdicts if v.recipe == recipe and v.quantity == quantity]
    n_pass = sum(v.passed for v in verdicts)
    return f"{'PASS' if n_pass == len(verdicts) else 'FAIL'} {n_pass}/{len(verdicts)}"


def _trace(recipe, module, quantity, step, widths, by_width, row, colour, failed, show_legend) -> go.Scatter:
    xs = [w for w in widths if math.isfinite(by_width.get(w, 0)) and by_width.get(w, 0) > 0]  # a log axis
    slope = "n/a" if row["slope"] is None else f"{row['slope']:+.2f}"
    expected = f" (expected {row['expected']:+.2f}: {row['exception']})" if row["exception"] else ""
    return go.Scatter(
        x=[math.log2(w) for w in xs], y=[math.log2(by_width[w]) for w in xs], customdata=[[w, by_width[w]] for w in xs],
        mode="lines+markers", name=module, legendgroup=module, showlegend=show_legend,
        line={"color": colour, "dash": "dash" if failed else "solid"},
        meta={"recipe": recipe, "quantity": quantity, "step": step, "slope": row["slope"]},
        hovertemplate=f"<b>{module}</b><br>width %{{customdata[0]}}<br>{quantity} %{{customdata[1]:.4g}}<br>"
                      f"slope {slope}{html.escape(expected)}<extra>{recipe}, t={step}</extra>")
