"""`lrm-mup ablation`: the paper's tuning ablation and the tuning-cost curves from a tiers file
(`lrm_mup.tuning.tiers.run_tiers`), then their report (`lrm_mup.report.write_ablation_report`) in OUT/report/.
Re-running the same command resumes: the sweeps keep their finished trials, the target runs their finished folders."""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from ..report import write_ablation_report
from ..tuning.sweep import load_sweep
from ..tuning.tiers import run_tiers


def run_ablation(tiers_file: str | os.PathLike, out: str | os.PathLike, *, target: int,
                 seeds: Sequence[int] = (0, 1), budgets: int = 3, budget_seeds: Sequence[int] | None = None,
                 direct: Sequence[str] = (), direct_trials: int | None = None, workers: int = 1,
                 plotlyjs: str = "inline", log: Callable[[str], None] | None = print) -> Path:
    """Run the ablation of `tiers_file` under `out` and write its report; returns the path of its index.html."""
    spec = load_sweep(tiers_file)
    numbers = run_tiers(spec, out, target=target, seeds=seeds, budgets=budgets, budget_seeds=budget_seeds,
                        direct=direct, direct_trials=direct_trials, workers=workers, log=log)
    return write_ablation_report(numbers, Path(out) / "report", plotlyjs=plotlyjs)
