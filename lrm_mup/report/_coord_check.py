"""The coordinate check's report, as a page: a headline card (each recipe's verdict, or why the data cannot carry
one), a table of passing series per recipe and quantity, the verdict text, then one figure per quantity (log2 value
against log2 width, one line per module, a slider over the steps) with a caption, from an
`lrm_mup.analysis.CoordCheckResult`. A check across depth (`depth_coord_check`, config "axis" "depth") is the same
page with depth on the x-axis, judged with the same bands against the depth rule's declared slopes: every part
reads its axis from the result (`lrm_mup.analysis.axis_of`)."""
from __future__ import annotations

import html
import math
import pathlib
import sys

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from ..analysis import FAIL, INCONCLUSIVE, QUANTITIES, CoordCheckResult, axis_of, judgeable, seed_means
from ._html import Figure, Html, card, heading, paragraph, table, warnings_box, write_html, write_pngs


def write_coord_check_report(result: CoordCheckResult, out_dir, *, plotlyjs: str = "inline") -> dict[str, pathlib.Path]:
    """out_dir/coord_check.html (the verdicts, then one figure per quantity), coord_check.json (every number) and,
    where kaleido can run, coord_check_<quantity>.png (each figure at the last step); a check across depth writes
    the same files named coord_check_depth*."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    axis, _ = axis_of(result.config)
    stem = "coord_check" if axis == "width" else f"coord_check_{axis}"
    figures = coord_check_figures(result)
    parts = [headline_card(result), *band_table(result), heading("Figures")]
    parts += [Figure(fig, CAPTION.format(label=QUANTITIES[q], axis=axis, wants=WANTS[axis]))
              for q, fig in figures.items()]
    parts += [heading("The verdict as text"), result.summary()]
    title = "Coordinate check" + ("" if axis == "width" else f" across {axis}")
    paths = {"html": write_html(out / f"{stem}.html", title, parts, plotlyjs=plotlyjs), "json": out / f"{stem}.json"}
    result.to_json(paths["json"])
    pngs = {out / f"{stem}_{q}.png": fig for q, fig in figures.items()}
    note = write_pngs(pngs)
    if note:
        print(note, file=sys.stderr)
    else:
        paths.update({f"png_{q}": p for q, p in zip(figures, pngs, strict=True)})
    return paths


WANTS = {"width": "width-independent, as μP wants; the slope is in the hover, next to the slope μP prescribes",
         "depth": "depth-independent, as the depth rule wants; the slope is in the hover, next to the slope the rule "
                  "prescribes (its branch multipliers and block LRs)"}
CAPTION = ("{label}: one panel per recipe, one line per module (colour), log2 of the seed-mean value against log2 "
           "{axis}. A flat line is {wants} where it is not 0, and the verdict with its band. Dashed lines: series "
           "that fail the verdict; "
           "dotted: inconclusive ones. The slider picks the training step (t=0 is the initialisation); a panel title "
           "gives the recipe's verdict on this quantity.")


def headline_card(result: CoordCheckResult) -> Html:
    """Each recipe's verdict in one sentence (PASS, INCONCLUSIVE or FAIL), a table of passing series per recipe and
    quantity, and the reasons the data cannot carry a verdict (too few widths or seeds), if any."""
    c = result.config
    axis, values = axis_of(c)
    cannot = judgeable(c)
    quantities = [q for q in QUANTITIES if any(v.quantity == q for v in result.verdicts)]
    rows, classes = [], []
    for recipe in c["recipes"]:
        mine = [v for v in result.verdicts if v.recipe == recipe]
        n_pass = sum(v.passed for v in mine)
        status = "no verdict" if cannot else result.status(recipe)
        worst = result.failures(recipe)[:1]
        cells = []
        for q in quantities:
            vs = [v for v in mine if v.quantity == q]
            cells.append(f"{sum(v.passed for v in vs)}/{len(vs)}" if vs else "–")
        w = worst[0] if worst else None
        rows.append([recipe, status, f"{n_pass}/{len(mine)}", *cells,
                     f"{w.quantity} {w.module}: {result.describe(w)}" if w else "–"])
        classes.append(["", "open" if cannot or status == "INCONCLUSIVE" else "yes" if status == "PASS" else "no",
                        *[""] * (len(cells) + 2)])
    if cannot:
        head = "No verdict: too little data to judge (" + "; ".join(cannot) + ")."
    else:
        head = "; ".join(f"{r[0]} {r[1]} ({r[2]} series)" for r in rows) + "."
    where = (f"Widths {', '.join(map(str, values))} (base {c['base_width']})" if axis == "width" else
             f"Depths {', '.join(map(str, values))} (base {c['base_depth']}, depth rule {c['depth_rule']}) at width "
             f"{c['width']}")
    prescribes = "μP prescribes" if axis == "width" else "the depth rule prescribes"
    body = [paragraph(f"{where}, {c['steps']} steps, "
                      f"{c['seeds']} seed(s), {c['optimizer']} lr {c['lr']:g}, "
                      f"{'a fresh batch per step' if c['fresh_batches'] else 'one fixed batch'}. The slope of log2 "
                      f"value against log2 {axis} is judged at t=0 and on average over the last steps against the "
                      f"slope {prescribes} (0 unless declared) ± {c['threshold']:g}, with its {result.level:.0%} "
                      f"confidence band over seeds and {axis}s: a series passes when the band lies inside, fails when "
                      f"it lies outside, and is inconclusive when it straddles the limit (more seeds or {axis}s decide "
                      "it). A recipe fails if any series fails, else is inconclusive if any series is, else passes."),
            table(["recipe", "verdict", "series within threshold", *(QUANTITIES[q] for q in quantities),
                   "worst series"], rows, classes=classes,
                  caption="Series within the threshold, per quantity; the worst series is the one furthest from "
                          "its expected slope.")]
    if cannot:
        body.append(warnings_box([f"Judging needs at least 3 {axis}s and 2 seeds; here: {'; '.join(cannot)}. The "
                                  f"counts above are shown, not judged: rerun with more {axis}s or seeds."]))
    return card(head, body)


def band_table(result: CoordCheckResult, per_recipe: int = 12) -> list:
    """The series that do not pass, with their slope, band and status, failed first (at most `per_recipe` per
    recipe), under a heading; nothing when every series passes."""
    rows, classes = [], []
    for recipe in result.config["recipes"]:
        for v in result.failures(recipe)[:per_recipe]:
            band = f"[{v.low:+.2f}, {v.high:+.2f}]" if v.low is not None and math.isfinite(v.low) else "–"
            advice = ("–" if v.status != INCONCLUSIVE else f"about {v.seeds_needed} seeds" if v.seeds_needed
                      else f"more {axis_of(result.config)[0]}s")
            rows.append([recipe, v.quantity, v.module, v.at, f"{v.slope:+.2f}", band, f"{v.expected:+.2f}",
                         v.status, advice])
            classes.append([""] * 7 + ["no" if v.status == FAIL else "open", ""])
    if not rows:
        return []
    return [heading("Series that do not pass"),
            table(["recipe", "quantity", "module", "judged at", "slope", f"{result.level:.0%} band", "expected",
                   "status", "would decide it"], rows, classes=classes,
                  caption=f"Each series' judged slope with its band; it fails when the band lies wholly outside "
                          f"expected ± {result.config['threshold']:g}, is inconclusive when the band crosses that "
                          "limit. 'would decide it': the seeds whose band, at this scatter, would clear the limit "
                          "if the slope stayed where it is.")]


def coord_check_figures(result: CoordCheckResult) -> dict[str, go.Figure]:
    """One figure per quantity, one panel per recipe: log2 value against log2 width, one line per module, a slider
    over the steps. The on-screen slope is the verdict's slope; failed series are dashed. The x-axis is the
    check's axis: width, or depth for a check across depth."""
    axis, widths = axis_of(result.config)
    means = seed_means(result.records, axis)
    slopes = {(r["recipe"], r["module"], r["quantity"], r["step"]): r for r in result.slopes}
    verdict = {(v.recipe, v.module, v.quantity): v for v in result.verdicts}
    figures = {}
    for quantity, label in QUANTITIES.items():
        series = sorted(k for k in means if k[2] == quantity)
        if not series:
            continue
        recipes = [r for r in result.config["recipes"] if any(k[0] == r for k in series)]  # mult: lrm only
        modules = sorted({m for _, m, _ in series})
        colour = {m: qualitative.Dark24[i % len(qualitative.Dark24)] for i, m in enumerate(modules)}
        steps = sorted({t for k in series for t, by_width in means[k].items() if any(by_width.values())})
        cols = min(2, len(recipes))
        nrows = math.ceil(len(recipes) / cols)
        fig = make_subplots(rows=nrows, cols=cols, shared_yaxes=True, horizontal_spacing=0.07,
                            vertical_spacing=0.22 / nrows, subplot_titles=[
                                f"{r}: {_status(result, r, quantity)}" for r in recipes])
        trace_steps = []
        for t in steps:
            in_legend = set()
            for i, recipe in enumerate(recipes):
                for module in modules:
                    by_width = means.get((recipe, module, quantity), {}).get(t)
                    if not by_width:
                        continue
                    row = slopes[(recipe, module, quantity, t)]
                    fig.add_trace(_trace(recipe, module, quantity, t, widths, by_width, row, colour[module],
                                         verdict.get((recipe, module, quantity)), result, module not in in_legend,
                                         axis),
                                  row=i // cols + 1, col=i % cols + 1)
                    trace_steps.append(t)
                    in_legend.add(module)
        last = steps[-1]
        for trace, t in zip(fig.data, trace_steps, strict=True):
            trace.visible = t == last
        fig.update_layout(
            title=f"{label}: log2 value against log2 {axis} (one line per module)",
            height=170 + 360 * nrows, hovermode="closest", legend={"font": {"size": 11}},
            sliders=[{"active": len(steps) - 1, "currentvalue": {"prefix": "step "}, "pad": {"t": 50}, "steps": [
                {"label": str(t), "method": "update", "args": [{"visible": [s == t for s in trace_steps]}]}
                for t in steps]}])
        fig.update_xaxes(title_text=axis, tickvals=[math.log2(w) for w in widths],
                         ticktext=[str(w) for w in widths])
        for row in range(1, nrows + 1):
            fig.update_yaxes(title_text=f"log2 {quantity}", row=row, col=1)
        figures[quantity] = fig
    return figures


def _status(result: CoordCheckResult, recipe: str, quantity: str) -> str:
    verdicts = [v for v in result.verdicts if v.recipe == recipe and v.quantity == quantity]
    n_pass = sum(v.passed for v in verdicts)
    worst = {v.status for v in verdicts}
    status = ("no verdict" if judgeable(result.config) else "FAIL" if FAIL in worst
              else "INCONCLUSIVE" if INCONCLUSIVE in worst else "PASS")
    return f"{status} {n_pass}/{len(verdicts)}"


def _trace(recipe, module, quantity, step, widths, by_width, row, colour, verdict, result,
           show_legend, axis="width") -> go.Scatter:
    xs = [w for w in widths if math.isfinite(by_width.get(w, 0)) and by_width.get(w, 0) > 0]  # a log axis
    slope = "n/a" if row["slope"] is None else f"{row['slope']:+.2f}"
    expected = f" (expected {row['expected']:+.2f}: {row['exception']})" if row["exception"] else ""
    judged = f"<br>verdict: {html.escape(result.describe(verdict))}" if verdict is not None else ""
    dash = {FAIL: "dash", INCONCLUSIVE: "dot"}.get(verdict.status if verdict is not None else None, "solid")
    return go.Scatter(
        x=[math.log2(w) for w in xs], y=[math.log2(by_width[w]) for w in xs], customdata=[[w, by_width[w]] for w in xs],
        mode="lines+markers", name=module, legendgroup=module, showlegend=show_legend,
        line={"color": colour, "dash": dash},
        meta={"recipe": recipe, "quantity": quantity, "step": step, "slope": row["slope"]},
        hovertemplate=f"<b>{module}</b><br>{axis} %{{customdata[0]}}<br>{quantity} %{{customdata[1]:.4g}}<br>"
                      f"slope {slope}{html.escape(expected)}{judged}<extra>{recipe}, t={step}</extra>")
