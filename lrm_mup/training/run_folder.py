"""A training run on disk: `train(cfg, out)` drives the engine's step loop (`Run.steps`) into a run folder.

A run folder holds `config.json`, `metrics.jsonl` (one JSON object per line: a row per step, the `StepRecord`'s
fields, `val_bpb` on the steps that evaluated; then a final status row, the `RunResult`'s fields),
`base_shapes.json` and `checkpoint.pt` (loadable with `weights_only=True`, written after every evaluation and at the
end). Resuming from the checkpoint continues exactly where the run stopped: model, optimizer, LR schedule, data order
and RNG all come back, so on CPU a resumed run is bit-identical to an uninterrupted one.

Under `torchrun` every rank calls `train` with the same arguments: rank 0 writes the run folder, every rank gets the
same result, which equals the single-process run up to float reduction order. Checkpoints hold whole tensors keyed by
parameter name, so they resume at any world size and under either parallelism.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from .. import data as data_mod
from .._files import atomic_write, write_text_atomic
from ..core.parametrization import parametrization_of
from ..errors import ConfigError, MissingError, RunFolderError
from ..records import RunResult, StepRecord
from . import distributed
from .config import EXECUTION, TrainConfig
from .engine import Run, diverged

TrainResult = RunResult  # the name earlier releases used


def train(cfg: TrainConfig, out: str | os.PathLike | None = None, *, resume: bool = False, until: int | None = None,
          progress: bool = True, corpus: data_mod.Corpus | None = None) -> TrainResult:
    """Train under `cfg`, writing the run folder `out` (if given). `resume` continues from `out/checkpoint.pt`;
    `until` stops after that step with a checkpoint (a time-sliced job resumes later). Under torchrun every rank calls
    this with the same arguments (see the module doc); each gets the same result."""
    out = Path(out) if out is not None else None
    world = distributed.setup()
    if resume:
        distributed.on_main(lambda: _check_resume(cfg, out), world)
    run = Run.create(cfg, corpus, progress=progress, world=world)
    if resume:  # on the CPU first: a CUDA checkpoint would otherwise land on GPU 0 of every rank
        run.load_state_dict(torch.load(out / "checkpoint.pt", weights_only=True, map_location="cpu", mmap=True))
    elif out is not None:
        distributed.on_main(lambda: _prepare_out(out, cfg, run), world)
    last = until if until is not None else cfg.steps
    metrics = open(out / "metrics.jsonl", "a") if out is not None and world.main else None
    start, val = time.perf_counter(), math.nan
    bar = tqdm(total=last, initial=run.step, disable=not (progress and world.main), desc=f"{cfg.recipe} w{cfg.width}",
               unit="step")
    try:
        for record in run.steps(last):
            _log(metrics, _row(record))
            if diverged(record):
                break
            if record.val_bpb is not None:
                val = record.val_bpb
                if out is not None and run.step < last:
                    _save(run, out / "checkpoint.pt")
            bar.update(1)
            bar.set_postfix(loss=f"{record.loss:.3f}", val=f"{val:.3f}")
    finally:
        bar.close()
    if run.status != "diverged" and not math.isfinite(val):
        val = run.evaluate()
    result = run.result(val, time.perf_counter() - start)
    if metrics is not None:
        _log(metrics, {"status": result.status, **asdict(result)})
        metrics.close()
    if out is not None and result.status != "diverged":
        _save(run, out / "checkpoint.pt")
    distributed.barrier(world)  # every rank returns with the run folder complete
    return result


def resumed_config(out: str | os.PathLike, **execution) -> TrainConfig:
    """The config of the run folder `out`, with only the execution settings (`EXECUTION`: how a step is computed,
    not what it computes) replaced by `execution`; what `train(cfg, out, resume=True)` continues."""
    fixed = sorted(set(execution) - set(EXECUTION))
    if fixed:
        allowed = ", ".join("--" + k.replace("_", "-") for k in EXECUTION)
        raise ConfigError(f"--{fixed[0].replace('_', '-')} cannot change when resuming (the run's settings are in "
                          f"{out}/config.json); only {allowed} can")
    path = Path(out) / "config.json"
    if not path.is_file():
        raise MissingError(f"nothing to resume: no config.json in {str(out)!r}")
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RunFolderError(f"{path} is not a readable run config ({type(e).__name__}); start afresh in another "
                             "--out") from None
    return TrainConfig.from_dict({**saved, **execution})


def _row(record: StepRecord) -> dict:
    """A metrics row: the record's fields, `val_bpb` only on a step that evaluated."""
    row = asdict(record)
    if row["val_bpb"] is None:
        del row["val_bpb"]
    return row


def _save(run: Run, path: Path) -> None:
    """Every rank gathers the state (a collective under FSDP); rank 0 writes it."""
    state = run.state_dict()
    if run.world.main:
        atomic_write(path, lambda p: torch.save(state, p))


def _log(metrics, row: dict) -> None:
    if metrics is not None:
        metrics.write(json.dumps(row) + "\n")
        metrics.flush()


def _prepare_out(out: Path, cfg: TrainConfig, run: Run) -> None:
    """Create the run folder complete or not at all: written in a temporary sibling, then renamed."""
    if out.exists() and any(out.iterdir()):
        raise RunFolderError(f"run folder {str(out)!r} is not empty: pass --resume to continue it, or another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
        parametrization_of(run.model).base().save(tmp / "base_shapes.json")
        (tmp / "metrics.jsonl").touch()
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_resume(cfg: TrainConfig, out: Path | None) -> None:
    """The checkpoint exists and holds `cfg`; metrics rows after it are dropped."""
    if out is None or not (out / "checkpoint.pt").exists():
        raise MissingError(f"nothing to resume: no checkpoint.pt in {str(out)!r}")
    state = torch.load(out / "checkpoint.pt", weights_only=True, mmap=True)  # the config only: nothing is read in
    diff = TrainConfig.from_dict(state["config"]).differences(cfg)
    if diff:
        raise ConfigError(f"config differs from the checkpoint's in {', '.join(diff)}; resume with the same config "
                          f"(only {', '.join(EXECUTION)} may change)")
    # metrics written after the checkpoint (a crash between checkpoints) are replayed by the resumed run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    kept = [r for r in rows if "status" not in r and r["step"] <= state["step"]]
    write_text_atomic(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))
