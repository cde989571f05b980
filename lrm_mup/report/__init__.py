"""HTML reports that open offline (plotly.js inside the page or in one shared file beside it, never from a CDN), from
records and `lrm_mup.analysis` only: `report` never trains, never opens an Optuna storage, never reads a run folder.

- `_html`: the page writer (`write_html`, its parts `Figure`, `Html`, `card`, `table`, ...) and PNG export
  (`write_pngs`), shared by every report;
- `_coord_check`: the coordinate check's report (`write_coord_check_report`, `coord_check_figures`);
- `_equilibrium`: a run's noise–WD equilibrium (`write_equilibrium_report`, `equilibrium_section`, its figure) and
  the bf16 symmetry drift (`drift_figure`, `drift_section`);
- `_tuning`: the tuning report (`write_tuning_report`, its headline card, `tuning_figures`) and `verdict_lines`,
  the same verdict in a few terminal lines; the tuning ablation's page (`write_ablation_report`: the tuning-cost
  curves as its headline, the tier table, `ablation_figures`; `ablation_section`, the same parts leading the demo's
  tuning report; `ablation_lines`, the same in a few terminal lines).
"""
from __future__ import annotations

from ._coord_check import coord_check_figures, write_coord_check_report
from ._equilibrium import (
    EQUILIBRIUM_JSON,
    drift_figure,
    drift_section,
    equilibrium_figure,
    equilibrium_section,
    write_equilibrium_report,
)
from ._html import PLOTLY_JS, Figure, Html, write_html, write_pngs
from ._tuning import (
    ablation_figures,
    ablation_lines,
    ablation_section,
    headline_sentence,
    multiplier_figure,
    tuning_figures,
    verdict_lines,
    write_ablation_report,
    write_tuning_report,
)

__all__ = ["write_html", "write_pngs", "PLOTLY_JS", "Figure", "Html", "write_coord_check_report",
           "coord_check_figures", "write_tuning_report", "verdict_lines", "headline_sentence", "tuning_figures",
           "multiplier_figure", "write_equilibrium_report", "equilibrium_section", "equilibrium_figure",
           "EQUILIBRIUM_JSON", "drift_figure", "drift_section", "write_ablation_report", "ablation_figures",
           "ablation_section", "ablation_lines"]
