"""Hyperparameter sweeps on a cheap proxy: the recipes compared on equal budgets, with Optuna doing the bookkeeping.

A sweep file (TOML) names the model, the recipes, widths, seeds and steps, the search space and the sampler:

    name = "lr-transfer"                  # studies "<name>/<recipe>"; default folder runs/<name>
    recipes = ["sp", "lr-only", "mup", "lrm"]
    widths = [64, 128, 256]               # grid: a grid axis; tpe/random: exactly one proxy width
    seeds = [0, 1]                        # grid: a grid axis; tpe/random: every trial trains all seeds in lockstep
    steps = 200
    lr_times_weight_decay = 3e-4          # optional: fixed ηλ, weight_decay = it / lr (an S-sweep of η/λ, paper §3)

    [model]                               # any other TrainConfig field, shared by every trial
    depth = 2
    context = 128
    schedule = "constant"

    [search]                              # grid: lists; tpe/random: {low, high[, log][, step]} ranges or lists
    log2_lr = [-12, -11, -10, -9, -8, -7]
    log2_mult_lr = {values = [-8, -6], recipes = ["lrm"]}

    [sampler]
    type = "grid"                         # or "tpe" / "random" with trials = N (per recipe: equal budgets)
    seed = 0

    [pruner]                              # tpe/random only
    type = "median"                       # or "none"
    warmup_steps = 50                     # no pruning before this training step: high-LR curves cross early
    startup_trials = 5
    interval = 10

    [trial]
    report_every = 10                     # trial.report(smoothed train loss in bits/byte, step) every N steps
    cap = 8.0                             # value of a diverged grid point: a uniform byte model
    diverge_bits = 10.0                   # smoothed train loss above this (and above step 1's) after warmup: diverged
    smoothing = 0.9                       # EMA of the train loss

    [heartbeat]                           # RDB storage (--storage postgresql://...) only
    interval = 60
    grace = 180
    max_retry = 3

Search keys: ``lr adam_lr mult_lr init_std weight_decay mult_wd clip`` (TrainConfig fields), ``alpha_in``
(embedding α), ``alpha_out`` (readout α) or ``alpha_<role or kind>``; each may be prefixed with ``log2_`` to
search its base-2 logarithm. ``*mult_*`` keys apply to ``lrm`` only and ``alpha_*`` keys to the fixed recipes (all
but ``lrm``, which learns its multipliers) unless the key's table says ``recipes = [...]``. Grid sweeps may also
vary ``depth = [2, 4, 8]`` and ``depth_rule = ["none", "complete"]`` (every recipe; an LR grid across depth,
sweeps/depth_transfer.toml, read per depth with ``lrm_mup.analysis.lr_curves(trials, axis="depth")``).

One study per recipe ("<name>/<recipe>") holds the trials. Storage: ``<out>/optuna.journal`` (JournalFileBackend:
many processes on one machine, no server), or an RDB URL (PostgreSQL for many machines) with heartbeats, where a
trial whose worker died is failed after the grace period and retried with the same params
(RetryHeartbeatStaleTrialCallback). Trials are claimed under a lock (flock on ``<out>/.claim.lock``, or a
PostgreSQL advisory lock), so N workers never run a grid point twice nor exceed a trial budget. Re-running the
same command resumes: finished trials are kept, failed ones (and, with the journal, ones left RUNNING by a dead
run) are retried with their params.

A trial diverges when its train loss turns non-finite, or its smoothed train loss (bits/byte) exceeds
``diverge_bits`` and its step-1 value after warmup: a grid trial then completes with the capped value ``cap``, a
tpe/random trial is pruned (TPE learns from pruned trials; a NaN value would be invisible to it); either way the
sweep goes on and the user attr ``status`` says ``diverged``. Every trial records ``tokens``, ``flops`` (model
training FLOPs), ``seconds`` (wall) and ``cpu_seconds`` as user attrs, so costs sum exactly. ``N`` local workers
get ``cores // N`` torch threads each.

``<out>/sweep.json`` (the manifest: `read_manifest`) records the spec and the storage, a URL only masked (its
password and secret query parameters as ``***``: `lrm_mup._secrets`, used by every line, error and file that shows
a URL). Whatever reads a sweep folder afterwards (`records`, `best_params`, `lrm-mup transfer`, `lrm-mup report`)
opens the storage the manifest names (`folder_storage`): the journal, or the database, whose URL it takes from
``storage=`` (``--storage``) or else the environment variable ``LRM_MUP_STORAGE`` (`STORAGE_ENV`), so that a
password never has to be on a command line; a URL that does not mask to the manifest's is refused.

Public API: `load_sweep`, `run_sweep`, `records` (one `lrm_mup.records.SweepTrial` per trial), `best_params`
(and `summary_lines` for the CLI, `optuna_figures` for the report; `read_manifest`, `folder_storage`). The private
modules each hold one concern: `_spec` (the file), `_storage` (Optuna storages, the manifest, studies, locks),
`_worker` (the parent and the worker loop), `_trial` (one trial's runs), `_results` (records and best settings),
`_plots` (Optuna's plots).
"""
from __future__ import annotations

from ._plots import optuna_figures
from ._results import best_params, read_storage, records, summary_lines
from ._spec import JOURNAL, MANIFEST, PRUNERS, SAMPLERS, STATUSES, Param, SweepSpec, load_sweep, parse_sweep
from ._storage import STORAGE_ENV, Manifest, folder_storage, read_manifest
from ._worker import run_sweep

__all__ = ["load_sweep", "parse_sweep", "run_sweep", "records", "best_params", "summary_lines", "read_storage",
           "optuna_figures", "read_manifest", "folder_storage", "Manifest",
           "SweepSpec", "Param", "JOURNAL", "MANIFEST", "SAMPLERS", "PRUNERS", "STATUSES", "STORAGE_ENV"]
