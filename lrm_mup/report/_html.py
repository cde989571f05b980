"""The page writer shared by every report: offline HTML (plotly.js inside the page, or in one shared file beside it;
never from a CDN: reports are read on clusters without internet) and PNG export of figures.

A page is a list of parts: `Html` fragments built here (`card`, `table`, `paragraph`, `heading`, `details`),
`Figure`s (a plotly figure with the caption that says how to read it) and plain strings (text shown as wrapped
monospace). Figures fill the page's width and follow the window (`responsive`), so nothing is cut off at 1024 px
and nothing is lost at 1920 px."""
from __future__ import annotations

import html
import importlib.util
import pathlib
from dataclasses import dataclass
from typing import Sequence

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from .._files import write_text_atomic

PLOTLY_JS = "plotly.min.js"
PLOTLY_CONFIG = {"responsive": True, "displaylogo": False}

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; line-height: 1.45; color: #1d1d1f;
       max-width: 1500px; margin: 0 auto; padding: 0 20px 40px; }
h1 { font-size: 1.6em; margin: 18px 0 10px; } h2 { font-size: 1.25em; margin: 28px 0 8px; }
p, li, figcaption { max-width: 110ch; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; background: #f6f8fa; padding: 10px 12px; font-size: 13px;
      border-radius: 6px; }
.card { border: 2px solid #2f7d4f; border-radius: 10px; padding: 14px 18px; background: #f3faf5; margin: 12px 0; }
.card .headline { font-size: 1.2em; font-weight: 600; margin: 0 0 6px; }
.warn { background: #fff6de; border-left: 5px solid #d99a00; padding: 6px 12px; margin: 8px 0; }
.warn ul { margin: 4px 0; padding-left: 20px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; margin: 8px 0; font-size: 14px; }
th, td { border: 1px solid #cfd6dd; padding: 4px 10px; vertical-align: top; }
th { background: #eef2f6; text-align: left; } td.num { text-align: right; white-space: nowrap; }
td.yes { color: #1b6e3a; font-weight: 600; } td.no { color: #b3261e; font-weight: 600; }
td.open { color: #8a5a00; font-weight: 600; }
figure { margin: 22px 0 30px; } figcaption { color: #444; font-size: 14px; margin-top: 4px; }
details { margin: 10px 0; } summary { cursor: pointer; color: #2456a6; }
"""


@dataclass(frozen=True)
class Html:
    """A fragment of HTML built by this module's helpers (its text already escaped)."""

    html: str


@dataclass(frozen=True)
class Figure:
    """A plotly figure and the caption under it (how to read it: what a line, a marker, a dash means)."""

    figure: go.Figure
    caption: str = ""


def esc(text) -> str:
    return html.escape(str(text))


def heading(text: str, level: int = 2) -> Html:
    return Html(f"<h{level}>{esc(text)}</h{level}>")


def paragraph(text: str) -> Html:
    return Html(f"<p>{esc(text)}</p>")


def warnings_box(lines: Sequence[str]) -> Html:
    """A highlighted list of what the data cannot support (empty: nothing)."""
    if not lines:
        return Html("")
    items = "".join(f"<li>{esc(x)}</li>" for x in lines)
    return Html(f'<div class="warn"><b>What these numbers cannot tell</b><ul>{items}</ul></div>')


def table(header: Sequence[str], rows: Sequence[Sequence], *, classes: Sequence[Sequence[str]] | None = None,
          caption: str = "") -> Html:
    """An HTML table: numbers right-aligned (ints as they are, floats with 4 significant digits unless already
    text), None shown as "–". `classes`: a CSS class per cell (e.g. "yes" / "no"), same shape as `rows`."""
    def cell(x, cls: str) -> str:
        if x is None:
            return f'<td class="num {cls}">–</td>'
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            return f'<td class="{cls}">{esc(x)}</td>'
        text = str(x) if isinstance(x, int) else f"{x:.4g}"
        return f'<td class="num {cls}">{esc(text)}</td>'

    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(x, (classes[i][j] if classes else "")) for j, x in enumerate(row))
                   + "</tr>" for i, row in enumerate(rows))
    cap = f"<caption style='caption-side: bottom; text-align: left; color: #444'>{esc(caption)}</caption>" \
        if caption else ""
    return Html(f'<div class="scroll"><table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>')


def card(headline: str, lines: Sequence[str | Html] = ()) -> Html:
    """The verdict box at the top of a page: one bold sentence, then lines (text or fragments)."""
    inner = "".join(x.html if isinstance(x, Html) else f"<p>{esc(x)}</p>" for x in lines)
    return Html(f'<div class="card"><p class="headline">{esc(headline)}</p>{inner}</div>')


def details(summary: str, text: str) -> Html:
    """Long text folded away (wrapped monospace when opened)."""
    return Html(f"<details><summary>{esc(summary)}</summary><pre>{esc(text)}</pre></details>")


def _figure_html(fig: go.Figure, caption: str) -> str:
    fig = go.Figure(fig)  # a copy: the caller's figure keeps its own layout
    fig.update_layout(width=None, autosize=True)  # the page's width, following the window
    div = pio.to_html(fig, full_html=False, include_plotlyjs=False, config=PLOTLY_CONFIG, default_width="100%",
                      default_height=f"{fig.layout.height or 480}px")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f"<figure>{div}{cap}</figure>"


def write_html(path, title: str, parts: Sequence[str | Html | Figure | go.Figure], *,
               plotlyjs: str = "inline") -> pathlib.Path:
    """One page with `parts` in order (see the module doc).

    plotlyjs="inline" makes a self-contained page (~4.8 MB of plotly.js); "directory" loads one plotly.min.js
    written beside the page, so several reports in one folder share it.
    """
    path = pathlib.Path(path)
    if plotlyjs == "inline":
        script = f'<script type="text/javascript">{get_plotlyjs()}</script>'
    elif plotlyjs == "directory":
        bundle = path.parent / PLOTLY_JS
        if not bundle.exists():
            write_text_atomic(bundle, get_plotlyjs())
        script = f'<script src="{PLOTLY_JS}" charset="utf-8"></script>'
    else:
        raise ValueError(f"plotlyjs={plotlyjs!r}: use 'inline' or 'directory' (a CDN needs internet)")
    body = []
    for p in parts:
        if isinstance(p, str):
            body.append(f"<pre>{esc(p)}</pre>")
        elif isinstance(p, Html):
            body.append(p.html)
        elif isinstance(p, Figure):
            body.append(_figure_html(p.figure, p.caption))
        else:
            body.append(_figure_html(p, ""))
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}</style>{script}</head>\n"
            f"<body><h1>{esc(title)}</h1>\n" + "\n".join(body) + "\n</body></html>\n")
    write_text_atomic(path, page)
    return path


def write_pngs(figures: dict[pathlib.Path, go.Figure], width: int = 1200) -> str | None:
    """Write every figure as PNG (`width` px wide where the figure sets no width) in one kaleido call (one browser
    start); returns a one-line note instead when kaleido or a Chromium is missing (`pip install -e .[png]` and
    Debian's `chromium`: README)."""
    try:
        pio.write_images(list(figures.values()), list(figures), width=width)
    except (ImportError, RuntimeError, ValueError) as err:
        reason = "kaleido is not installed" if importlib.util.find_spec("kaleido") is None else \
            next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        return (f"PNG export skipped: {reason} (PNGs need the png extra, kaleido>=1, and a Chrome/Chromium: see "
                "the README); the HTML has every figure")
    return None
