"""The README's promise for bad input, kept by every command through the real CLI (`python -m lrm_mup` in a fresh
process): exit status 2, exactly one line on stderr (no traceback), the bad value named in it, and the folder the
command ran in (its --out included) unchanged: nothing created, nothing modified, nothing removed (names, sizes and
modification times of the whole tree, compared before and after).

Each case runs in its own folder, prepared with what it needs (real run folders trained here, damaged as a crash, a
disk or a user would damage them). The cases run four at a time (each process imports torch) and every failing case
is reported in one assertion message."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from lrm_mup.training import TrainConfig, train
from tests.waiting import DEADLINE

REPO = Path(__file__).resolve().parent.parent
SLICE = str(REPO / "tests" / "data" / "shakespeare")
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
TINY = dict(width=32, base_width=16, depth=1, head_dim=8, context=32, batch=4, steps=4, eval_every=2, eval_batches=2,
            data=SLICE)
T = ["--width", "32", "--base-width", "16", "--depth", "1", "--head-dim", "8", "--context", "32", "--batch", "4",
     "--steps", "4", "--eval-every", "2", "--eval-batches", "2", "--data", SLICE, "--quiet"]
C = ["coord-check", "--widths", "32,64", "--base-width", "32", "--delta-width", "64", "--steps", "2", "--seeds", "1",
     "--context", "16", "--data", SLICE, "--quiet"]
UNWRITABLE = "/proc/sys/lrm-mup-bad-input"  # not writable even by root (procfs refuses new entries)
BINARY = bytes(range(256)) * 8  # not UTF-8 (0x80 is no start byte), not TOML, not JSON
SWEEP = """name = "bad-inputs"
recipes = ["sp"]
widths = [16, 32]
seeds = [0]
steps = 4
[model]
depth = 1
context = 32
batch = 4
head_dim = 8
base_width = 16
eval_batches = 2
data = "{data}"
[search]
log2_lr = [-6]
[sampler]
type = "grid"
"""


class Evil:
    """What a malicious checkpoint holds: an object whose unpickling runs a command (creating the file `pwned`)."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


@dataclass
class Case:
    id: str
    argv: list[str]
    named: list[str]  # what stderr must contain: the bad value (and, for some, what is wrong with it)
    setup: list = field(default_factory=list)  # functions (folder, templates) -> None preparing the case's folder
    absent: list[str] = field(default_factory=list)  # paths outside the folder that must not exist afterwards
    forbidden: list[str] = field(default_factory=list)  # what stderr must not contain


# ------------------------------------------------------------------------------------------------------------
# what a case's folder holds


def afile(ws, _):
    (ws / "afile").write_text("not a folder\n")


def binary(ws, _):
    (ws / "binary.bin").write_bytes(BINARY)


def sweep_file(ws, _):
    (ws / "s.toml").write_text(SWEEP.format(data=SLICE))
    (ws / "bad.toml").write_text("name = [unclosed\n")
    (ws / "nodata.toml").write_text(SWEEP.format(data=str(ws / "missing.txt")))


def best_files(ws, _):
    config = {k: v for k, v in TINY.items()}
    (ws / "best.json").write_text(json.dumps({"sp": {**config, "recipe": "sp", "lr": 0.01}}))
    (ws / "best_nodata.json").write_text(json.dumps({"sp": {**config, "recipe": "sp", "lr": 0.01,
                                                                "data": str(ws / "missing.txt")}}))
    (ws / "bad.json").write_bytes(BINARY)


def broken_sweeps(ws, _):
    for name, journal, manifest in (("sw_bad_journal", BINARY, None), ("sw_bad_manifest", b"", BINARY)):
        (ws / name).mkdir()
        (ws / name / "optuna.journal").write_bytes(journal)
        if manifest is not None:
            (ws / name / "sweep.json").write_bytes(manifest)


def run(kind, damage=None):
    """A copy of a real run folder ("stopped": a checkpoint at step 2 of 4; "finished": ok at step 2) as `run`,
    then damaged by `damage(run_dir)`."""
    def setup(ws, templates):
        shutil.copytree(templates / kind, ws / "run")
        if damage is not None:
            damage(ws / "run")
    return setup


def early(run_dir):
    """A run killed before its first checkpoint: its config, no checkpoint, rows but no final status."""
    (run_dir / "checkpoint.pt").unlink()
    lines = (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run_dir / "metrics.jsonl").write_text(lines[0])


def garbage_checkpoint(run_dir):
    (run_dir / "checkpoint.pt").write_bytes(BINARY)


def truncated_checkpoint(run_dir):
    data = (run_dir / "checkpoint.pt").read_bytes()
    (run_dir / "checkpoint.pt").write_bytes(data[: len(data) // 2])


def folder_checkpoint(run_dir):
    (run_dir / "checkpoint.pt").unlink()
    (run_dir / "checkpoint.pt").mkdir()


def malicious_checkpoint(run_dir):
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    torch.save({**state, "config": {"payload": Evil()}}, run_dir / "checkpoint.pt")


def corrupt_config(run_dir):
    text = (run_dir / "config.json").read_text()
    (run_dir / "config.json").write_text(text[: len(text) // 2])


def corrupt_metrics_line(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run_dir / "metrics.jsonl").write_text("".join([lines[0][:20] + "\n", *lines[1:]]))


# ------------------------------------------------------------------------------------------------------------
# the cases: mine pass in this checkout; SWEEP_FOLDERS depend on the sweep/transfer/report side of issue 14

CASES = [
    # train: --out, --resume and the run folder's own files
    Case("train-out-is-a-file", ["train", *T, "--out", "afile"], ["afile", "is a file"], [afile]),
    Case("train-out-under-a-file", ["train", *T, "--out", "afile/run"], ["afile", "is a file"], [afile]),
    Case("train-out-unwritable", ["train", *T, "--out", UNWRITABLE], [UNWRITABLE], absent=[UNWRITABLE]),
    Case("resume-out-is-a-file", ["train", "--resume", "--out", "afile"], ["afile", "is a file"], [afile]),
    Case("resume-corrupt-checkpoint", ["train", "--resume", "--out", "run"], ["checkpoint.pt", "--force"],
         [run("stopped", garbage_checkpoint)]),
    Case("resume-truncated-checkpoint", ["train", "--resume", "--out", "run"], ["checkpoint.pt", "truncated"],
         [run("stopped", truncated_checkpoint)]),
    Case("resume-checkpoint-is-a-folder", ["train", "--resume", "--out", "run"], ["checkpoint.pt", "folder"],
         [run("stopped", folder_checkpoint)]),
    Case("resume-malicious-checkpoint", ["train", "--resume", "--out", "run"],
         ["checkpoint.pt", "not a checkpoint lrm-mup wrote"], [run("stopped", malicious_checkpoint)],
         forbidden=["weights_only"]),
    Case("resume-corrupt-config", ["train", "--resume", "--out", "run"], ["config.json", "corrupt"],
         [run("stopped", corrupt_config)]),
    Case("resume-corrupt-metrics-line", ["train", "--resume", "--out", "run"], ["metrics.jsonl", "line 1"],
         [run("stopped", corrupt_metrics_line)]),
    Case("resume-finished-run", ["train", "--resume", "--out", "run"], ["run", "finished"], [run("finished")]),
    Case("resume-before-first-checkpoint", ["train", "--resume", "--out", "run"], ["run", "without --resume"],
         [run("stopped", early)]),
    Case("resume-stop-after-behind-the-checkpoint", ["train", "--resume", "--out", "run", "--stop-after", "1"],
         ["(--stop-after) 1 ", "already at step 2"], [run("stopped")]),
    Case("resume-and-force", ["train", "--resume", "--force", "--out", "run"], ["--force"], [run("stopped")]),
    Case("train-over-a-finished-run", ["train", *T, "--force", "--out", "run"], ["run", "finished"],
         [run("finished")]),
    Case("train-over-an-unfinished-run", ["train", *T, "--out", "run"], ["run", "--resume", "--force"],
         [run("stopped")]),
    # train: values
    Case("train-stop-after-negative", ["train", *T, "--stop-after", "-1", "--out", "new"], ["-1"]),
    Case("train-stop-after-beyond-steps", ["train", *T, "--steps", "6", "--stop-after", "12", "--out", "new"],
         ["12", "steps=6"]),
    Case("train-alpha-nan", ["train", *T, "--alpha", "readout=nan", "--out", "new"],
         ["'readout' is nan", "positive finite number"]),
    Case("train-data-is-a-device", ["train", *T, "--data", "/dev/zero", "--out", "new"],
         ["/dev/zero", "not a regular file"]),
    Case("train-data-is-binary", ["train", *T, "--data", "binary.bin", "--out", "new"], ["binary.bin", "UTF-8"],
         [binary]),
    Case("train-seed-beyond-64-bits", ["train", *T, "--seed", str(2**64), "--out", "new"], [str(2**64)]),
    Case("train-heads-and-head-dim", ["train", *T, "--heads", "4", "--out", "new"], ["heads=4", "head_dim=8"]),
    Case("train-context-longer-than-the-data", ["train", *T, "--context", "200000", "--out", "new"],
         ["context 200000", "too long"]),
    # data, describe
    Case("data-is-a-device", ["data", "--data", "/dev/zero"], ["/dev/zero", "not a regular file"]),
    Case("data-missing", ["data", "--data", "missing.txt"], ["missing.txt", "does not exist"]),
    Case("describe-heads-and-head-dim", ["describe", "--width", "32", "--heads", "4", "--head-dim", "8"],
         ["heads=4", "head_dim=8"]),
    # coord-check: values, and --out before the work
    Case("coord-check-lr-inf", [*C, "--lr", "inf", "--out", "cc"], ["lr=inf"]),
    Case("coord-check-workers-zero", [*C, "--workers", "0", "--out", "cc"], ["--workers '0' is invalid", "auto"]),
    Case("coord-check-workers-not-a-count", [*C, "--workers", "many", "--out", "cc"], ["'many'", ">= 1"]),
    Case("coord-check-out-is-a-file", [*C, "--out", "afile"], ["afile", "is a file"], [afile]),
    Case("coord-check-context-longer-than-the-data", [*C, "--context", "200000", "--out", "cc"], ["200000"]),
    # sweep, transfer, report: the inputs this side checks
    Case("sweep-file-binary", ["sweep", "binary.bin", "--out", "sw"], ["binary.bin"], [binary]),
    Case("sweep-file-not-toml", ["sweep", "bad.toml", "--out", "sw"], ["bad.toml", "TOML"], [sweep_file]),
    Case("sweep-workers-zero", ["sweep", "s.toml", "--workers", "0", "--out", "sw"], ["--workers", "0"],
         [sweep_file]),
    Case("transfer-source-not-json", ["transfer", "bad.json", "--out", "tr"], ["bad.json"], [best_files]),
    Case("report-sweep-missing", ["report", "nosweep", "--out", "rep"], ["nosweep"]),
    # demo
    Case("demo-out-is-a-file", ["demo", "--quick", "--data", SLICE, "--out", "afile"], ["afile", "is a file"],
         [afile]),
    Case("demo-binary-sweep-file", ["demo", "--quick", "--sweep", "binary.bin", "--out", "d"], ["binary.bin"],
         [binary]),
    Case("demo-data-missing", ["demo", "--quick", "--data", "missing.txt", "--out", "d"], ["missing.txt"]),
    Case("demo-workers-zero", ["demo", "--quick", "--data", SLICE, "--workers", "0", "--out", "d"], ["0"]),
]

SWEEP_FOLDERS = [  # the sweep, transfer and report folders of issue 14 (dead ends, damaged storage)
    Case("sweep-out-is-a-file", ["sweep", "s.toml", "--out", "afile"], ["afile"], [sweep_file, afile]),
    Case("sweep-data-missing", ["sweep", "nodata.toml", "--out", "sw"], ["missing.txt"], [sweep_file]),
    Case("transfer-out-is-a-file", ["transfer", "best.json", "--out", "afile", "--widths", "32"], ["afile"],
         [best_files, afile]),
    Case("transfer-data-missing", ["transfer", "best_nodata.json", "--out", "tr", "--widths", "32"], ["missing.txt"],
         [best_files]),
    Case("report-corrupt-journal", ["report", "sw_bad_journal", "--out", "rep"], ["optuna.journal"],
         [broken_sweeps]),
    Case("report-corrupt-manifest", ["report", "sw_bad_manifest", "--out", "rep"], ["sweep.json"], [broken_sweeps]),
]


# ------------------------------------------------------------------------------------------------------------


def snapshot(folder: Path) -> dict:
    """Every entry under `folder`: (kind, size, mtime in ns) by relative path; a folder's mtime changes when an entry
    is added to it or removed from it, so a file created and deleted again still shows."""
    tree = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            st = path.lstat()
            tree[str(path.relative_to(folder))] = (st.st_mode >> 12, st.st_size, st.st_mtime_ns)
    st = folder.stat()
    tree["."] = (st.st_mode >> 12, st.st_size, st.st_mtime_ns)
    return tree


def changes(before: dict, after: dict) -> str:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    modified = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return "; ".join(f"{what}: {names[:5]}" for what, names in
                     (("created", added), ("removed", removed), ("modified", modified)) if names)


def check(case: Case, base: Path, templates: Path) -> str | None:
    """Run one case in its own folder; None if it keeps the promise, else what went wrong."""
    ws = base / case.id
    ws.mkdir()
    for setup in case.setup:
        setup(ws, templates)
    before = snapshot(ws)
    proc = subprocess.run([sys.executable, "-m", "lrm_mup", *case.argv], cwd=ws, env=ENV, capture_output=True,
                          text=True, timeout=DEADLINE)
    problems = []
    lines = proc.stderr.strip().splitlines()
    if proc.returncode != 2:
        problems.append(f"exit status {proc.returncode}")
    if len(lines) != 1 or "Traceback" in proc.stderr:
        problems.append(f"{len(lines)} lines on stderr")
    problems += [f"does not name {v!r}" for v in case.named if v not in proc.stderr]
    problems += [f"says {v!r}" for v in case.forbidden if v in proc.stderr]
    diff = changes(before, snapshot(ws))
    if diff:
        problems.append(f"changed its folder ({diff})")
    problems += [f"created {p}" for p in case.absent if os.path.lexists(p)]
    if not problems:
        return None
    return f"{case.id}: {', '.join(problems)}\n    stderr: {proc.stderr.strip()[-600:]!r}"


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    """Real run folders: "stopped" (steps 4, stopped after step 2 with its checkpoint) and "finished" (ok)."""
    base = tmp_path_factory.mktemp("templates")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train(TrainConfig(**TINY), base / "stopped", until=2, progress=False).status == "stopped"
        assert train(TrainConfig(**{**TINY, "steps": 2}), base / "finished", progress=False).status == "ok"
    finally:
        torch.set_num_threads(threads)
    return base


def run_all(cases: list[Case], base: Path, templates: Path) -> list[str]:
    with ThreadPoolExecutor(4) as pool:  # each case is a process importing torch: four at a time
        return [r for r in pool.map(lambda c: check(c, base, templates), cases) if r is not None]


def test_there_are_at_least_40_bad_inputs_over_every_command():
    commands = {c.argv[0] for c in CASES + SWEEP_FOLDERS}
    assert len(CASES) + len(SWEEP_FOLDERS) >= 40
    assert commands == {"train", "data", "describe", "coord-check", "sweep", "transfer", "report", "demo"}
    assert len({c.id for c in CASES + SWEEP_FOLDERS}) == len(CASES) + len(SWEEP_FOLDERS)


def test_every_bad_input_is_one_line_exit_2_and_leaves_its_folder_unchanged(tmp_path, templates):
    failures = run_all(CASES, tmp_path, templates)
    assert not failures, f"{len(failures)} of {len(CASES)} bad inputs break the promise:\n" + "\n".join(failures)


def test_bad_sweep_transfer_and_report_folders_are_one_line_and_leave_nothing(tmp_path, templates):
    failures = run_all(SWEEP_FOLDERS, tmp_path, templates)
    assert not failures, (f"{len(failures)} of {len(SWEEP_FOLDERS)} bad inputs break the promise:\n"
                          + "\n".join(failures))
