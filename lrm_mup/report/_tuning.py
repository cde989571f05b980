"""The tuning report (`lrm-mup report`): the LR-transfer sweep and the transfer to the target width, as a page — a
headline card (the winner, by how much against the seed spread, whether each recipe's LR transferred by a stated
criterion, what the data cannot tell), the costs as a table, then figures with captions (LR curves, optimum against
width, target losses, costs, the multipliers' width scaling) — from records (`SweepTrial`s, a `TransferSummary`)
through `lrm_mup.analysis`; Optuna's own plots come in as figures. `verdict_lines` is the same verdict in a few
terminal lines. Given the demo's tier numbers, the page leads with the tuning-cost curves and the tier table
(`ablation_section`, the ablation page's parts; `ablation_lines` for the terminal)."""
from __future__ import annotations

import json
import math
import pathlib
from typing import Sequence

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from .._files import write_text_atomic
from ..analysis import tuning_headline, tuning_numbers
from ..errors import MissingError
from ..records import Equilibrium, SweepTrial, TransferSummary
from ._equilibrium import equilibrium_section
from ._html import Figure, Html, card, heading, paragraph, table, warnings_box, write_html

SYMBOLS = ("circle", "square", "diamond", "triangle-up", "cross", "x", "star", "hexagon")


def write_tuning_report(trials: Sequence[SweepTrial], transfer: TransferSummary | None, out_dir, *,
                        sweep_name: str | None = None, sweep_folder: str | None = None,
                        transfer_folder: str | None = None, figures: Sequence[go.Figure] = (),
                        notes: Sequence[str] = (), plotlyjs: str = "inline",
                        equilibria: Sequence[Equilibrium] = (), ablation: dict | None = None) -> pathlib.Path:
    """out_dir/index.html (the headline card, the cost table, then the figures) and out_dir/tuning.json (every
    number behind them: `lrm_mup.analysis.tuning_numbers`, plus "headline": `lrm_mup.analysis.tuning_headline`)
    from a sweep's trials and its transfer's summary (None: the sweep alone). `figures` and `notes` (Optuna's plots
    of the sweep and what could not be drawn: `lrm_mup.tuning.sweep.optuna_figures`) go at the end; `sweep_name` and
    the folders are recorded in tuning.json and name the page; `equilibria` (the transfer's runs that `lrm-mup
    equilibrium` measured) add one noise–WD equilibrium section each. `ablation` (numbers of
    `lrm_mup.analysis.ablation_numbers`, the demo's tiers): the page then LEADS with its tuning-cost curves and tier
    table (`ablation_section`), and tuning.json holds them under "ablation". Returns the path of index.html."""
    if not trials:
        raise MissingError(f"sweep {str(sweep_folder or sweep_name)!r} has no finished trial yet: nothing to report")
    numbers = tuning_numbers(trials, transfer)
    numbers["headline"] = tuning_headline(trials, transfer)
    numbers["sweep"]["name"] = sweep_name
    numbers["sweep"]["folder"] = None if sweep_folder is None else str(sweep_folder)
    numbers["transfer_folder"] = None if transfer_folder is None else str(transfer_folder)
    own = tuning_figures(numbers)
    numbers["notes"] = list(notes)
    if ablation is not None:
        numbers["ablation"] = ablation
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "tuning.json", json.dumps(numbers, indent=1, allow_nan=False) + "\n")
    parts: list = [] if ablation is None else ablation_section(ablation, "Tuning-cost curves")
    parts += [headline_card(numbers["headline"]), heading("Tuning cost"), cost_table(numbers)]
    parts += [heading("Figures")] + [Figure(fig, CAPTIONS[name]) for name, fig in own.items()]
    parts += optuna_section(figures, notes, sweep_folder)
    for rec in equilibria:
        parts += equilibrium_section(rec)
    title = f"Tuning report: {sweep_name or pathlib.Path(sweep_folder or 'sweep').name}"
    return write_html(out / "index.html", title, parts, plotlyjs=plotlyjs)


# ----------------------------------------------------------------------------------------------------------
# the verdict: a card on the page, a few lines in the terminal

STATUS = {True: ("LR transferred", "yes"), False: ("LR did NOT transfer", "no"), None: ("open", "open")}


def headline_sentence(h: dict) -> str:
    """'Winner at width W (where): R, val X bits/byte, M bits/byte (P%) better than S.'"""
    if h["winner"] is None:
        return "No recipe finished with a finite loss: no verdict."
    where = f"width {h['target_width']} ({h['where']})"
    margin = (f", {h['margin_bpb']:.4f} bits/byte ({h['margin_percent']:.1f}%) better than {h['runner_up']}"
              if h["runner_up"] else "")
    return f"Winner at {where}: {h['winner']}, val {h['winner_val_bpb']:.4f} bits/byte{margin}."


def _seed_sentence(h: dict) -> str:
    if h["winner"] is None or not h["runner_up"]:
        return ""
    if h["seeds"] <= 1:
        return ""  # a warning says it
    rec = h["recipes"]
    ranges = ", ".join(f"{r} {rec[r]['seed_range_bpb']:.4f}" for r in (h["winner"], h["runner_up"])
                       if rec[r]["seed_range_bpb"] is not None)
    clear = {True: "larger than both: a clear win", False: "within the seed-to-seed range: not a clear win",
             None: "not comparable"}[h["clear_win"]]
    return f"Seed spread (max − min over {h['seeds']} seeds): {ranges} bits/byte; the margin is {clear}."


def headline_card(h: dict) -> Html:
    """The card at the top of the report: the winner, the seed spread, one row per recipe, the criterion, warnings."""
    rows, classes = [], []
    for r, s in h["recipes"].items():
        label, cls = STATUS[s["transferred"]]
        rows.append([r, "μP" if s["mu_p"] else "SP", s["val_bpb"], s["spread"], label, s["why"]])
        classes.append(["", "", "", "", cls, ""])
    where = f"val bits/byte at width {h['target_width']}" if h["target_width"] else "val bits/byte"
    body = [_seed_sentence(h)] if _seed_sentence(h) else []
    body += [table(["recipe", "kind", where, "optimum log2 LR spread", "LR transfer", "why"], rows, classes=classes),
             paragraph(f"Criterion: {h['criterion']}."), warnings_box(h["warnings"])]
    return card(headline_sentence(h), body)


def verdict_lines(numbers: dict, max_warnings: int = 2) -> list[str]:
    """The verdict in a few terminal lines (what the demo and `lrm-mup report` end with), from tuning.json's numbers."""
    h = numbers["headline"]
    lines = ["verdict: " + headline_sentence(h)]
    if _seed_sentence(h):
        lines.append("  " + _seed_sentence(h))
    for r, s in h["recipes"].items():
        lines.append(f"  {r:8s} {STATUS[s['transferred']][0]}: {s['why']}")
    for w in h["warnings"][:max_warnings]:
        lines.append("  warning: " + w)
    if len(h["warnings"]) > max_warnings:
        lines.append(f"  (+{len(h['warnings']) - max_warnings} more warnings in the report)")
    return lines


# ----------------------------------------------------------------------------------------------------------
# the cost table


def cost_table(numbers: dict) -> Html:
    """Per recipe: the proxy sweep's (and the whole sweep's) trials and FLOPs against one target run's, then seconds."""
    rows = []
    for r, c in numbers["costs"].items():
        p, a, t = c["proxy"], c["all"], c.get("target") or {}
        rows.append([r, p["trials"], p["flops"], a["trials"], a["flops"], t.get("flops"),
                     c.get("proxy_over_target_flops"), p["seconds"], t.get("seconds"),
                     c.get("proxy_over_target_seconds")])
    noise = numbers["headline"].get("timing_noise")
    load = (f" Here trials of identical FLOPs took up to {noise:.1f}x each other's time: the machine was loaded."
            if noise else "")
    return table(["recipe", "proxy trials", "proxy FLOPs", "all trials", "all FLOPs", "one target run FLOPs",
                  "proxy / target FLOPs", "proxy seconds", "target run seconds", "proxy / target seconds"], rows,
                 caption="The proxy sweep is the trials at the proxy width (the sweep's smallest); 'all' counts every "
                         "width. FLOPs are model training FLOPs and do not depend on the machine; seconds are wall "
                         "time, which varies with the machine's load, so compare costs in FLOPs." + load)


# ----------------------------------------------------------------------------------------------------------
# figures

CAPTIONS = {
    "lr_curves": "One panel per recipe: final validation loss (bits/byte, seed mean) against log2 LR, one colour "
                 "per width. Stars: each width's optimum; ×: diverged runs, drawn on the panel's top edge; dashed: "
                 "the direct LR sweep at the target width; open diamond: the transferred LR there. An LR transfers "
                 "when the stars line up vertically and the diamond sits at the bottom of the dashed curve. An "
                 "optimum at a curve's first or last point is on the grid's edge: the true one may lie beyond.",
    "optimum_vs_width": "The optimum log2 LR of each recipe against width (a flat line: the LR transfers). Recipes "
                        "are nudged sideways and drawn with their own marker so that equal optima stay visible; "
                        "open diamonds: the best LR of the direct sweep at the target width.",
    "target_loss": "Validation loss at the target width, one row per recipe (lower is better). A dot plot on a "
                   "zoomed axis: compare positions, not lengths. Filled circle: at the transferred LR; open "
                   "diamond: at the best LR of the direct sweep there; the segment between them is what the "
                   "transferred LR costs.",
    "cost": "Model training FLOPs per recipe, log scale: the proxy sweep (trials at the proxy width), the whole sweep "
            "(every width) and one run at the target width. FLOPs do not depend on the machine's load; the table "
            "above also gives wall seconds.",
    "multipliers": "Learned multipliers against width, log2 axes (paper Fig. 5). Top: per role, the total "
                   "multiplier (fixed μP part × learned part, solid) and the learned part alone (dotted); the "
                   "legend gives each fitted slope and the paper's prediction. Bottom: the learned part per "
                   "multiplier kind (row and column means, scalar), squares and dash-dots. A slope near 0 for the "
                   "learned part means μP's fixed scaling already fits.",
}


def _named(fig: go.Figure, name: str) -> go.Figure:
    fig.update_layout(meta={"figure": name})
    return fig


def _colours(keys, palette=qualitative.Plotly) -> dict:
    return {k: palette[i % len(palette)] for i, k in enumerate(keys)}


def _top_legend(fig: go.Figure) -> None:
    """The legend in a row under the title (a legend on the right squeezes the panels on a narrow window). Call
    after the figure's height is set."""
    height = fig.layout.height or 450
    fig.update_layout(legend={"orientation": "h", "yanchor": "top", "y": 1 - 42 / height, "yref": "container",
                              "xanchor": "left", "x": 0},
                      title={"y": 1 - 12 / height, "yref": "container", "yanchor": "top"}, margin={"t": 125, "r": 30})


def tuning_figures(numbers: dict) -> dict[str, go.Figure]:
    """lr_curves, optimum_vs_width, target_loss, cost, multipliers (where the numbers exist)."""
    figures = {}
    curves = numbers["sweep"]["curves"]
    target = ((numbers["transfer"] or {}).get("recipes")) or {}
    recipes = sorted(set(curves) | set(target))
    widths = sorted({int(w) for by_width in curves.values() for w in by_width}
                    | {s["target_width"] for s in target.values()})
    colour = _colours(widths)

    # loss against log2 LR, one panel per recipe (two to a row), one line per width, optimum marked
    cols = 1 if len(recipes) == 1 else 2
    nrows = math.ceil(len(recipes) / cols)
    fig = make_subplots(rows=nrows, cols=cols, shared_yaxes=True, horizontal_spacing=0.06,
                        vertical_spacing=0.18 / max(1, nrows - 1) if nrows > 1 else 0.1, subplot_titles=[
                            f"{r} (optimum spread {_g(numbers['sweep']['spread'].get(r, {}).get('spread'))})"
                            for r in recipes])
    shown = set()
    for i, r in enumerate(recipes):
        at = {"row": i // cols + 1, "col": i % cols + 1}
        for w, c in sorted(((int(w), c) for w, c in curves.get(r, {}).items())):
            pts = [(x, y) for x, y in zip(c["log2_lr"], c["val_bpb"]) if y is not None]
            fig.add_trace(go.Scatter(x=[x for x, _ in pts], y=[y for _, y in pts], mode="lines+markers",
                                     name=f"width {w}", legendgroup=f"w{w}", showlegend=w not in shown,
                                     line={"color": colour[w]}, meta={"recipe": r, "width": w, "kind": "sweep"}),
                          **at)
            shown.add(w)
            diverged = [x for x, y in zip(c["log2_lr"], c["val_bpb"]) if y is None]
            if diverged:  # drawn on the panel's top edge
                top = max((y for cc in curves[r].values() for y in cc["val_bpb"] if y is not None), default=8.0)
                fig.add_trace(go.Scatter(x=diverged, y=[top] * len(diverged), mode="markers", showlegend=False,
                                         marker={"symbol": "x", "size": 10, "color": colour[w]},
                                         name=f"width {w} diverged", hovertemplate="log2 LR %{x}: diverged",
                                         meta={"recipe": r, "width": w, "kind": "diverged"}), **at)
            if c["opt_log2_lr"] is not None:
                fig.add_trace(go.Scatter(x=[c["opt_log2_lr"]], y=[c["opt_val_bpb"]], mode="markers",
                                         marker={"symbol": "star", "size": 14, "color": colour[w],
                                                 "line": {"color": "black", "width": 1}},
                                         name=f"optimum w{w}", legendgroup=f"w{w}", showlegend=False,
                                         meta={"recipe": r, "width": w, "kind": "optimum"}), **at)
        t = target.get(r)
        if t and len(t["lr_sweep"]["log2_lr"]) > 1:
            w = t["target_width"]
            pts = [(x, y) for x, y in zip(t["lr_sweep"]["log2_lr"], t["lr_sweep"]["val_bpb"]) if y is not None]
            fig.add_trace(go.Scatter(x=[x for x, _ in pts], y=[y for _, y in pts], mode="lines+markers",
                                     name=f"width {w} (target, direct sweep)", legendgroup=f"t{w}",
                                     showlegend=f"t{w}" not in shown, line={"color": colour[w], "dash": "dash"},
                                     meta={"recipe": r, "width": w, "kind": "target"}), **at)
            shown.add(f"t{w}")
            if t["target_val_bpb"] is not None:
                fig.add_trace(go.Scatter(x=[t["transferred_log2_lr"]], y=[t["target_val_bpb"]], mode="markers",
                                         marker={"symbol": "diamond-open", "size": 14, "color": colour[w],
                                                 "line": {"width": 2}},
                                         name="transferred LR", showlegend=False,
                                         meta={"recipe": r, "width": w, "kind": "transferred"}), **at)
    fig.update_xaxes(title_text="log2 LR")
    for row in range(1, nrows + 1):
        fig.update_yaxes(title_text="val bits/byte", row=row, col=1)
    fig.update_layout(title="Final validation loss against LR", height=140 + 330 * nrows)
    _top_legend(fig)
    figures["lr_curves"] = _named(fig, "lr_curves")

    # optimum log2 LR against width, per recipe, nudged sideways so that equal optima stay visible
    fig = go.Figure()
    rc = _colours(recipes)
    nudge = {r: 0.05 * (i - (len(recipes) - 1) / 2) for i, r in enumerate(recipes)}
    for i, r in enumerate(recipes):
        s = numbers["sweep"]["spread"].get(r)
        symbol = SYMBOLS[i % len(SYMBOLS)]
        if s:
            ws = [w for w in s["widths"] if s["opt_log2_lr"].get(str(w)) is not None]
            fig.add_trace(go.Scatter(x=[math.log2(w) + nudge[r] for w in ws], y=[s["opt_log2_lr"][str(w)] for w in ws],
                                     mode="lines+markers", name=f"{r} (spread {_g(s['spread'])})",
                                     line={"color": rc[r]}, marker={"symbol": symbol, "size": 11}, customdata=ws,
                                     legendgroup=r, hovertemplate=f"{r}, width %{{customdata}}: optimum log2 LR %{{y}}"
                                                                  "<extra></extra>",
                                     meta={"recipe": r, "kind": "sweep"}))
        t = target.get(r)
        if t and t.get("target_optimum_log2_lr") is not None:
            fig.add_trace(go.Scatter(x=[math.log2(t["target_width"]) + nudge[r]], y=[t["target_optimum_log2_lr"]],
                                     mode="markers", legendgroup=r,
                                     marker={"symbol": "diamond-open", "size": 14, "color": rc[r],
                                             "line": {"width": 2}},
                                     name=f"{r} target (direct sweep)", meta={"recipe": r, "kind": "target"},
                                     hovertemplate=f"{r}, target width {t['target_width']}: best log2 LR %{{y}}"
                                                   "<extra></extra>"))
    ys = [y for tr in fig.data for y in tr.y if y is not None]
    fig.update_xaxes(title_text="width", tickvals=[math.log2(w) for w in widths], ticktext=[str(w) for w in widths])
    fig.update_yaxes(title_text="optimum log2 LR", dtick=1,
                     range=[min(ys) - 0.6, max(ys) + 0.6] if ys else None)
    fig.update_layout(title="Optimum log2 LR against width (spread = max − min over the sweep's widths)", height=460)
    figures["optimum_vs_width"] = _named(fig, "optimum_vs_width")

    # loss at the target width per recipe: a dot plot (a zoomed axis would make bars lie)
    if target:
        names = sorted(target, key=lambda r: (target[r]["target_val_bpb"] is None, target[r]["target_val_bpb"]))
        names = names[::-1]  # the best at the top
        fig = go.Figure()
        for r in names:
            a, b = target[r]["target_val_bpb"], target[r]["target_optimum_val_bpb"]
            if a is not None and b is not None:
                fig.add_trace(go.Scatter(x=[a, b], y=[r, r], mode="lines", line={"color": "#999", "width": 3},
                                         showlegend=False, hoverinfo="skip", meta={"kind": "gap", "recipe": r}))
        fig.add_trace(go.Scatter(x=[target[r]["target_val_bpb"] for r in names], y=names, mode="markers",
                                 marker={"symbol": "circle", "size": 13, "color": "#1f77b4"}, name="transferred LR",
                                 hovertemplate="%{y}: %{x:.4f} bits/byte at the transferred LR<extra></extra>",
                                 meta={"kind": "transferred"}))
        fig.add_trace(go.Scatter(x=[target[r]["target_optimum_val_bpb"] for r in names], y=names, mode="markers",
                                 marker={"symbol": "diamond-open", "size": 14, "color": "#d62728",
                                         "line": {"width": 2}},
                                 name="target's own optimum (direct LR sweep)",
                                 hovertemplate="%{y}: %{x:.4f} bits/byte at the direct sweep's best LR<extra></extra>",
                                 meta={"kind": "optimum"}))
        ws = sorted({target[r]["target_width"] for r in names})
        fig.update_layout(title=f"Validation loss at the target width {', '.join(map(str, ws))}",
                          xaxis_title="val bits/byte (lower is better; zoomed axis)", height=160 + 45 * len(names))
        _top_legend(fig)
        figures["target_loss"] = _named(fig, "target_loss")

    # tuning cost in FLOPs (the table has the seconds too)
    costs = numbers["costs"]
    rows = list(costs)
    series = [("proxy sweep", [costs[r]["proxy"]["flops"] for r in rows]),
              ("whole sweep (every width)", [costs[r]["all"]["flops"] for r in rows]),
              ("one target run", [(costs[r].get("target") or {}).get("flops") for r in rows])]
    fig = go.Figure([go.Bar(x=rows, y=[v or None for v in ys], name=name, meta={"kind": name})
                     for name, ys in series if any(ys)])
    flops = [v for _, ys in series for v in ys if v]
    fig.update_yaxes(type="log", title_text="model training FLOPs (log scale)",
                     range=[math.log10(min(flops)) - 1, math.log10(max(flops)) + 0.2] if flops else None)
    fig.update_layout(title="Tuning cost: the proxy sweep against one target run", barmode="group", height=420)
    _top_legend(fig)
    figures["cost"] = _named(fig, "cost")

    if numbers.get("multipliers") and numbers["multipliers"].get("quantities"):
        figures["multipliers"] = _named(multiplier_figure(numbers["multipliers"]), "multipliers")
    return figures


def multiplier_figure(scaling: dict) -> go.Figure:
    """Learned multipliers against width (paper Fig. 5): per role, total = fixed μP × learned (solid) and the learned
    part alone (dotted), log2 axes; the legend carries each fitted slope next to the paper's prediction. Below, the
    learned part per multiplier kind, in a palette of its own (squares, dash-dot) so that no colour means two things."""
    quantities = {k: q for k, q in scaling["quantities"].items() if "." not in k}
    per_kind = {k: q for k, q in scaling["quantities"].items() if "." in k}
    fig = make_subplots(rows=2, cols=1, vertical_spacing=0.12, subplot_titles=[
        "per role: total multiplier (fixed μP × learned, solid) and learned part (dotted)",
        "learned part per multiplier kind (row / col means, scalar)"])
    colour = _colours(sorted(quantities))
    for name, q in quantities.items():
        xs = [math.log2(w) for w in q["widths"]]
        pred = "" if q["predicted"] is None else f", paper d^{q['predicted']:+g}"
        for key, dash in (("total", "solid"), ("learned", "dot")):
            ys = [None if v is None or v <= 0 else math.log2(v) for v in q[key]]
            slope = q[f"slope_{key}"]
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", line={"color": colour[name], "dash": dash},
                                     name=f"{name} {key}: slope {_g(slope, '+.2f')}" + (pred if key == "total" else ""),
                                     legendgroup="roles", legendgrouptitle_text="per role",
                                     meta={"quantity": name, "kind": key, "slope": slope,
                                           "predicted": q["predicted"]}), row=1, col=1)
    kc = _colours(sorted(per_kind), qualitative.Dark24)
    for name, q in per_kind.items():
        ys = [None if v is None or v <= 0 else math.log2(v) for v in q["learned"]]
        fig.add_trace(go.Scatter(x=[math.log2(w) for w in q["widths"]], y=ys, mode="lines+markers",
                                 line={"color": kc[name], "dash": "dashdot"}, marker={"symbol": "square"},
                                 name=f"{name} learned: slope {_g(q['slope_learned'], '+.2f')}",
                                 legendgroup="kinds", legendgrouptitle_text="per kind",
                                 meta={"quantity": name, "kind": "learned", "slope": q["slope_learned"]}),
                      row=2, col=1)
    widths = scaling["widths"]
    fig.update_xaxes(title_text="width", tickvals=[math.log2(w) for w in widths], ticktext=[str(w) for w in widths])
    fig.update_yaxes(title_text="log2 multiplier")
    fig.update_layout(title=f"Learned multipliers against width ({scaling['placement']} placement, "
                            f"{scaling['optimizer']})", height=900, legend={"groupclick": "toggleitem"})
    return fig


# ----------------------------------------------------------------------------------------------------------
# Optuna's plots

def optuna_section(figures: Sequence[go.Figure], notes: Sequence[str], sweep_folder) -> list:
    """Optuna's own plots of the sweep (`lrm_mup.tuning.sweep.optuna_figures`), with how to read them and how to
    browse the same studies live in optuna-dashboard."""
    if not figures and not notes:
        return []
    journal = f"{sweep_folder}/optuna.journal" if sweep_folder else "runs/NAME/optuna.journal"
    parts: list = [heading("Optuna's plots"), paragraph(
        "Optuna's own views of each recipe's study, objective val bits/byte. A grid over width and seed is not a "
        "search, so these are drawn per width (history) or at the proxy width (slice, importances), never pooled "
        f"over widths. The same studies open live in optuna-dashboard: `optuna-dashboard {journal}` "
        "(pip install optuna-dashboard; README).")]
    if notes:
        parts.append(Html("<ul>" + "".join(f"<li>{paragraph(n).html}</li>" for n in notes) + "</ul>"))
    for fig in figures:
        name = (fig.layout.meta or {}).get("figure", "") if isinstance(fig.layout.meta, dict) else ""
        kind = name.split(":", 1)[0]
        parts.append(Figure(fig, OPTUNA_CAPTIONS.get(kind, "")))
    return parts


OPTUNA_CAPTIONS = {
    "optuna_history": "Each trial's val bits/byte in the order it ran, one series per width, with each width's best "
                      "so far. A grid runs its points in a shuffled order: the history shows coverage, not learning.",
    "optuna_slice": "val bits/byte against each searched parameter at the proxy width (width and seed are grid axes, "
                    "not searched): the shape of the objective along each parameter.",
    "optuna_importances": "How much each searched parameter explains the objective at the proxy width (PED-ANOVA).",
}


def _g(x, fmt: str = "g") -> str:
    return "n/a" if x is None else format(x, fmt)


# ----------------------------------------------------------------------------------------------------------
# the tuning ablation (tiers) and the tuning-cost curves: numbers from lrm_mup.analysis.ablation_numbers

ABLATION_CAPTIONS = {
    "cost_curves": "The headline: validation loss at the target width (seed mean; bars: the seed range) reached by "
                   "each recipe and tier's best-so-far proxy setting, against the tuning compute spent on the proxy "
                   "by then — cumulative model training FLOPs (left, log scale) and trials (right). Every point was "
                   "trained at the target width. Dashed steps: a study tuned directly at the target width, its "
                   "best-so-far loss against its own cumulative FLOPs (and trials). Dotted line: the target loss of "
                   "the verdict. Lower and further left is cheaper tuning.",
    "tiers": "The paper's tuning ablation (§5.1): validation loss at the target width per recipe and tier (NONE: "
             "defaults; LR: the LR tuned; FULL: the LR and the multipliers' hyperparameters tuned — α for mup, the "
             "multipliers' LR for lrm), each tier's proxy winner trained with every seed. Small dots: the seeds; "
             "large: their mean. Lower is better.",
}


def _tier_label(row: dict) -> str:
    return f"{row['recipe']} {row['tier']}"


def ablation_figures(numbers: dict) -> dict[str, go.Figure]:
    """The cost curves (target loss against cumulative proxy FLOPs and trials) and the tier plot."""
    labels = list(numbers["targets"]) + [k for k in numbers["direct"] if k not in numbers["targets"]]
    colour = _colours(labels)
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.06,
                        subplot_titles=("against cumulative proxy FLOPs", "against proxy trials"))
    for i, (label, pts) in enumerate(numbers["targets"].items()):
        pts = [p for p in pts if p["val_bpb"] is not None]
        half = [(p["seed_range_bpb"] or 0) / 2 for p in pts]
        for col, x in ((1, [p["budget"]["flops"] for p in pts]), (2, [p["budget"]["trials"] for p in pts])):
            fig.add_trace(go.Scatter(x=x, y=[p["val_bpb"] for p in pts], mode="lines+markers", name=label,
                                     legendgroup=label, showlegend=col == 1,
                                     marker={"symbol": SYMBOLS[i % len(SYMBOLS)], "size": 9, "color": colour[label]},
                                     line={"color": colour[label]},
                                     error_y={"type": "data", "array": half, "visible": True},
                                     hovertemplate=f"{label}<br>%{{x:.3g}}<br>%{{y:.4f}} bits/byte<extra></extra>"),
                          row=1, col=col)
    for label, curve in numbers["direct"].items():
        pts = [p for p in curve["points"] if p["best_val_bpb"] is not None]
        name = f"{label}, tuned at the target width"
        for col, x in ((1, [p["flops"] for p in pts]), (2, [p["trials"] for p in pts])):
            fig.add_trace(go.Scatter(x=x, y=[p["best_val_bpb"] for p in pts], mode="lines", name=name,
                                     legendgroup=name, showlegend=col == 1, line={"dash": "dash", "shape": "hv",
                                                                                   "color": colour[label]}),
                          row=1, col=col)
    loss = numbers["verdict"]["target_loss"]
    if loss is not None:
        fig.add_hline(y=loss, line={"dash": "dot", "color": "#555"})
    fig.update_xaxes(type="log", title_text="cumulative tuning FLOPs", row=1, col=1)
    fig.update_xaxes(title_text="tuning trials", row=1, col=2)
    fig.update_yaxes(title_text=f"val bits/byte at width {numbers['target_width']}", row=1, col=1)
    fig.update_layout(title="Tuning cost: target-width loss of the best-so-far proxy setting", height=520)
    _top_legend(fig)
    figures = {"cost_curves": _named(fig, "cost_curves")}

    rows = numbers["tiers"]
    recipes = list(dict.fromkeys(r["recipe"] for r in rows))
    colour = _colours(recipes)
    fig = go.Figure()
    for i, recipe in enumerate(recipes):
        mine = [r for r in rows if r["recipe"] == recipe]
        xs = [r["tier"] for r in mine for v in r["seed_val_bpb"] if v is not None]
        ys = [v for r in mine for v in r["seed_val_bpb"] if v is not None]
        fig.add_trace(go.Scatter(x=[[x for x in xs], [recipe] * len(xs)], y=ys, mode="markers", name=f"{recipe} seeds",
                                 marker={"size": 6, "color": colour[recipe], "opacity": 0.5}, showlegend=False))
        fig.add_trace(go.Scatter(x=[[r["tier"] for r in mine], [recipe] * len(mine)], y=[r["val_bpb"] for r in mine],
                                 mode="markers", name=recipe,
                                 marker={"size": 14, "symbol": SYMBOLS[i % len(SYMBOLS)], "color": colour[recipe]}))
    fig.update_layout(title=f"Tuning tiers at width {numbers['target_width']}", height=440,
                      yaxis_title=f"val bits/byte at width {numbers['target_width']}", xaxis_title="tier / recipe")
    _top_legend(fig)
    figures["tiers"] = _named(fig, "tiers")
    return figures


def tier_table(numbers: dict) -> Html:
    """One row per recipe and tier: what it searched, its proxy trials and FLOPs, the winner's proxy value and
    parameters, the target loss per seed, mean and range."""
    rows = []
    for r in numbers["tiers"]:
        params = ", ".join(f"{k}={v:.2f}" for k, v in r["params"].items() if isinstance(v, (int, float)))
        rows.append([r["recipe"], r["tier"], ", ".join(r["searched"]) or "(defaults)", r["trials"],
                     r["proxy_flops"] or None, r["proxy_val_bpb"], params or "–",
                     " / ".join("–" if v is None else f"{v:.4f}" for v in r["seed_val_bpb"]),
                     None if r["val_bpb"] is None else f"{r['val_bpb']:.4f}", r["seed_range_bpb"]])
    return table(["recipe", "tier", "searched", "proxy trials", "proxy FLOPs", "proxy val bpb", "winner",
                  f"target val bpb per seed (width {numbers['target_width']})", "mean", "seed range"], rows,
                 caption="Equal trial budgets per tuned tier (the sampler's trials, one study per recipe and tier). "
                         "A tier's winner is its study's best proxy setting; NONE trains the defaults.")


def claims_table(numbers: dict) -> Html:
    rows, classes = [], []
    for c in numbers["claims"]:
        label = {True: "holds", False: "does not hold", None: "open (within the seed range)"}[c["holds"]]
        rows.append([c["claim"], f"{c['a']} − {c['b']}", c["difference_bpb"], c["seed_range_bpb"], label])
        classes.append(["", "", "", "", {True: "yes", False: "no", None: ""}[c["holds"]]])
    return table(["the paper's claim", "difference", "bits/byte", "seed range", "here"], rows, classes=classes,
                 caption="A difference counts only beyond the larger of the two rows' seed ranges; an ≈ claim holds "
                         "within it.")


def ablation_section(numbers: dict, title: str = "Tuning cost") -> list:
    """The ablation's parts of a page: under `title` the tuning-cost curves and their verdict (the headline), then
    under "Tier table" the tier table, the paper's claims and the tier plot. The card's first line is the numbers'
    "spec" "design" (the demo's, which reuses its sweep) or the ablation command's equal-budget design."""
    figs = ablation_figures(numbers)
    spec = numbers.get("spec", {})
    v = numbers["verdict"]
    design = spec.get("design") or (f"Proxy width {spec.get('proxy_width')}, {spec.get('steps')} steps, "
                                    f"{spec.get('trials')} trials per recipe and tier; target width "
                                    f"{numbers['target_width']}, seeds {spec.get('seeds')}")
    lines = [design + "; budgets " + ", ".join(f"{b:.3g}" for b in numbers["budgets"]) + " FLOPs."]
    return [heading(title), card(v["sentence"], lines), Figure(figs["cost_curves"], ABLATION_CAPTIONS["cost_curves"]),
            heading("Tier table"), tier_table(numbers), claims_table(numbers),
            Figure(figs["tiers"], ABLATION_CAPTIONS["tiers"])]


def ablation_lines(numbers: dict) -> list[str]:
    """The ablation in a few terminal lines (what the demo prints before its transfer verdict): the cost verdict's
    sentence, then the tier table compactly — per recipe and tier the target loss (seed mean), its seed range in
    brackets and the proxy trials it took — and how many of the paper's claims hold."""
    rows = {(r["recipe"], r["tier"]): r for r in numbers["tiers"]}
    recipes = list(dict.fromkeys(r["recipe"] for r in numbers["tiers"]))
    tiers = list(dict.fromkeys(r["tier"] for r in numbers["tiers"]))
    seeds = max((len(r["seed_val_bpb"]) for r in numbers["tiers"]), default=0)

    def cell(r: dict) -> str:
        mean = "diverged" if r["val_bpb"] is None else f"{r['val_bpb']:.4f}"
        spread = "" if r["seed_range_bpb"] is None else f" [{r['seed_range_bpb']:.4f}]"
        n = r["trials"]
        return f"{mean}{spread} ({n} trial{'' if n == 1 else 's'})"

    cells = {k: cell(r) for k, r in rows.items()}
    width = max(map(len, [*cells.values(), *tiers])) + 2
    lines = ["tuning cost: " + numbers["verdict"]["sentence"],
             f"tiers at width {numbers['target_width']} (val bits/byte, mean of {seeds} seed(s) [seed range] "
             "(proxy trials)):",
             "  " + f"{'':8s}" + "".join(f"{t:{width}s}" for t in tiers).rstrip()]
    for recipe in recipes:
        lines.append("  " + f"{recipe:8s}" + "".join(f"{cells.get((recipe, t), '–'):{width}s}"
                                                     for t in tiers).rstrip())
    verdicts = [c["holds"] for c in numbers["claims"]]
    lines.append(f"  the paper's tier claims: {verdicts.count(True)} hold, {verdicts.count(False)} do not, "
                 f"{verdicts.count(None)} open within the seed range (the report's claims table)")
    return lines


def write_ablation_report(numbers: dict, out_dir, *, plotlyjs: str = "inline") -> pathlib.Path:
    """out_dir/index.html — the tuning-cost curves and their verdict first (the headline), then the tier table, the
    paper's claims and the tier plot (`ablation_section`) — and out_dir/ablation.json (the numbers); returns the
    path of index.html."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "ablation.json", json.dumps(numbers, indent=1, allow_nan=False) + "\n")
    spec = numbers.get("spec", {})
    return write_html(out / "index.html", f"Tuning ablation: {spec.get('name', 'tiers')}", ablation_section(numbers),
                      plotlyjs=plotlyjs)
