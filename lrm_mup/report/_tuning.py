"""The tuning report (`lrm-mup report`): the LR-transfer sweep and the transfer to the target width — a verdict,
the costs, LR curves, optimum against width, target losses, the multipliers' width scaling — from records
(`SweepTrial`s, a `TransferSummary`) through `lrm_mup.analysis`; Optuna's own plots come in as figures."""
from __future__ import annotations

import json
import math
import pathlib
from typing import Sequence

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from .._files import write_text_atomic
from ..analysis import tuning_numbers
from ..errors import MissingError
from ..records import SweepTrial, TransferSummary
from ._html import write_html


def write_tuning_report(trials: Sequence[SweepTrial], transfer: TransferSummary | None, out_dir, *,
                        sweep_name: str | None = None, sweep_folder: str | None = None,
                        transfer_folder: str | None = None, figures: Sequence[go.Figure] = (),
                        notes: Sequence[str] = (), plotlyjs: str = "inline") -> pathlib.Path:
    """out_dir/index.html (a verdict, then the figures) and out_dir/tuning.json (every number behind them,
    `lrm_mup.analysis.tuning_numbers`) from a sweep's trials and its transfer's summary (None: the sweep alone).
    `figures` and `notes` (Optuna's plots of the sweep and what could not be drawn: `lrm_mup.tuning.sweep.
    optuna_figures`) go at the end; `sweep_name` and the folders are recorded in tuning.json and name the page.
    Returns the path of index.html."""
    if not trials:
        raise MissingError(f"sweep {str(sweep_folder or sweep_name)!r} has no finished trial yet: nothing to report")
    numbers = tuning_numbers(trials, transfer)
    numbers["sweep"]["name"] = sweep_name
    numbers["sweep"]["folder"] = None if sweep_folder is None else str(sweep_folder)
    numbers["transfer_folder"] = None if transfer_folder is None else str(transfer_folder)
    own = tuning_figures(numbers)
    numbers["notes"] = list(notes)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "tuning.json", json.dumps(numbers, indent=1, allow_nan=False) + "\n")
    parts = [tuning_verdict(numbers), _cost_text(numbers), *own.values()]
    if notes:
        parts.append("\n".join(notes))
    parts += list(figures)
    title = f"Tuning report: {sweep_name or pathlib.Path(sweep_folder or 'sweep').name}"
    return write_html(out / "index.html", title, parts, plotlyjs=plotlyjs)


def tuning_verdict(numbers: dict) -> str:
    """The text at the top of the report."""
    v = numbers["verdict"]
    if v["winner"] is None:
        return "No recipe finished with a finite loss: no verdict."
    w = v["winner"]
    if v["runner_up"]:
        percent = 100 * v["margin_bpb"] / (v["winner_val_bpb"] + v["margin_bpb"])
        margin = f", {v['margin_bpb']:.4f} bits/byte ({percent:.1f}%) better than {v['runner_up']}."
    else:
        margin = "."
    lines = [f"Winner at width {v['target_width']} ({v['where']}): {w}, val {v['winner_val_bpb']:.4f} bits/byte"
             + margin]
    seeds = v.get("seeds")
    if seeds == 1 and v["runner_up"]:
        lines.append("One seed per run: the margin is only as solid as the seed-to-seed spread, which one seed does "
                     "not measure.")
    lines.append(_transfer_sentence(w, v["recipes"][w], v["threshold"]))
    lines.append("")
    lines.append(f"Per recipe (ranked at the {v['where']}; optimum log2 LR spread over the sweep's widths; μP recipes "
                 f"should stay within {v['threshold']:g}, SP typically does not):")
    for r in v["ranking"] + sorted(set(v["recipes"]) - set(v["ranking"])):
        lines.append(f"  {r:8s} " + _transfer_sentence(r, v["recipes"][r], v["threshold"], short=True))
    return "\n".join(lines)


def _transfer_sentence(recipe: str, s: dict, threshold: float, short: bool = False) -> str:
    val = f"val {s['target_val_bpb']:.4f}; " if short and s.get("target_val_bpb") is not None else ""
    if s.get("spread") is None:
        lr = "LR transfer not measured (the sweep has one width)"
    else:
        ok = s["spread"] <= threshold
        lr = (f"optimum log2 LR spread {s['spread']:g} over widths {s['widths']}: "
              + (("LR transferred" if ok else "LR did NOT transfer") if s["mu_p"] else
                 ("SP's optimum stayed put here" if ok else "the optimum moves with width, as SP's does")))
    gap = ""
    if s.get("lr_gap_log2") is not None:
        edge = " (optimum on the grid's edge: at least)" if s.get("optimum_at_edge") else ""
        gap = (f"; at the target the direct LR sweep's optimum is {s['lr_gap_log2']:+g} in log2 from the transferred "
               f"LR{edge}, costing {s['loss_gap_bpb']:.4f} bits/byte")
    return (val + lr + gap + ("" if short else "."))


def _cost_text(numbers: dict) -> str:
    lines = [("Tuning cost per recipe: the proxy sweep (trials at the proxy width; all widths in brackets) against "
              "one target run"),
             (f"  {'recipe':8s} {'trials':>11s} {'tokens':>21s} {'FLOPs':>21s} {'seconds':>17s} | "
              f"{'target FLOPs':>12s} {'target s':>9s} | proxy/target FLOPs, s")]

    def frac(c: dict, k: str) -> str:
        return f"{c[f'proxy_over_target_{k}']:.2f}" if c.get(f"proxy_over_target_{k}") is not None else "-"

    for r, c in numbers["costs"].items():
        p, a, t = c["proxy"], c["all"], c.get("target") or {}
        lines.append(f"  {r:8s} {p['trials']:>4d} [{a['trials']:>4d}] {p['tokens']:>9.3g} [{a['tokens']:>9.3g}] "
                     f"{p['flops']:>9.3g} [{a['flops']:>9.3g}] {p['seconds']:>7.1f} [{a['seconds']:>7.1f}] | "
                     f"{t.get('flops') or 0:>12.3g} {t.get('seconds') or 0:>9.1f} | "
                     f"{frac(c, 'flops')}, {frac(c, 'seconds')}")
    return "\n".join(lines)


def _named(fig: go.Figure, name: str) -> go.Figure:
    fig.update_layout(meta={"figure": name})
    return fig


def _colours(keys) -> dict:
    return {k: qualitative.Plotly[i % len(qualitative.Plotly)] for i, k in enumerate(keys)}


def tuning_figures(numbers: dict) -> dict[str, go.Figure]:
    """lr_curves, optimum_vs_width, target_loss, cost, multipliers (where the numbers exist)."""
    figures = {}
    curves = numbers["sweep"]["curves"]
    target = ((numbers["transfer"] or {}).get("recipes")) or {}
    recipes = sorted(set(curves) | set(target))
    widths = sorted({int(w) for by_width in curves.values() for w in by_width}
                    | {s["target_width"] for s in target.values()})
    colour = _colours(widths)

    # loss against log2 LR, one panel per recipe, one line per width, optimum marked
    fig = make_subplots(rows=1, cols=len(recipes), shared_yaxes=True, subplot_titles=[
        f"{r} (spread {_g(numbers['sweep']['spread'].get(r, {}).get('spread'))})" for r in recipes])
    shown = set()
    for col, r in enumerate(recipes, start=1):
        for w, c in sorted(((int(w), c) for w, c in curves.get(r, {}).items())):
            pts = [(x, y) for x, y in zip(c["log2_lr"], c["val_bpb"]) if y is not None]
            fig.add_trace(go.Scatter(x=[x for x, _ in pts], y=[y for _, y in pts], mode="lines+markers",
                                     name=f"width {w}", legendgroup=f"w{w}", showlegend=w not in shown,
                                     line={"color": colour[w]}, meta={"recipe": r, "width": w, "kind": "sweep"}),
                          row=1, col=col)
            shown.add(w)
            diverged = [x for x, y in zip(c["log2_lr"], c["val_bpb"]) if y is None]
            if diverged:  # drawn on the panel's top edge
                top = max((y for cc in curves[r].values() for y in cc["val_bpb"] if y is not None), default=8.0)
                fig.add_trace(go.Scatter(x=diverged, y=[top] * len(diverged), mode="markers", showlegend=False,
                                         marker={"symbol": "x", "size": 10, "color": colour[w]},
                                         name=f"width {w} diverged", hovertemplate="log2 LR %{x}: diverged",
                                         meta={"recipe": r, "width": w, "kind": "diverged"}), row=1, col=col)
            if c["opt_log2_lr"] is not None:
                fig.add_trace(go.Scatter(x=[c["opt_log2_lr"]], y=[c["opt_val_bpb"]], mode="markers",
                                         marker={"symbol": "star", "size": 14, "color": colour[w],
                                                 "line": {"color": "black", "width": 1}},
                                         name=f"optimum w{w}", legendgroup=f"w{w}", showlegend=False,
                                         meta={"recipe": r, "width": w, "kind": "optimum"}), row=1, col=col)
        t = target.get(r)
        if t and len(t["lr_sweep"]["log2_lr"]) > 1:
            w = t["target_width"]
            pts = [(x, y) for x, y in zip(t["lr_sweep"]["log2_lr"], t["lr_sweep"]["val_bpb"]) if y is not None]
            fig.add_trace(go.Scatter(x=[x for x, _ in pts], y=[y for _, y in pts], mode="lines+markers",
                                     name=f"width {w} (target, direct sweep)", legendgroup=f"t{w}",
                                     showlegend=f"t{w}" not in shown, line={"color": colour[w], "dash": "dash"},
                                     meta={"recipe": r, "width": w, "kind": "target"}), row=1, col=col)
            shown.add(f"t{w}")
            if t["target_val_bpb"] is not None:
                fig.add_trace(go.Scatter(x=[t["transferred_log2_lr"]], y=[t["target_val_bpb"]], mode="markers",
                                         marker={"symbol": "diamond-open", "size": 14, "color": colour[w]},
                                         name="transferred LR", showlegend=False,
                                         meta={"recipe": r, "width": w, "kind": "transferred"}), row=1, col=col)
    fig.update_xaxes(title_text="log2 LR")
    fig.update_yaxes(title_text="val bits/byte", row=1, col=1)
    fig.update_layout(title="Final validation loss against LR (stars: optimum per width; x: diverged; dashed: direct "
                            "LR sweep at the target; open diamond: the transferred LR)",
                      height=480, width=max(900, 340 * len(recipes)))
    figures["lr_curves"] = _named(fig, "lr_curves")

    # optimum log2 LR against width, per recipe
    fig = go.Figure()
    rc = _colours(recipes)
    for r in recipes:
        s = numbers["sweep"]["spread"].get(r)
        if s:
            ws = [w for w in s["widths"] if s["opt_log2_lr"].get(str(w)) is not None]
            fig.add_trace(go.Scatter(x=[math.log2(w) for w in ws], y=[s["opt_log2_lr"][str(w)] for w in ws],
                                     mode="lines+markers", name=f"{r} (spread {_g(s['spread'])})",
                                     line={"color": rc[r]}, customdata=ws,
                                     hovertemplate="width %{customdata}: optimum log2 LR %{y}",
                                     meta={"recipe": r, "kind": "sweep"}))
        t = target.get(r)
        if t and t.get("target_optimum_log2_lr") is not None:
            fig.add_trace(go.Scatter(x=[math.log2(t["target_width"])], y=[t["target_optimum_log2_lr"]],
                                     mode="markers", marker={"symbol": "diamond-open", "size": 13, "color": rc[r]},
                                     name=f"{r} target (direct sweep)", meta={"recipe": r, "kind": "target"}))
    fig.update_xaxes(title_text="width", tickvals=[math.log2(w) for w in widths], ticktext=[str(w) for w in widths])
    fig.update_layout(title="Optimum log2 LR against width (spread = max − min over the sweep's widths)",
                      yaxis_title="optimum log2 LR", height=450, width=900)
    figures["optimum_vs_width"] = _named(fig, "optimum_vs_width")

    # loss at the target width per recipe
    if target:
        names = sorted(target, key=lambda r: (target[r]["target_val_bpb"] is None, target[r]["target_val_bpb"]))
        fig = go.Figure([
            go.Bar(x=names, y=[target[r]["target_val_bpb"] for r in names], name="transferred LR",
                   meta={"kind": "transferred"}),
            go.Bar(x=names, y=[target[r]["target_optimum_val_bpb"] for r in names], name="target's own optimum "
                   "(direct LR sweep)", meta={"kind": "optimum"})])
        ws = sorted({target[r]["target_width"] for r in names})
        fig.update_layout(title=f"Validation loss at the target width {', '.join(map(str, ws))}", barmode="group",
                          yaxis_title="val bits/byte", height=420, width=800)
        ys = [y for t in fig.data for y in t.y if y is not None]
        if ys:  # zoom on the differences: bars from 0 would hide them
            lo, hi = min(ys), max(ys)
            fig.update_yaxes(range=[lo - 0.2 * (hi - lo) - 0.02, hi + 0.1 * (hi - lo) + 0.02])
        figures["target_loss"] = _named(fig, "target_loss")

    # tuning cost table
    costs = numbers["costs"]
    rows = list(costs)
    def f(x, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    cells = [rows,
             [f"{costs[r]['proxy']['trials']} [{costs[r]['all']['trials']}]" for r in rows],
             [f"{f(costs[r]['proxy']['tokens'], '.3g')} [{f(costs[r]['all']['tokens'], '.3g')}]" for r in rows],
             [f"{f(costs[r]['proxy']['flops'], '.3g')} [{f(costs[r]['all']['flops'], '.3g')}]" for r in rows],
             [f"{f(costs[r]['proxy']['seconds'], '.1f')} [{f(costs[r]['all']['seconds'], '.1f')}]" for r in rows],
             [f((costs[r].get("target") or {}).get("flops"), ".3g") for r in rows],
             [f((costs[r].get("target") or {}).get("seconds"), ".1f") for r in rows],
             [f(costs[r]["proxy_over_target_flops"], ".3f") for r in rows],
             [f(costs[r]["proxy_over_target_seconds"], ".3f") for r in rows]]
    header = ["recipe", "proxy trials [all widths]", "proxy tokens [all]", "proxy FLOPs [all]", "proxy s [all]",
              "target run FLOPs", "target run s", "proxy/target FLOPs", "proxy/target s"]
    fig = go.Figure(go.Table(header={"values": header}, cells={"values": cells}))
    fig.update_layout(title="Tuning cost: proxy sweep against one target run", height=120 + 40 * len(rows),
                      width=1100)
    figures["cost"] = _named(fig, "cost")

    if numbers.get("multipliers") and numbers["multipliers"].get("quantities"):
        figures["multipliers"] = _named(multiplier_figure(numbers["multipliers"]), "multipliers")
    return figures


def multiplier_figure(scaling: dict) -> go.Figure:
    """Learned multipliers against width (paper Fig. 5): per role, total = fixed μP × learned (solid) and the learned
    part alone (dotted), log2 axes; the legend carries each fitted slope next to the paper's prediction."""
    quantities = {k: q for k, q in scaling["quantities"].items() if "." not in k}
    per_kind = {k: q for k, q in scaling["quantities"].items() if "." in k}
    fig = make_subplots(rows=1, cols=2, subplot_titles=["total multiplier (fixed μP × learned) and learned part",
                                                        "learned per multiplier kind (row / col means, scalar)"])
    colour = _colours(sorted(quantities))
    for name, q in quantities.items():
        xs = [math.log2(w) for w in q["widths"]]
        pred = "" if q["predicted"] is None else f", paper d^{q['predicted']:+g}"
        for key, dash in (("total", "solid"), ("learned", "dot")):
            ys = [None if v is None or v <= 0 else math.log2(v) for v in q[key]]
            slope = q[f"slope_{key}"]
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", line={"color": colour[name], "dash": dash},
                                     name=f"{name} {key}: slope {_g(slope, '+.2f')}" + (pred if key == "total" else ""),
                                     legendgroup=name, meta={"quantity": name, "kind": key, "slope": slope,
                                                             "predicted": q["predicted"]}), row=1, col=1)
    kc = _colours(sorted(per_kind))
    for name, q in per_kind.items():
        ys = [None if v is None or v <= 0 else math.log2(v) for v in q["learned"]]
        fig.add_trace(go.Scatter(x=[math.log2(w) for w in q["widths"]], y=ys, mode="lines+markers",
                                 line={"color": kc[name]}, name=f"{name}: slope {_g(q['slope_learned'], '+.2f')}",
                                 meta={"quantity": name, "kind": "learned", "slope": q["slope_learned"]}),
                      row=1, col=2)
    widths = scaling["widths"]
    fig.update_xaxes(title_text="width", tickvals=[math.log2(w) for w in widths], ticktext=[str(w) for w in widths])
    fig.update_yaxes(title_text="log2 multiplier", row=1, col=1)
    fig.update_layout(title=f"Learned multipliers against width ({scaling['placement']} placement, "
                            f"{scaling['optimizer']}): slope of log2 value vs log2 width",
                      height=560, width=1300)
    return fig


def _g(x, fmt: str = "g") -> str:
    return "n/a" if x is None else format(x, fmt)
