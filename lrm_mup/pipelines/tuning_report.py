"""The tuning report of a sweep folder and a transfer folder: gather the records (the sweep's trials, the transfer's
summary) and Optuna's plots of the sweep, and hand them to `lrm_mup.report.write_tuning_report` (which reads no
folder itself). What `lrm-mup report` and the demo's last stage run; `report_verdict` reads a written report's
verdict back as the few lines they print."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..records import Equilibrium
from ..report import EQUILIBRIUM_JSON, verdict_lines, write_tuning_report
from ..tuning.sweep import optuna_figures
from ..tuning.transfer import load_transfer, sweep_records


def tuning_report(sweep_dir: str | os.PathLike, transfer_dir: str | os.PathLike | None, out_dir: str | os.PathLike,
                  *, plotlyjs: str = "inline", storage: str | None = None, ablation: dict | None = None) -> Path:
    """out_dir/index.html and out_dir/tuning.json of the sweep run folder `sweep_dir` (`lrm-mup sweep`) and the
    transfer folder `transfer_dir` (`lrm-mup transfer`; None: the sweep alone). `storage`: the database URL of a
    sweep swept into one (default: the environment variable LRM_MUP_STORAGE); it is never written into the report.
    Every input is read before the report folder is written. `ablation`: the demo's tier numbers, which the page
    then leads with (`lrm_mup.report.write_tuning_report`). Returns the path of index.html."""
    spec, trials = sweep_records(sweep_dir, storage=storage)
    summary = load_transfer(transfer_dir) if transfer_dir is not None and trials else None
    figures, notes = optuna_figures(sweep_dir, spec, storage=storage) if trials else ([], [])
    # the transfer's run folders that `lrm-mup equilibrium` measured (it writes equilibrium.json into the run folder)
    equilibria = ([Equilibrium.from_json(p) for p in sorted(Path(transfer_dir).rglob(EQUILIBRIUM_JSON))]
                  if transfer_dir is not None else [])
    return write_tuning_report(trials, summary, out_dir, sweep_name=getattr(spec, "name", None),
                               sweep_folder=str(sweep_dir),
                               transfer_folder=None if transfer_dir is None else str(transfer_dir),
                               figures=figures, notes=notes, plotlyjs=plotlyjs, equilibria=equilibria,
                               ablation=ablation)


def report_verdict(report_dir: str | os.PathLike) -> list[str]:
    """The verdict of the report in `report_dir` (its tuning.json) in a few terminal lines."""
    numbers = json.loads((Path(report_dir) / "tuning.json").read_text(encoding="utf-8"))
    return verdict_lines(numbers)
