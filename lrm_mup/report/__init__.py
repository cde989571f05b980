"""HTML reports that open offline: plotly figures with plotly.js inside the page or in one shared file beside it,
never from a CDN (reports are read on clusters without internet). `write_html` and `write_pngs` are shared by every
report; the coordinate check's report is `write_coord_check_report`.
"""
from __future__ import annotations

import html
import importlib.util
import math
import pathlib
import sys
from typing import Sequence

import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import qualitative
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from ..errors import MissingError
from ..tuning.coord_check import QUANTITIES, CoordCheckResult, seed_means

PLOTLY_JS = "plotly.min.js"


def write_html(path, title: str, parts: Sequence[str | go.Figure], *, plotlyjs: str = "inline") -> pathlib.Path:
    """One page with `parts` in order: text (shown preformatted) or plotly figures.

    plotlyjs="inline" makes a self-contained page (~4.8 MB of plotly.js); "directory" loads one plotly.min.js
    written beside the page, so several reports in one folder share it.
    """
    path = pathlib.Path(path)
    if plotlyjs == "inline":
        script = f'<script type="text/javascript">{get_plotlyjs()}</script>'
    elif plotlyjs == "directory":
        bundle = path.parent / PLOTLY_JS
        if not bundle.exists():
            bundle.write_text(get_plotlyjs(), encoding="utf-8")
        script = f'<script src="{PLOTLY_JS}" charset="utf-8"></script>'
    else:
        raise ValueError(f"plotlyjs={plotlyjs!r}: use 'inline' or 'directory' (a CDN needs internet)")
    body = [f"<pre>{html.escape(p)}</pre>" if isinstance(p, str) else
            pio.to_html(p, full_html=False, include_plotlyjs=False) for p in parts]
    page = (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>{script}</head>\n'
            f"<body><h1>{html.escape(title)}</h1>\n" + "\n".join(body) + "\n</body></html>\n")
    path.write_text(page, encoding="utf-8")
    return path


def write_pngs(figures: dict[pathlib.Path, go.Figure]) -> str | None:
    """Write every figure as PNG in one kaleido call (one browser start); returns a one-line note instead when
    kaleido or a Chromium is missing."""
    try:
        pio.write_images(list(figures.values()), list(figures))
    except (ImportError, RuntimeError) as err:
        reason = "kaleido is not installed" if importlib.util.find_spec("kaleido") is None else \
            next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        return f"PNG export skipped: {reason} (PNGs need kaleido>=1 and a Chrome/Chromium); the HTML has every figure"
    return None


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


# ----------------------------------------------------------------------------------------------------------
# The tuning report: LR-transfer sweep + transfer to the target width (`lrm-mup report`)


def write_tuning_report(sweep_dir, transfer_dir, out_dir, *, plotlyjs: str = "inline") -> pathlib.Path:
    """out_dir/index.html (a verdict, then the figures) and out_dir/tuning.json (every number behind them) from a
    sweep run folder (`lrm-mup sweep`) and a transfer folder (`lrm-mup transfer`; None: the sweep alone).
    Returns the path of index.html."""
    import json

    from ..tuning import transfer as tr

    spec, records = tr.sweep_records(sweep_dir)
    if not records:
        raise MissingError(f"sweep {str(sweep_dir)!r} has no finished trial yet: nothing to report")
    summary = tr.load_transfer(transfer_dir) if transfer_dir is not None else None
    numbers = tuning_numbers(records, summary)
    numbers["sweep"]["name"] = getattr(spec, "name", None)
    numbers["sweep"]["folder"] = str(sweep_dir)
    numbers["transfer_folder"] = None if transfer_dir is None else str(transfer_dir)
    figures = tuning_figures(numbers)
    optuna_figures, notes = _optuna_figures(sweep_dir, spec)
    numbers["notes"] = notes
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tuning.json").write_text(json.dumps(numbers, indent=1, allow_nan=False) + "\n",
                                     encoding="utf-8")
    parts = [tuning_verdict(numbers), _cost_text(numbers), *figures.values()]
    if notes:
        parts.append("\n".join(notes))
    parts += optuna_figures
    title = f"Tuning report: {numbers['sweep']['name'] or pathlib.Path(sweep_dir).name}"
    return write_html(out / "index.html", title, parts, plotlyjs=plotlyjs)


def _clean(x):
    """NaN/inf -> None, recursively (tuning.json is strict JSON, readable from JavaScript)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def tuning_numbers(records: list[dict], summary: dict | None) -> dict:
    """Every number of the report: LR curves and optima per width, spreads, costs, target results, verdict."""
    from ..tuning import transfer as tr

    curves = tr.lr_curves(records)
    spread = tr.optimum_spread(curves)
    proxy_width = {r: s["proxy_width"] for r, s in (summary or {}).get("recipes", {}).items()}
    costs = tr.sweep_costs(records, proxy_width or None)
    target = (summary or {}).get("recipes", {})
    for recipe, c in costs.items():
        t = target.get(recipe, {}).get("target_cost")
        c["target"] = t
        for key in ("flops", "seconds", "tokens"):
            c[f"proxy_over_target_{key}"] = (c["proxy"][key] / t[key]) if t and t.get(key) else None
    numbers = {
        "sweep": {"curves": curves, "spread": spread, "trials": len(records),
                  "statuses": {s: sum(r.get("status") == s for r in records) for s in ("ok", "diverged", "pruned")}},
        "costs": costs,
        "transfer": None if summary is None else {"recipes": target, "runs": summary.get("runs", []),
                                                  "lr_offsets": summary.get("lr_offsets")},
        "multipliers": (summary or {}).get("multipliers"),
    }
    numbers["verdict"] = _verdict_numbers(numbers)
    return _clean(numbers)


def _verdict_numbers(numbers: dict) -> dict:
    from ..tuning.transfer import MU_P_RECIPES, SPREAD_OK

    target = (numbers["transfer"] or {}).get("recipes") or {}
    spread = numbers["sweep"]["spread"]
    if target:  # the target run of each recipe at its transferred LR
        scores = {r: (s["target_val_bpb"], s["target_width"]) for r, s in target.items()}
        where = "target"
    else:  # no transfer: the sweep's widest width, at each recipe's own optimum there
        scores = {}
        for r, by_width in numbers["sweep"]["curves"].items():
            w = max(by_width)
            scores[r] = (by_width[w]["opt_val_bpb"], w)
        where = "widest sweep width"
    ranked = sorted((v, r) for r, (v, _) in scores.items() if v is not None and math.isfinite(v))
    per_recipe = {}
    for r in sorted(set(spread) | set(target)):
        s = spread.get(r, {})
        t = target.get(r, {})
        mu_p = r in MU_P_RECIPES
        per_recipe[r] = {"mu_p": mu_p, "spread": s.get("spread"), "widths": s.get("widths"),
                         "transfers": s.get("transfers") if mu_p else None,
                         "target_val_bpb": scores.get(r, (None,))[0], "lr_gap_log2": t.get("lr_gap_log2"),
                         "loss_gap_bpb": t.get("loss_gap_bpb"), "optimum_at_edge": t.get("optimum_at_edge")}
    if target:
        seeds = min((s.get("target_cost") or {}).get("runs") or 1 for s in target.values())
    else:
        seeds = min((n for by_width in numbers["sweep"]["curves"].values() for c in by_width.values()
                     for n in c["seeds"]), default=1)
    verdict = {"where": where, "threshold": SPREAD_OK, "ranking": [r for _, r in ranked], "recipes": per_recipe,
               "seeds": seeds,
               "winner": None, "margin_bpb": None, "runner_up": None, "target_width": None}
    if ranked:
        best_v, best = ranked[0]
        verdict.update(winner=best, target_width=scores[best][1], winner_val_bpb=best_v)
        if len(ranked) > 1:
            verdict.update(runner_up=ranked[1][1], margin_bpb=ranked[1][0] - best_v)
    return verdict


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


def _optuna_figures(sweep_dir, spec) -> tuple[list[go.Figure], list[str]]:
    """Optuna's own plots per study: optimization history, parameter importances (fANOVA needs scikit-learn; PED-ANOVA
    is the fallback) and slices. Anything that cannot be drawn becomes a note instead."""
    import warnings

    import optuna
    from optuna import visualization as vis

    from ..tuning import sweep

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    figures, notes = [], []
    try:
        storage = sweep.read_storage(sweep_dir)
        names = [spec.study_name(r) for r in spec.recipes] if spec is not None else \
            sorted(optuna.get_all_study_names(storage))
    except Exception as e:  # noqa: BLE001 - the rest of the report does not depend on it
        return [], [f"Optuna plots skipped: cannot open the sweep's storage ({e})"]
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
            figures.append(_named(vis.plot_optimization_history(study), f"optuna_history:{name}"))
            figures[-1].update_layout(title=f"{name}: optimization history")
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
                figures.append(_named(fig, f"optuna_importances:{name}"))
                fig.update_layout(title=f"{name}: parameter importances, {label}")
            try:
                fig = vis.plot_slice(study)
                figures.append(_named(fig, f"optuna_slice:{name}"))
                fig.update_layout(title=f"{name}: slice plot")
            except Exception as e:  # noqa: BLE001
                notes.append(f"{name}: slice plot skipped ({type(e).__name__}: {e})")
    return figures, notes
