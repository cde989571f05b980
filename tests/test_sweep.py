"""Sweeps end to end on real Optuna journal storage and the committed corpus slice: validation, a grid over two real
worker processes, resume after a killed run, divergence, TPE budgets and pruning, the records() rows, the CLI."""
import json
import multiprocessing.connection
import os
import signal
import subprocess
import sys
import threading
from itertools import product
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from lrm_mup.cli import main
from lrm_mup.errors import SweepError
from lrm_mup.tuning.sweep import JOURNAL, best_params, load_sweep, parse_sweep, records, run_sweep
from tests.waiting import DEADLINE, FlockGate, mid_trial, stop_if, wait_for

SLICE = str(Path(__file__).parent / "data" / "shakespeare")
REPO = Path(__file__).resolve().parent.parent
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: threads only fight over a busy machine's cores
MODEL = {"depth": 1, "context": 32, "batch": 4, "head_dim": 8, "base_width": 16, "eval_batches": 2, "data": SLICE}
KEYS = {"study", "trial", "state", "recipe", "width", "seed", "log2_lr", "val_bpb", "train_loss", "status", "tokens",
        "flops", "seconds", "config"}


@pytest.fixture(autouse=True)
def one_thread():
    """In-process sweeps train tiny models: one thread, so that a busy machine cannot stall torch's thread pool."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def grid_spec(**over) -> dict:
    spec = {"name": "g", "recipes": ["sp", "lrm"], "widths": [16, 32], "seeds": [0], "steps": 10,
            "model": dict(MODEL), "search": {"log2_lr": [-8, -6, 14]}, "sampler": {"type": "grid"},
            "trial": {"report_every": 2}}
    spec.update(over)
    return spec


def toml(d: dict) -> str:
    """A minimal TOML writer for the test specs: top-level values, then one [table] per dict."""
    def value(v):
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v)

    top = [f"{k} = {value(v)}" for k, v in d.items() if not isinstance(v, dict)]
    tables = [f"[{k}]\n" + "\n".join(f"{kk} = {value(vv)}" for kk, vv in v.items())
              for k, v in d.items() if isinstance(v, dict)]
    return "\n".join(top + tables) + "\n"


def write(tmp_path, d: dict, name="s.toml") -> Path:
    path = tmp_path / name
    path.write_text(toml(d))
    return path


def study(out, name):
    """The study read straight from the journal file with optuna's own classes."""
    return optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(Path(out) / JOURNAL))))


def grid_points(spec):
    return set(product(spec["widths"], spec["seeds"], [float(v) for v in spec["search"]["log2_lr"]]))


def point(t):
    return t.params["width"], t.params["seed"], float(t.params["log2_lr"])


# ----------------------------------------------------------------------------------------------------------
# validation


BAD = [
    ({"widht": [16]}, "widht is not a known key"),
    ({"recipes": ["sp", "nope"]}, "recipes has 'nope'"),
    ({"widths": [16, 0]}, "widths has 0"),
    ({"seeds": []}, "seeds must be a non-empty list"),
    ({"steps": 0}, "steps must be a positive integer"),
    ({"name": "a b"}, "name must be"),
    ({"model": {**MODEL, "foo": 1}}, "model.foo is not a TrainConfig field"),
    ({"model": {**MODEL, "width": 32}}, "model.width is set by the sweep"),
    ({"model": {**MODEL, "batch": 0}}, "batch=0 is invalid"),
    ({"model": {**MODEL, "head_dim": 7}}, "model (recipe 'sp', width 16) is invalid"),
    ({"model": {**MODEL, "lr": 0.01}}, "model.lr is also searched by search.log2_lr"),
    ({"search": {"log2_lr": {"low": -8, "high": -4}}}, "search.log2_lr must be a list of values for sampler 'grid'"),
    ({"search": {"log2_lr": [-8], "bogus": [1]}}, "search.bogus is not a searchable key"),
    ({"search": {"log2_lr": [-8], "lr": [0.1]}}, "search.lr sets the same value as search.log2_lr"),
    ({"search": {"log2_lr": [-8, -8]}}, "search.log2_lr has duplicate values"),
    ({"search": {"log2_lr": [-8], "log2_mult_lr": [-6]}, "recipes": ["sp"]}, "search.log2_mult_lr applies to"),
    ({"search": {"log2_lr": [-8], "init_std": {"values": [1.0], "recipes": ["mup"]}}}, "search.init_std.recipes"),
    ({"sampler": {"type": "tpx"}}, "sampler.type must be one of grid, tpe, random"),
    ({"sampler": {"type": "grid", "trials": 3}}, "sampler.trials is not a known key"),
    ({"sampler": {"type": "tpe"}, "search": {"log2_lr": {"low": -8, "high": -4}}}, "sampler.trials must be"),
    ({"sampler": {"type": "tpe", "trials": 4}, "search": {"log2_lr": {"low": -8, "high": -4}}}, "widths must list one"),
    ({"pruner": {"type": "median"}}, "pruner.type must be 'none' with sampler 'grid'"),
    ({"trial": {"cap": -1}}, "trial.cap must be a positive number"),
    ({"trial": {"every": 2}}, "trial.every is not a known key"),
    ({"heartbeat": {"interval": 5, "grace": 2}}, "heartbeat.grace must be"),
]


@pytest.mark.parametrize("over,message", BAD, ids=[m.split()[0] for _, m in BAD])
def test_bad_sweep_files_name_the_key_in_one_line(tmp_path, over, message):
    with pytest.raises(SweepError) as err:
        load_sweep(write(tmp_path, grid_spec(**over)))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith(str(tmp_path / "s.toml"))


def test_unreadable_files_and_round_trip(tmp_path):
    with pytest.raises(SweepError, match="does not exist"):
        load_sweep(tmp_path / "missing.toml")
    (tmp_path / "broken.toml").write_text("name = \n")
    with pytest.raises(SweepError, match="not valid TOML"):
        load_sweep(tmp_path / "broken.toml")
    spec = load_sweep(write(tmp_path, grid_spec()))
    assert parse_sweep(spec.to_dict()).to_dict() == spec.to_dict()  # the manifest is a valid sweep again
    # every shipped file compares all four recipes, except the two studies of what only some recipes have: the
    # multipliers' LR (lrm alone has multipliers; its LR x mult_lr grid) and the paper's tuning ablation (fixed vs
    # learnable multipliers)
    studies = {"mult_lr.toml": ("lrm",), "mult_lr_grid.toml": ("lrm",), "mult_lr_target.toml": ("lrm",),
               "tiers.toml": ("mup", "lrm")}
    for shipped in sorted((REPO / "sweeps").glob("*.toml")):
        assert load_sweep(shipped).recipes == studies.get(shipped.name, ("sp", "lr-only", "mup", "lrm")), shipped.name


def test_cli_exits_2_on_a_bad_file_and_writes_nothing(tmp_path, capsys):
    bad = write(tmp_path, grid_spec(sampler={"type": "grid", "seed": -1}))
    out = tmp_path / "out"
    assert main(["sweep", str(bad), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lrm-mup sweep: error:") and "sampler.seed" in err and "\n" not in err
    assert not out.exists()
    good = write(tmp_path, grid_spec(), "good.toml")
    assert main(["sweep", str(good), "--out", str(out), "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err and not out.exists()


# ----------------------------------------------------------------------------------------------------------
# grid: two worker processes, divergence, records, resume


def test_grid_with_two_workers_runs_every_point_once_and_records_divergence(tmp_path, capfd, spawns):
    d = grid_spec()
    path = write(tmp_path, d)
    out = tmp_path / "out"
    # no trial is claimed before both workers wait for one: on a busy machine one worker could otherwise run the
    # whole grid while the other is still importing torch
    spawns.gate(FlockGate(out / ".claim.lock"), 2)
    assert main(["sweep", str(path), "--out", str(out), "--workers", "2"]) == 0
    spawns.join()
    assert spawns.all_queued and len(spawns.procs) == 2
    printed = capfd.readouterr().out  # the workers' lines come from their own processes
    assert f"results in {out}" in printed and printed.count("] trial ") == 12  # one line per finished trial
    assert "diverged" in printed and "w16: log2_lr=" in printed  # the per-recipe summary

    workers = set()
    for recipe in d["recipes"]:
        trials = study(out, f"g/{recipe}").get_trials()
        assert all(t.state == TrialState.COMPLETE for t in trials)
        assert sorted(map(point, trials)) == sorted(grid_points(d))  # every point, exactly once
        workers |= {t.user_attrs["worker"] for t in trials}
        for t in trials:
            if t.params["log2_lr"] == 14:  # LR 2^14 blows up: recorded, capped, and the sweep went on
                assert t.value == 8.0 and t.user_attrs["status"] == "diverged" and "step" in t.user_attrs["reason"]
            else:
                assert t.user_attrs["status"] == "ok" and 0 < t.value < 8.5
    assert len(workers) == 2 and all(int(w.rsplit(":", 1)[1]) != os.getpid() for w in workers)
    assert {int(w.rsplit(":", 1)[1]) for w in workers} == {p.pid for p in spawns.procs}  # the two it started

    spec = load_sweep(path)
    rows = records(out, spec)
    assert len(rows) == 12 and all(KEYS <= set(r.row()) for r in rows)
    for r in rows:
        assert r.tokens > 0 and r.flops > 0 and r.seconds > 0
        assert r.config["width"] == r.width and r.config["lr"] == 2.0 ** r.log2_lr
        assert r.state == "COMPLETE" and r.status == ("diverged" if r.log2_lr == 14 else "ok")
        if r.status == "diverged":
            assert r.val_bpb == 8.0 and r.train_loss != r.train_loss  # NaN: no finite train loss
    assert [r.trial for r in records(str(out))] == [r.trial for r in rows]  # a folder path as a string
    best = best_params(out, spec, width=32)
    assert set(best) == {"sp", "lrm"} and all(cfg["width"] == 32 and cfg["lr"] < 1 for cfg in best.values())

    # re-running the same command resumes: nothing is left to run, nothing is re-run
    before = {r: len(study(out, f"g/{r}").trials) for r in d["recipes"]}
    started = len(spawns.procs)
    run_sweep(spec, out, workers=2, progress=False)
    assert len(spawns.procs) == started  # no worker was even started
    assert {r: len(study(out, f"g/{r}").trials) for r in d["recipes"]} == before
    # another sweep file in the same folder is refused, nothing changes
    with pytest.raises(SweepError, match="other settings"):
        run_sweep(load_sweep(write(tmp_path, grid_spec(steps=11), "other.toml")), out)


def test_a_killed_run_resumes_without_rerunning_finished_points(tmp_path):
    d = grid_spec(name="k", recipes=["mup"], widths=[16], seeds=[0, 1], steps=100,
                  search={"log2_lr": [-9, -8, -7, -6]})
    path = write(tmp_path, d)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "lrm_mup.cli", "sweep", str(path), "--out", str(out), "--quiet"],
                            cwd=REPO, env=ONE_THREAD, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def now():
        try:
            return study(out, "k/mup").get_trials(deepcopy=False)
        except (KeyError, FileNotFoundError):  # not created yet
            return []

    def training_the_next():  # it has finished a trial and is mid-way through training the next one
        trials = now()
        return any(t.state == TrialState.COMPLETE for t in trials) and mid_trial(trials[-1], d["steps"])

    try:  # kill it once it has finished a trial and is training the next one: stopped first, then checked, then killed
        wait_for(lambda: training_the_next() and stop_if(proc.pid, training_the_next), "a second trial under way",
                 procs=[proc])
    finally:
        proc.kill()
        proc.wait()
    killed = study(out, "k/mup").get_trials()
    finished = {t.number: point(t) for t in killed if t.state == TrialState.COMPLETE}
    running = [t for t in killed if t.state == TrialState.RUNNING]
    assert finished and len(running) == 1

    run_sweep(load_sweep(path), out, progress=False)
    trials = study(out, "k/mup").get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(map(point, complete)) == sorted(grid_points(d))  # every point once
    assert {t.number: point(t) for t in complete if t.number in finished} == finished  # none re-run, none lost
    dead = trials[running[0].number]
    assert dead.state == TrialState.FAIL
    retry = [t for t in complete if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retry) == 1 and point(retry[0]) == point(dead)  # retried with the same params


# ----------------------------------------------------------------------------------------------------------
# TPE: equal budgets per recipe, pruning after warmup with a reason, divergence as a pruned trial


def test_tpe_sweep_has_equal_budgets_and_pruned_trials_carry_a_reason(tmp_path):
    d = {"name": "t", "recipes": ["sp", "lrm"], "widths": [16], "seeds": [0, 1], "steps": 12, "model": dict(MODEL),
         "search": {"log2_lr": {"low": -16, "high": 13}, "log2_mult_lr": {"low": -10, "high": -4}},
         "sampler": {"type": "tpe", "trials": 7, "startup_trials": 3, "seed": 1},
         "pruner": {"type": "median", "warmup_steps": 4, "startup_trials": 1, "interval": 2},
         "trial": {"report_every": 2}}
    spec = load_sweep(write(tmp_path, d))
    out = tmp_path / "out"
    run_sweep(spec, out, workers=2, progress=False)  # two processes share each recipe's budget
    run_sweep(spec, out, progress=False)  # resuming a finished sweep adds nothing
    rows = records(out, spec)
    assert {r: sum(x.recipe == r for x in rows) for r in d["recipes"]} == {"sp": 7, "lrm": 7}
    for recipe in d["recipes"]:
        assert len(study(out, f"t/{recipe}").trials) == 7
    statuses = {r.status for r in rows}
    assert {"ok", "pruned"} <= statuses
    for r in rows:
        assert KEYS | {"log2_mult_lr"} <= set(r.row()) and r.seed is None and r.seeds == (0, 1)
        assert r.tokens > 0 and r.flops > 0 and r.seconds > 0
        assert (r.param("log2_mult_lr") is None) == (r.recipe == "sp")  # the multiplier LR is searched for lrm only
        if r.status == "pruned":
            assert r.state == "PRUNED" and "MedianPruner at step" in r.reason and r.val_bpb is None
            assert int(r.reason.split("step ")[1].split(":")[0]) >= 4  # never before the warmup
        elif r.status == "diverged":
            assert r.state == "PRUNED" and r.val_bpb == 8.0 and r.reason
        else:
            assert r.state == "COMPLETE" and r.reason is None and r.val_bpb < 8.5
    best = best_params(out, spec)
    assert set(best) == {"sp", "lrm"} and best["lrm"]["mult_lr"] is not None and best["sp"]["mult_lr"] is None


# ----------------------------------------------------------------------------------------------------------
# bad input leaves nothing on disk; a worker that dies


def tree(path: Path) -> dict:
    """Every entry under `path` with its bytes (None for a folder): a snapshot to compare before and after."""
    if not path.exists():
        return {}
    if path.is_file():
        return {".": path.read_bytes()}
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else None) for p in sorted(path.rglob("*"))}


def test_a_sweep_with_bad_input_writes_nothing(tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("to be or not to be " * 10)  # 190 bytes: a validation split of 19, shorter than the context
    afile = tmp_path / "afile"
    afile.write_text("mine")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (grid_spec(model={**MODEL, "data": str(tmp_path / "missing")}), tmp_path / "out", "does not exist"),
        (grid_spec(model={**MODEL, "data": str(short)}), tmp_path / "out", "context 32 is too long"),
        (grid_spec(model={**MODEL, "data": str(short)}), empty, "context 32 is too long"),  # an existing folder
        (grid_spec(), afile, "is a file"),
        (grid_spec(), afile / "out", "is a file"),  # a folder under a file
    ]
    for d, out, message in cases:
        before = {p: tree(p) for p in (tmp_path / "out", afile, empty)}
        assert main(["sweep", str(write(tmp_path, d)), "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("lrm-mup sweep: error:") and message in err and "\n" not in err, err
        assert {p: tree(p) for p in before} == before  # nothing created, nothing modified


def test_a_dead_worker_is_a_warning_when_the_others_finish_every_trial(tmp_path, capfd, spawns):
    d = grid_spec(name="dead", recipes=["mup"], widths=[16], search={"log2_lr": [-8, -6]}, steps=6)
    spec = parse_sweep(d)
    out = tmp_path / "out"
    killed = []

    def kill_one(procs):  # both workers wait for the claim lock, holding no trial: one of them dies right there
        os.kill(procs[1].pid, signal.SIGKILL)
        multiprocessing.connection.wait([procs[1].sentinel])  # dead (readable once it exited; not reaped here)
        killed.append(procs[1].pid)

    spawns.gate(FlockGate(out / ".claim.lock"), 2, when_queued=kill_one)
    run_sweep(spec, out, workers=2, progress=False)  # returns normally: the other worker ran every trial
    spawns.join()
    assert spawns.all_queued and killed
    err = capfd.readouterr().err.strip()
    assert f"sweep worker 1 (pid {killed[0]}) was killed by signal 9 (SIGKILL)" in err and "\n" not in err, err
    assert "finished every trial" in err and "Traceback" not in err
    trials = study(out, "dead/mup").get_trials()
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials)


def test_a_worker_killed_mid_trial_is_one_line_and_a_resume_retries_its_trial(tmp_path, capfd):
    d = grid_spec(name="mid", recipes=["mup"], widths=[16], search={"log2_lr": [-9, -8]}, steps=60)
    path = write(tmp_path, d)
    out = tmp_path / "out"
    command = ["sweep", str(path), "--out", str(out), "--workers", "2", "--quiet"]
    code = []
    parent = threading.Thread(target=lambda: code.append(main(command)), daemon=True)  # the CLI, its workers real
    parent.start()

    def now():
        try:
            return study(out, "mid/mup").get_trials(deepcopy=False)
        except (KeyError, FileNotFoundError, ValueError):  # not created yet
            return []

    def owner(t):
        return int(t.user_attrs["worker"].rsplit(":", 1)[1]) if "worker" in t.user_attrs else None

    def worker_mid_trial():  # a worker frozen mid-way through a trial (stopped first, then checked): (trial, pid)
        assert parent.is_alive() or code, "the sweep ended before a worker was seen mid-trial"
        t = next((t for t in now() if mid_trial(t, d["steps"]) and owner(t)), None)
        if t is None or not stop_if(owner(t), lambda: mid_trial(now()[t.number], d["steps"])):
            return None
        return t, owner(t)

    victim, pid = wait_for(worker_mid_trial, "a sweep worker mid-way through a trial")
    os.kill(pid, signal.SIGKILL)
    parent.join(timeout=DEADLINE)  # a last resort: the other worker finishes its trial, then the parent returns
    err = capfd.readouterr().err.strip()
    assert code == [2] and "\n" not in err and "Traceback" not in err, err
    assert err.startswith("lrm-mup sweep: error: sweep worker") and f"(pid {pid}) was killed by signal 9" in err
    assert "1 trial(s) are unfinished: re-run the same command" in err
    assert now()[victim.number].state == TrialState.RUNNING  # its trial, left by the dead worker

    run_sweep(load_sweep(path), out, progress=False)  # resuming retries the dead worker's trial with its params
    trials = study(out, "mid/mup").get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(map(point, complete)) == sorted(grid_points(d))
    assert [point(t) for t in complete if t.system_attrs.get("failed_trial") == victim.number] == [point(victim)]
