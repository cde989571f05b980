"""The noise–WD equilibrium of a run, as a page and as a section of other pages: every stored matrix's RMS over the
steps next to its ABM (the same optimizer fed N(0,1) gradients) and sqrt(η/λ), every learnable multiplier next to
its own ABM, from an `lrm_mup.records.Equilibrium` (`lrm_mup.tuning.equilibrium.run_equilibrium`)."""
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


def equilibrium_section(rec: Equilibrium) -> list:
    """The parts of a page about one run's equilibrium: a heading, the figure, the table (also used by the tuning
    report for the run folders it is given)."""
    return [heading(f"Noise–WD equilibrium: {rec.recipe}, width {rec.width}"),
            paragraph(f"run {rec.run}, {rec.steps} steps"), Figure(equilibrium_figure(rec), CAPTION),
            Html("<pre>" + "\n".join(equilibrium_table(rec.series)).replace("&", "&amp;").replace("<", "&lt;")
                 + "</pre>")]


def write_equilibrium_report(rec: Equilibrium, out_dir, *, plotlyjs: str = "inline") -> dict[str, pathlib.Path]:
    """out_dir/equilibrium.html (figure and table) and out_dir/equilibrium.json (the record)."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"html": write_html(out / "equilibrium.html", "Noise–WD equilibrium", equilibrium_section(rec),
                                plotlyjs=plotlyjs),
             "json": out / EQUILIBRIUM_JSON}
    rec.to_json(paths["json"])
    return paths
