"""A run folder survives what kills its process: SIGKILL before the first checkpoint, during a checkpoint write, and
after a metrics row cut mid-line, each followed by a successful restart or `--resume` on the same --out; and two
`--resume` of one run at once, of which one is refused with one line while the other completes.

Every kill lands at its moment by construction, not by timing: the test SIGSTOPs the trainer, checks the run folder
(the checkpoint's temporary file exists, no checkpoint yet, ...) while it is frozen, and SIGKILLs it only then
(tests/waiting.py `stop_if`); otherwise it lets it run on and looks again."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lrm_mup.training import TrainConfig, read_metrics, train
from tests.waiting import DEADLINE, _flocks, stop_if, wait_for

REPO = Path(__file__).resolve().parent.parent
SLICE = str(REPO / "tests" / "data" / "shakespeare")
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
TINY = dict(width=32, base_width=16, depth=1, head_dim=8, context=32, batch=4, eval_batches=1, data=SLICE,
            device="cpu")


def flags(**cfg) -> list[str]:
    args = []
    for key, value in {**TINY, **cfg}.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def start(out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lrm_mup", "train", "--quiet", "--out", str(out), *args],
                            cwd=out.parent, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=DEADLINE)
    return proc.returncode, out.decode(), err.decode()


def cli(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lrm_mup", "train", "--quiet", "--out", str(out), *args],
                          cwd=out.parent, env=ENV, capture_output=True, text=True, timeout=DEADLINE)


def rows(out: Path) -> list[dict]:
    return [row for row, _ in read_metrics(out / "metrics.jsonl")]


def step_rows(out: Path) -> list[dict]:
    return [r for r in rows(out) if "status" not in r]


def strict_rows(out: Path) -> list[dict]:
    """metrics.jsonl read by a strict JSON reader: NaN / Infinity tokens are refused."""
    def refuse(token):
        raise ValueError(f"non-finite {token} in metrics.jsonl")
    return [json.loads(line, parse_constant=refuse) for line in (out / "metrics.jsonl").read_text().splitlines()]


def same_steps(a: list[dict], b: list[dict]) -> bool:
    drop = ("tokens_per_s", "seconds")
    return [{k: v for k, v in r.items() if k not in drop} for r in a] == \
        [{k: v for k, v in r.items() if k not in drop} for r in b]


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL a (stopped) trainer and reap it."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=DEADLINE)
    assert proc.returncode == -signal.SIGKILL


def stop_when(proc: subprocess.Popen, moment, what: str) -> None:
    """Freeze `proc` at a moment `moment()` is true of the run folder (checked while it is stopped); fails if the
    process ends first."""
    def frozen():
        return moment() and stop_if(proc.pid, moment)
    wait_for(frozen, what, procs=[proc])


def checkpoint_tmp(out: Path, pid: int) -> Path:
    return out / f".checkpoint.pt.{pid}.tmp"  # lrm_mup._files.atomic_write's temporary name


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Uninterrupted reference runs, through the CLI like the killed ones: {steps, eval_every} -> run folder."""
    base = tmp_path_factory.mktemp("straight")
    runs = {}
    procs = []
    for steps, every in ((40, 1), (24, 4)):
        out = base / f"s{steps}-e{every}"
        runs[steps, every] = out
        procs.append(start(out, *flags(steps=steps, eval_every=every)))
    for proc in procs:
        code, _, err = finish(proc)
        assert code == 0, err[-2000:]
    return runs


def test_a_run_killed_before_its_first_checkpoint_starts_again_in_its_folder(tmp_path):
    out = tmp_path / "run"
    args = flags(steps=30, eval_every=1000)  # the one checkpoint is the final one
    proc = start(out, *args)
    stop_when(proc, lambda: len(step_rows(out)) >= 2 and not (out / "checkpoint.pt").exists()
              and not checkpoint_tmp(out, proc.pid).exists(), "two steps done and no checkpoint")
    kill(proc)
    assert (out / "config.json").exists() and not (out / "checkpoint.pt").exists()
    assert cli(out, *args, "--resume").returncode == 2  # nothing to resume: it says to start again instead
    again = cli(out, *args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "stopped before its first checkpoint; starting it afresh" in again.stdout
    assert [r["step"] for r in step_rows(out)] == list(range(1, 31))
    assert rows(out)[-1]["status"] == "ok"


def test_a_run_killed_during_a_checkpoint_write_resumes_bit_identically(tmp_path, straight):
    out = tmp_path / "run"
    args = flags(steps=40, eval_every=1)  # a checkpoint after every step
    proc = start(out, *args)
    tmp = checkpoint_tmp(out, proc.pid)
    wait_for(lambda: (out / "checkpoint.pt").exists(), "the first checkpoint", procs=[proc])
    stop_when(proc, tmp.exists, "a checkpoint being written")
    kill(proc)
    assert tmp.exists()  # killed mid-write: the temporary file is left, checkpoint.pt is the previous, whole one
    before = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    assert before < 40
    resumed = cli(out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not tmp.exists()  # the dead writer's temporary file is gone
    assert [r["step"] for r in step_rows(out)] == list(range(1, 41))
    assert same_steps(step_rows(out), step_rows(straight[40, 1]))
    a = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(straight[40, 1] / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_a_metrics_row_cut_mid_line_by_a_crash_does_not_block_the_resume(tmp_path, straight):
    """A row is one write(2) on an O_APPEND descriptor, which a SIGKILL cannot cut; a machine crash (or another
    writer) can. So the process is killed with rows written past its checkpoint, and its last row is then cut in
    the middle, as such a crash leaves it: the resume drops the torn line and the rows past the checkpoint, and
    replays those steps."""
    out = tmp_path / "run"
    args = flags(steps=24, eval_every=4)  # checkpoints at steps 4, 8, ...

    def past_a_checkpoint():
        steps = [r["step"] for r in step_rows(out)]
        return (out / "checkpoint.pt").exists() and not checkpoint_tmp(out, proc.pid).exists() and steps \
            and steps[-1] % 4 != 0 and steps[-1] < 23  # 3 steps of every 4: a poll cannot miss them all

    proc = start(out, *args)
    stop_when(proc, past_a_checkpoint, "rows written past a checkpoint")
    kill(proc)
    text = (out / "metrics.jsonl").read_bytes()
    last = text[:-1].rfind(b"\n") + 1
    (out / "metrics.jsonl").write_bytes(text[: last + (len(text) - last) // 2])  # the last row cut mid-line
    resumed = cli(out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [r["step"] for r in step_rows(out)] == list(range(1, 25))
    assert same_steps(step_rows(out), step_rows(straight[24, 4]))
    assert strict_rows(out)[-1]["status"] == "ok"


def holds_lock(pid: int, path: Path) -> bool:
    """`pid` holds an flock on `path` (read from /proc/locks: the lock id ends with the file's inode)."""
    if not path.exists():
        return False
    inode = os.stat(path).st_ino
    return any(not waiting and holder == pid and int(lock.rsplit(":", 1)[1]) == inode
               for waiting, _, holder, lock in _flocks())


def test_two_resumes_of_one_run_at_once_one_is_refused_and_each_step_is_written_once(tmp_path):
    out = tmp_path / "run"
    torch.set_num_threads(1)
    assert train(TrainConfig(**{**TINY, "steps": 30, "eval_every": 5}), out, until=5, progress=False).status == \
        "stopped"
    first = start(out, "--resume")
    try:
        stop_when(first, lambda: holds_lock(first.pid, out / "metrics.jsonl") and rows(out)
                  and rows(out)[-1].get("status") != "ok", "the first resume training with the folder locked")
        second = cli(out, "--resume")
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "is in use: another process is training in it" in lines[0], second.stderr
    finally:
        os.kill(first.pid, signal.SIGCONT)
    code, _, err = finish(first)
    assert code == 0, err[-2000:]
    assert [r["step"] for r in step_rows(out)] == list(range(1, 31))
    assert [r["status"] for r in rows(out) if "status" in r] == ["ok"]


def test_a_second_train_into_a_folder_in_use_is_refused(tmp_path):
    """A run killed before its first checkpoint may be started again, but not while another process already is."""
    out = tmp_path / "run"
    args = flags(steps=400, eval_every=1000)
    first = start(out, *args)
    try:
        stop_when(first, lambda: holds_lock(first.pid, out / "metrics.jsonl") and step_rows(out), "training")
        second = cli(out, *args)
        assert second.returncode == 2 and "is in use" in second.stderr, second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=DEADLINE)
