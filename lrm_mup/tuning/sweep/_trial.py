"""One sweep trial: its runs (one per seed, in lockstep), divergence, pruning and recorded costs."""
from __future__ import annotations

import math
import time
from dataclasses import asdict

from optuna.trial import TrialState

from ...training import Run, TrainConfig, diverged, lockstep
from ._spec import Param, SweepSpec


def _warm_up(spec: SweepSpec, corpus) -> None:
    """A throwaway step and evaluation of the smallest run, so that no trial's wall time pays for the process's
    first-call costs (lazy imports and kernel setup): costs stay comparable between trials."""
    recipe = spec.recipes[0]
    sample = {p.name: (p.values[0] if p.values is not None else p.low) for p in spec.params_for(recipe)}
    cfg = TrainConfig(**{**spec.config(recipe, min(spec.widths), spec.seeds[0], sample), "eval_batches": 1})
    run = Run.create(cfg, corpus, progress=False)
    run.train_step(run.model)  # the uncompiled model: the kernels' first-call costs
    run.evaluate(run.model)


def _suggest(trial, p: Param):
    if p.values is not None:
        return trial.suggest_categorical(p.name, list(p.values))
    return trial.suggest_float(p.name, p.low, p.high, log=p.log, step=p.step)


def _run_trial(spec: SweepSpec, recipe: str, trial, corpus):
    """Train one trial (one run per seed, in lockstep); returns (state, value or None, result attrs)."""
    params = {p.name: _suggest(trial, p) for p in spec.params_for(recipe)}
    if spec.grid:
        width = trial.suggest_categorical("width", list(spec.widths))
        seeds = [trial.suggest_categorical("seed", list(spec.seeds))]
    else:
        width, seeds = spec.widths[0], list(spec.seeds)
    configs = [TrainConfig(**spec.config(recipe, width, seed, params)) for seed in seeds]
    for k, v in (("recipe", recipe), ("width", width), ("seeds", seeds), ("config", asdict(configs[0]))):
        trial.set_user_attr(k, v)

    opts = spec.trial
    start, cpu_start = time.perf_counter(), time.process_time()
    runs = [Run.create(cfg, corpus, progress=False) for cfg in configs]
    status, reason, ema, first, records, reported = "ok", None, None, None, (), {}
    norms: dict[str, dict[str, float]] = {}  # the first seed's parameter RMS at the eval interval, by step
    pruning = spec.pruner["type"] != "none"
    for records in lockstep(runs, spec.steps, evaluate=False):  # the engine's loop; the rest is the sweep's rule
        step = records[0].step
        if step % configs[0].eval_every == 0 or step == spec.steps:
            norms[str(step)] = runs[0].norms()  # what a train run logs in metrics.jsonl; a trial keeps no folder
        if any(diverged(r) for r in records):
            bad = next(r.loss for r in records if diverged(r))
            status, reason = "diverged", f"train loss became {bad} at step {step}"
            break
        bits = sum(r.loss for r in records) / len(records) / math.log(2)
        ema = bits if ema is None else opts["smoothing"] * ema + (1 - opts["smoothing"]) * bits
        first = bits if first is None else first
        if step % opts["report_every"] == 0 or step == spec.steps:
            if step > configs[0].warmup_steps and ema > max(opts["diverge_bits"], first):  # worse than at init
                status = "diverged"
                reason = f"smoothed train loss {ema:.2f} bits/byte > {opts['diverge_bits']} at step {step}"
                break
            trial.report(ema, step)
            reported[step] = ema
            if pruning and trial.should_prune():
                status = "pruned"
                reason = (f"{type(trial.study.pruner).__name__} at step {step}: smoothed train loss {ema:.4f} "
                          "bits/byte is worse than the median of earlier trials")
                break
    step = runs[0].step
    val = None
    if status == "ok":
        vals = [r.evaluate() for r in runs]
        val = sum(vals) / len(vals)
        if not math.isfinite(val):
            status, reason = "diverged", f"validation loss is {val}"
    if status == "diverged":
        val = opts["cap"]
        if not spec.grid and step not in reported:  # a pruned trial's last report is what TPE learns from
            trial.report(max(opts["cap"], ema if ema is not None and math.isfinite(ema) else opts["cap"]), step)
    tokens = sum(r.tokens for r in runs)
    train_loss = sum(r.loss for r in records) / len(records) if records else math.nan
    attrs = {"status": status, "reason": reason, "val_bpb": val,
             "train_loss": train_loss if math.isfinite(train_loss) else None, "steps_done": step,
             "tokens": tokens, "flops": tokens * runs[0].flops_per_token, "seconds": time.perf_counter() - start,
             "cpu_seconds": time.process_time() - cpu_start, "norms": norms}
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    if status == "pruned" or (status == "diverged" and not spec.grid):
        return TrialState.PRUNED, None, attrs  # TPE/random learn from pruned trials; NaN would hide it
    return TrialState.COMPLETE, val, attrs


