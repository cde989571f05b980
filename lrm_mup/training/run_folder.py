"""A training run on disk: `train(cfg, out)` drives the engine's step loop (`Run.steps`) into a run folder.

A run folder holds `config.json`, `metrics.jsonl` (one strict-JSON object per line, non-finite numbers as null: a row
per step, the `StepRecord`'s fields, `val_bpb` and `norms` (the RMS of every stored matrix and learnable multiplier,
by parameter name) on the steps that evaluated; then a final status row, the
`RunResult`'s fields, with a `reason` when the run diverged), `base_shapes.json` and `checkpoint.pt` (loadable with
`weights_only=True`, written after every evaluation and at the end, atomically). Resuming from the checkpoint
continues exactly where the run stopped: model, optimizer, LR schedule, data order and RNG all come back, so on CPU a
resumed run is bit-identical to an uninterrupted one.

What `train` does with the folder `out` (every refusal is one line, `RunFolderError` / `MissingError`, before a byte
is written; everything that can be checked, the config and whether the data fits its context included, is checked
before the folder is created):

- absent or empty: a new run. The folder is written in a hidden sibling and renamed into place, so it exists complete
  or not at all.
- a run that stopped before its first checkpoint (config.json, no checkpoint.pt, no final status): started afresh in
  the same folder (a note says so). Nothing of value is lost: no step of it can be resumed.
- a run with a checkpoint and no final status (stopped by `until`, or killed): `resume=True` continues it;
  `force=True` discards it (checkpoint and metrics) and starts afresh; otherwise refused.
- a finished run (final status ok or diverged): refused, `force` included: lrm-mup never deletes a result.
- not empty and not a run folder (no config.json): refused; nothing of the user's is ever deleted.

While a process trains in a folder it holds an exclusive lock on its `metrics.jsonl` (`FileLock`, an flock released
by the kernel when the process dies, so a killed run never leaves a stale lock): a second `train` or `resume` of the
same folder is refused at once. Under torchrun only rank 0 holds it.

A crash cannot leave a half-written file that blocks a resume: checkpoint.pt, config.json and base_shapes.json are
replaced atomically (a stale temporary file of a killed writer is removed by the next run in the folder), and each
metrics row is one write(2) of a whole line on an append-only descriptor. A last line cut short all the same (a
machine crash) lies past the last checkpoint: the resume drops it with the other rows after the checkpoint, and
replays those steps.

Under `torchrun` every rank calls `train` with the same arguments: rank 0 writes the run folder, every rank gets the
same result, which equals the single-process run up to float reduction order. Checkpoints hold whole tensors keyed by
parameter name, so they resume at any world size and under either parallelism.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path

import torch
from tqdm import tqdm

from .. import data as data_mod
from .._files import FileLock, atomic_write, check_out_folder, dumps, os_reason, write_text_atomic
from ..core.parametrization import parametrization_of
from ..errors import ConfigError, LrmMupError, MissingError, RunFolderError
from ..records import RunResult, StepRecord
from . import distributed
from .config import EXECUTION, TrainConfig
from .engine import Run, diverged

TrainResult = RunResult  # the name earlier releases used

CONFIG, METRICS, BASE_SHAPES, CHECKPOINT = "config.json", "metrics.jsonl", "base_shapes.json", "checkpoint.pt"
CHECKPOINT_KEYS = frozenset({"model", "optimizer", "scheduler", "step", "data_rng", "torch_rng", "config"})
FINISHED = ("ok", "diverged")  # final statuses: a run that ended (a "stopped" one can be resumed)
FRESH = "start afresh with --force, or pass another --out"  # the remedy for a run folder's damaged file


def train(cfg: TrainConfig, out: str | os.PathLike | None = None, *, resume: bool = False, until: int | None = None,
          progress: bool = True, corpus: data_mod.Corpus | None = None, force: bool = False,
          log: Callable[[str], None] | None = None) -> TrainResult:
    """Train under `cfg`, writing the run folder `out` (if given; what happens to an existing one: module doc).
    `resume` continues from `out/checkpoint.pt`; `force` discards an unfinished run in `out` and starts afresh;
    `until` stops after that step (1 to `cfg.steps`) with a checkpoint (a time-sliced job resumes later); `log`
    receives the one-line notes (a run restarted in its folder). Under torchrun every rank calls this with the same
    arguments (see the module doc); each gets the same result."""
    out = Path(out) if out is not None else None
    if until is not None and not (isinstance(until, int) and not isinstance(until, bool) and 1 <= until <= cfg.steps):
        raise ConfigError(f"stop step (--stop-after) {until!r} is invalid: it must be an integer from 1 to "
                          f"steps={cfg.steps}")
    if resume and force:
        raise ConfigError("--resume and --force exclude each other: --resume continues the run, --force discards it")
    if (resume or force) and out is None:
        raise ConfigError("--resume and --force need the run folder (--out DIR)")
    world = distributed.setup()
    claim = _Claim()  # rank 0's hold on the folder; the other ranks keep an empty one
    try:
        if out is not None:
            note = distributed.on_main(lambda: claim.take(out, cfg, resume=resume, force=force, until=until), world)
            if note and log is not None and world.main:
                log(note)
        run = Run.create(cfg, corpus, progress=progress, world=world)
        if resume:  # on the CPU first: a CUDA checkpoint would otherwise land on GPU 0 of every rank
            state = load_checkpoint(out / CHECKPOINT)
            try:
                run.load_state_dict(state)
            except (RuntimeError, KeyError, ValueError, TypeError) as e:
                raise RunFolderError(f"{out / CHECKPOINT} does not fit its own config ({_first_line(e)}); "
                                     f"{FRESH}") from None
        if out is not None:
            distributed.on_main(lambda: claim.prepare(out, cfg, run), world)
        return _loop(run, out, until, progress)
    finally:
        claim.release()


def _loop(run: Run, out: Path | None, until: int | None, progress: bool) -> RunResult:
    """The step loop into the run folder: a metrics row per step, a checkpoint after each evaluation; at the end the
    final checkpoint, then the status row (the row that marks the run finished)."""
    cfg, world = run.cfg, run.world
    last = until if until is not None else cfg.steps
    metrics = _Metrics(out / METRICS) if out is not None and world.main else None
    start, val = time.perf_counter(), math.nan
    bar = tqdm(total=last, initial=run.step, disable=not (progress and world.main), desc=f"{cfg.recipe} w{cfg.width}",
               unit="step")
    try:
        for record in run.steps(last):
            if metrics is not None:
                metrics.append(_row(record))
            if diverged(record):
                break
            if record.val_bpb is not None:
                val = record.val_bpb
                if out is not None and run.step < last:
                    _save(run, out / CHECKPOINT)
            bar.update(1)
            bar.set_postfix(loss=f"{record.loss:.3f}", val=f"{val:.3f}")
        bar.close()
        if run.status != "diverged" and not (run.last is not None and run.last.val_bpb is not None):
            val = run.evaluate()  # a run stopped between evaluations is reported at the step it stopped at
        result = run.result(val, time.perf_counter() - start)
        if out is not None and result.status != "diverged":
            _save(run, out / CHECKPOINT)
        if metrics is not None:
            metrics.append(_status_row(result, run.last))
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
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
    out = check_out_folder(out, "run folder")
    path = out / CONFIG
    if not os.path.lexists(path):
        raise MissingError(f"nothing to resume: {str(out)!r} holds no run (no config.json); start a run there "
                           "without --resume")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise RunFolderError(f"{path} is corrupt (not JSON): the run's settings are lost; {FRESH}") from None
    except OSError as e:
        raise RunFolderError(f"cannot read {path}: {os_reason(e)}") from None
    names = {f.name for f in fields(TrainConfig)}
    if not isinstance(saved, dict):
        raise RunFolderError(f"{path} is not a run config (a JSON {type(saved).__name__}, not an object); {FRESH}")
    unknown = sorted(set(saved) - names)
    if unknown:
        raise RunFolderError(f"{path} is not a run config of this lrm-mup (unknown field {unknown[0]!r}); {FRESH}")
    return TrainConfig.from_dict({**saved, **execution})


# the files of a run folder, read -------------------------------------------------------------------------------

def read_metrics(path: str | os.PathLike, *, strict: bool = True) -> list[tuple[dict, int]]:
    """The rows of a metrics.jsonl, each with the byte offset at which its line ends ([] if there is no file).
    Text after the last newline is a line a crash cut short: left out (it always lies past the last checkpoint, so a
    resume replays its step). A whole line that is not a JSON object is corruption, not a crash: `RunFolderError`
    (`strict=False`: skipped)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise RunFolderError(f"cannot read {path}: {os_reason(e)}") from None
    rows, start = [], 0
    for number, line in enumerate(data.split(b"\n")[:-1], 1):
        end = start + len(line) + 1
        if line.strip():
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if isinstance(row, dict):
                rows.append((row, end))
            elif strict:
                raise RunFolderError(f"{path} is corrupt: line {number} is not a JSON object (a crash only ever cuts "
                                     f"the last line); {FRESH}")
        start = end
    return rows


def final_status(run_dir: str | os.PathLike) -> dict | None:
    """The final status row of a finished run (status ok or diverged) in `run_dir`, else None."""
    rows = read_metrics(Path(run_dir) / METRICS, strict=False)
    row = rows[-1][0] if rows else None
    return row if row is not None and row.get("status") in FINISHED else None


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint lrm-mup wrote, memory-mapped on the CPU (`torch.load(weights_only=True)`: nothing in the file can
    run code). Whatever is not one (a folder, a truncated or corrupt file, a file that holds other objects than
    tensors and plain data, a foreign one) is refused with one line (`RunFolderError`) and the remedy."""
    path = Path(path)
    if path.is_dir():
        raise RunFolderError(f"{path} is a folder, not a checkpoint; remove it, or pass another --out")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower():
            raise RunFolderError(f"{path} is not a checkpoint lrm-mup wrote: it holds objects other than tensors and "
                                 f"plain data (a foreign or malicious file), refused without loading them; {FRESH}"
                                 ) from None
        raise RunFolderError(f"{path} is corrupt ({_first_line(e)}); {FRESH}") from None
    except OSError as e:
        raise RunFolderError(f"cannot read {path}: {os_reason(e)}") from None
    except Exception as e:  # noqa: BLE001 - whatever torch.load raises on a damaged file
        reason = "not in torch's checkpoint format" if "mmap can only be used" in str(e) else _first_line(e)
        raise RunFolderError(f"{path} is truncated or corrupt ({reason}); {FRESH}") from None
    if not (isinstance(state, dict) and CHECKPOINT_KEYS <= set(state) and isinstance(state["config"], dict)
            and isinstance(state["step"], int)):
        raise RunFolderError(f"{path} is not a checkpoint lrm-mup wrote (no step, config, model and optimizer "
                             f"state); {FRESH}")
    return state


def _first_line(e: BaseException) -> str:
    """The first sentence of an exception's message, short: what a one-line error may quote of it."""
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    text = text.split(". ")[0]
    return text if len(text) <= 100 else text[:97] + "..."


def _kind(out: Path) -> str:
    """"none" (absent or empty), "run" (holds a config.json: a run folder) or "foreign" (anything else)."""
    if not os.path.lexists(out):
        return "none"
    try:
        entries = list(out.iterdir())
    except OSError as e:
        raise RunFolderError(f"cannot read run folder {str(out)!r}: {os_reason(e)}") from None
    if not entries:
        return "none"
    return "run" if os.path.lexists(out / CONFIG) else "foreign"


# the folder, claimed and written (rank 0) ------------------------------------------------------------------------

class _Claim:
    """Rank 0's hold on a run folder: what `train` does with it ("new", "restart" or "resume", see the module doc),
    the lock while it trains there, the bytes of metrics.jsonl a resume keeps, whether a checkpoint is discarded."""

    def __init__(self):
        self.mode, self.lock, self.keep, self.discard = None, None, 0, False

    def take(self, out: Path, cfg: TrainConfig, *, resume: bool, force: bool, until: int | None) -> str | None:
        """Decide, lock and check; writes nothing. Returns the note to print, if any."""
        check_out_folder(out, "run folder")
        kind = _kind(out)
        name = repr(str(out))
        if resume:
            if kind != "run":
                what = "does not exist" if kind == "none" and not out.exists() else "holds no run (no config.json)"
                raise MissingError(f"nothing to resume: run folder {name} {what}; start a run there without --resume")
            self._lock(out)
            return self._resume(out, cfg, until)
        if kind == "none":
            self.mode = "new"
            return None
        if kind == "foreign":
            raise RunFolderError(f"run folder {name} is not empty and holds no run (no config.json): pass another "
                                 "--out (lrm-mup never deletes files it did not write)")
        self._lock(out)
        done = final_status(out)
        if done is not None:
            raise RunFolderError(f"run folder {name} holds a finished run ({done['status']} at step {done.get('step')})"
                                 ": pass another --out (--force never discards a finished run)")
        checkpoint = out / CHECKPOINT
        if checkpoint.is_dir():
            raise RunFolderError(f"{checkpoint} is a folder, not a checkpoint; remove it, or pass another --out")
        if os.path.lexists(checkpoint) and not force:
            raise RunFolderError(f"run folder {name} holds an unfinished run with a checkpoint: pass --resume to "
                                 "continue it, --force to discard it and start afresh, or another --out")
        self.mode, self.discard = "restart", os.path.lexists(checkpoint)
        if self.discard:
            return f"--force: discarding the unfinished run in {out} (its checkpoint and metrics); starting afresh"
        return f"note: the run in {out} stopped before its first checkpoint; starting it afresh in the same folder"

    def _lock(self, out: Path) -> None:
        lock = FileLock(out / METRICS, blocking=False)
        try:
            lock.acquire()
        except BlockingIOError:
            raise RunFolderError(f"run folder {str(out)!r} is in use: another process is training in it; wait until "
                                 "it ends, or pass another --out") from None
        except OSError as e:
            raise RunFolderError(f"cannot lock run folder {str(out)!r} ({out / METRICS}: {os_reason(e)})") from None
        self.lock = lock

    def _resume(self, out: Path, cfg: TrainConfig, until: int | None) -> None:
        """The checkpoint exists, is ours and holds `cfg`; `until` lies ahead of it; the metrics rows up to it are
        kept (the rest, a torn last line included, is dropped by `prepare`)."""
        done = final_status(out)
        finished = (f"the run in {str(out)!r} is finished ({done['status']} at step {done.get('step')}): nothing to "
                    "resume; pass another --out for a new run") if done is not None else None
        if not os.path.lexists(out / CHECKPOINT):
            if finished:
                raise RunFolderError(finished)
            raise MissingError(f"nothing to resume in {str(out)!r}: the run stopped before its first checkpoint; "
                               "start it again without --resume (the folder is reused)")
        state = load_checkpoint(out / CHECKPOINT)
        try:  # how a step is computed may change on resume: those settings are taken from `cfg`
            saved = TrainConfig.from_dict({**state["config"], **{k: getattr(cfg, k) for k in EXECUTION}})
        except LrmMupError as e:
            raise RunFolderError(f"{out / CHECKPOINT} holds no valid config ({e}); {FRESH}") from None
        diff = saved.differences(cfg)
        if diff:
            raise ConfigError(f"config differs from the checkpoint's in {', '.join(diff)}; resume with the same config "
                              f"(only {', '.join(EXECUTION)} may change)")
        if finished:
            raise RunFolderError(finished)
        if until is not None and until <= state["step"]:
            raise ConfigError(f"stop step (--stop-after) {until} is invalid: the run in {str(out)!r} is already at "
                              f"step {state['step']}")
        for row, end in read_metrics(out / METRICS):
            if "status" in row or not isinstance(row.get("step"), int) or row["step"] > state["step"]:
                break
            self.keep = end
        self.mode = "resume"

    def prepare(self, out: Path, cfg: TrainConfig, run: Run) -> None:
        """Write what the run starts from: a new folder, a restarted one, or the metrics cut back to the checkpoint."""
        try:
            if self.mode == "new":
                self.lock = _create(out, cfg, run)
                return
            _remove_stale(out)
            if self.mode == "restart":
                if self.discard:
                    (out / CHECKPOINT).unlink(missing_ok=True)  # first: a kill from here on leaves no checkpoint
                _write_run_files(out, cfg, run)
            os.truncate(out / METRICS, self.keep)  # a restart keeps nothing, a resume the rows up to its checkpoint
        except OSError as e:
            raise RunFolderError(f"cannot write run folder {str(out)!r}: {os_reason(e)}") from None

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def _write_run_files(folder: Path, cfg: TrainConfig, run: Run) -> None:
    write_text_atomic(folder / CONFIG, json.dumps(asdict(cfg), indent=1))
    parametrization_of(run.model).base().save(folder / BASE_SHAPES)


def _create(out: Path, cfg: TrainConfig, run: Run) -> FileLock:
    """Create the run folder complete or not at all: written in a hidden sibling, locked, then renamed into place
    (the lock is on the file, so it stays held across the rename)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise RunFolderError(f"cannot create run folder {str(out)!r}: {os_reason(e)}; pass another --out") from None
    lock = FileLock(tmp / METRICS, blocking=False)
    try:
        _write_run_files(tmp, cfg, run)
        lock.acquire()
        if out.exists():
            out.rmdir()  # the empty folder given as --out (another process's files in it: OSError)
        os.replace(tmp, out)
    except OSError as e:
        lock.release()
        shutil.rmtree(tmp, ignore_errors=True)
        if out.exists() and any(out.iterdir()):
            raise RunFolderError(f"run folder {str(out)!r} was created by another process meanwhile: pass another "
                                 "--out") from None
        raise RunFolderError(f"cannot create run folder {str(out)!r}: {os_reason(e)}; pass another --out") from None
    except BaseException:
        lock.release()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return lock


def _remove_stale(out: Path) -> None:
    """Temporary files of a writer killed mid-write (`atomic_write`'s .NAME.PID.tmp): the lock says none is alive."""
    for name in (CONFIG, BASE_SHAPES, CHECKPOINT):
        for tmp in out.glob(f".{name}.*.tmp"):
            if not tmp.is_dir():
                tmp.unlink(missing_ok=True)


class _Metrics:
    """metrics.jsonl opened for appending: each row is one strict-JSON line (non-finite numbers as null) written by
    one write(2) on an O_APPEND descriptor, so a killed process leaves whole lines behind."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND)

    def append(self, row: dict) -> None:
        data = (dumps(row) + "\n").encode()
        while data:  # one write for a line this short; the loop only for a write(2) the kernel cut short
            data = data[os.write(self.fd, data):]

    def close(self) -> None:
        os.close(self.fd)


def _row(record: StepRecord) -> dict:
    """A metrics row: the record's fields, `val_bpb` and `norms` (`Run.norms`: the RMS of every stored matrix and
    multiplier, for `lrm-mup equilibrium`) only on a step that evaluated."""
    row = asdict(record)
    for key in ("val_bpb", "norms"):
        if row[key] is None:
            del row[key]
    return row


def _status_row(result: RunResult, last: StepRecord | None) -> dict:
    """The final row: the result's fields; a diverged run says why its train loss is null."""
    row = asdict(result)
    if result.status == "diverged" and last is not None:
        row["reason"] = f"the train loss at step {last.step} is {last.loss} (not finite)"
    return row


def _save(run: Run, path: Path) -> None:
    """Every rank gathers the state (a collective under FSDP); rank 0 writes it."""
    state = run.state_dict()
    if run.world.main:
        atomic_write(path, lambda p: torch.save(state, p))
