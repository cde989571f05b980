"""The page writer shared by every report: offline HTML (plotly.js inside the page, or in one shared file beside it;
never from a CDN: reports are read on clusters without internet) and PNG export of figures."""
from __future__ import annotations

import html
import importlib.util
import pathlib
from typing import Sequence

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from .._files import write_text_atomic

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
            write_text_atomic(bundle, get_plotlyjs())
        script = f'<script src="{PLOTLY_JS}" charset="utf-8"></script>'
    else:
        raise ValueError(f"plotlyjs={plotlyjs!r}: use 'inline' or 'directory' (a CDN needs internet)")
    body = [f"<pre>{html.escape(p)}</pre>" if isinstance(p, str) else
            pio.to_html(p, full_html=False, include_plotlyjs=False) for p in parts]
    page = (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>{script}</head>\n'
            f"<body><h1>{html.escape(title)}</h1>\n" + "\n".join(body) + "\n</body></html>\n")
    write_text_atomic(path, page)
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
