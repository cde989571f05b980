"""The noise–WD equilibrium of a run, as a page and as a section of other pages: every stored matrix's RMS over the
steps next to its ABM (the same optimizer fed N(0,1) gradients) and sqrt(η/λ), every learnable multiplier next to
its own ABM, from an `lrm_mup.records.Equilibrium` (`lrm_mup.tuning.equilibrium.run_equilibrium`); and the bf16
symmetry drift of benchmarks/drift.json (`drift_figure`, `drift_section`: what bench_drift.py --html writes)."""
from __future__ import annotations

import pathlib

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from ..analysis import equilibrium_table
from ..records import Equilibrium
from ._html import Figure, Html, heading, paragraph, write_html

EQUILIBRIUM_JSON = "equilibrium.json"  # what `lrm-mup equilibrium` writes (into the run folder by default)
CAPTION = ("Solid: the RMS of the stored matrix W̃ (left) or learnable multiplier (right) that training logged at "
           "each evaluation; dotted: its ABM, the same optimizer, LR schedule, LR, WD and initial values fed i.i.d. "
           "N(0,1) gradients. Left, divided by sqrt(η/λ) of its group (peak LR): at the noise–WD equilibrium a "
           "matrix sits at a constant near its ABM (AdamW: 1/√2), whatever the width. A multiplier far from its "
           "ABM learns its scale from the data (the paper's evidence for LRM).")


def equilibrium_figure(rec: Equilibrium) -> go.Figure:
    """Two panels: matrices (RMS / sqrt(lr/wd)) and multipliers (RMS), run solid, ABM dotted, one colour each."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("matrices W̃: RMS / sqrt(lr/wd)", "multipliers: RMS"))
    colours = qualitative.Dark24
    for i, s in enumerate(rec.series):
        col = 1 if s.kind == "matrix" else 2
        scale = s.scale if (col == 1 and s.scale) else 1.0
        colour = colours[i % len(colours)]
        for values, dash, what in ((s.rms, "solid", "run"), (s.abm, "dot", "ABM")):
            fig.add_trace(go.Scatter(x=list(s.steps), y=[v / scale for v in values], mode="lines", name=f"{s.name}",
                                     legendgroup=s.name, showlegend=what == "run", line={"color": colour,
                                                                                          "dash": dash},
                                     hovertemplate=f"{s.name} ({what})<br>step %{{x}}<br>%{{y:.4g}}<extra></extra>"),
                          row=1, col=col)
    fig.update_xaxes(title_text="step")
    fig.update_layout(height=520, title=f"{rec.recipe} / {rec.optimizer}, width {rec.width}: noise–WD equilibrium",
                      legend={"font": {"size": 9}})
    return fig


DRIFT_CAPTION = ("The lrm proxy under CPU bf16 autocast, multipliers' weight decay off and on "
                 "(benchmarks/bench_drift.py, `tuning.equilibrium.symmetry_drift`). Left: the largest "
                 "|log10 rms(r_Q)/rms(r_K)| over the blocks, the Q/K row multipliers' ratio that no gradient holds "
                 "(q·k is blind to it). Right (log scale): the largest RMS of a residual branch's output on one fixed "
                 "batch, which feeds an RMSNorm and so can grow freely; the multipliers' weight decay is what bounds "
                 "it.")


def drift_figure(drift: dict) -> go.Figure:
    """The bf16 symmetry drift of `benchmarks/drift.json` ({"config": ..., "runs": {label: [{"step", "qk", "branch",
    "loss"}, ...]}}): the Q/K multiplier ratio and the residual-branch RMS against the step, one line per run."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Q/K multiplier ratio: |log10 rQ/rK|",
                                                        "residual-branch RMS (log)"))
    for i, (label, rows) in enumerate(drift["runs"].items()):
        steps, colour = [r["step"] for r in rows], qualitative.Dark24[i % len(qualitative.Dark24)]
        for col, key in ((1, "qk"), (2, "branch")):
            fig.add_trace(go.Scatter(x=steps, y=[r[key] for r in rows], mode="lines+markers", name=label,
                                     legendgroup=label, showlegend=col == 1, line={"color": colour},
                                     hovertemplate=f"{label}<br>step %{{x}}<br>{key} %{{y:.4g}}<extra></extra>"),
                          row=1, col=col)
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_xaxes(title_text="step")
    c = drift.get("config", {})
    fig.update_layout(height=420, title=f"bf16 symmetry drift: lrm width {c.get('width', '?')}, multiplier LR "
                                        f"{c.get('mult_lr', '?')}, {c.get('steps', '?')} steps")
    return fig


def drift_section(drift: dict) -> list:
    """A heading and the drift figure with its caption: the equilibrium page's part for `benchmarks/drift.json`."""
    return [heading("Symmetry drift in bf16"), Figure(drift_figure(drift), DRIFT_CAPTION)]


def equilibrium_section(rec: Equilibrium) -> list:
    """The parts of a page about one run's equilibrium: a heading, the figure, the table (also used by the tuning
    report for the run folders it is given)."""
    return [heading(f"Noise–WD equilibrium: {rec.recipe}, width {rec.width}"),
            paragraph(f"run {rec.run}, {rec.steps} steps"), Figure(equilibrium_figure(rec), CAPTION),
            Html("<pre>" + "\n".join(equilibrium_table(rec.series)).replace("&", "&amp;").replace("<", "&lt;")
                 + "</pre>")]


def write_equilibrium_report(rec: Equilibrium, out_dir, *, plotlyjs: str = "inline",
                             drift: dict | None = None) -> dict[str, pathlib.Path]:
    """out_dir/equilibrium.html (figure and table, and with `drift`, the contents of a drift.json, its section) and
    out_dir/equilibrium.json (the record)."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = equilibrium_section(rec) + (drift_section(drift) if drift is not None else [])
    paths = {"html": write_html(out / "equilibrium.html", "Noise–WD equilibrium", parts, plotlyjs=plotlyjs),
             "json": out / EQUILIBRIUM_JSON}
    rec.to_json(paths["json"])
    return paths
