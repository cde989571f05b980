"""Threads per process (lrm_mup._threads, lrm_mup.training.threads): the rule as a pure function of (cores, load,
workers, override), the override's checks, the load this machine's busy processes put on it seen by the measurement,
the in-process API leaving the caller's threads alone unless asked, and the CLI saying its choice and honouring
--threads. Never a wall time."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lrm_mup._threads import (
    THREADS_ENV,
    ThreadChoice,
    _instant_load,
    available_cores,
    choose_threads,
    other_load,
    parse_threads,
    parse_workers,
    threads_for_load,
)
from lrm_mup.errors import ConfigError, LrmMupError
from lrm_mup.training.threads import threads_argument, threads_set

REPO = Path(__file__).resolve().parent.parent
SLICE = str(REPO / "tests" / "data" / "shakespeare")
TINY = ["coord-check", "--recipes", "mup", "--widths", "32,64", "--base-width", "32", "--delta-width", "64",
        "--steps", "2", "--seeds", "1", "--context", "16", "--data", SLICE, "--quiet", "--workers", "1"]


@pytest.mark.parametrize("cores, load, workers, threads", [
    (2, 7.9, 1, 1),   # the shared 2-core machine of issue 15: one thread
    (2, 1.0, 1, 1),   # one core taken: a 2-thread team would wait on it at every barrier
    (2, 0.3, 1, 2),   # background noise below half a core: both cores
    (2, 0.0, 1, 2),
    (8, 0.0, 2, 4),   # idle: an equal share of the cores per worker
    (8, 0.0, 3, 2),
    (8, 3.4, 1, 5),   # the cores left free
    (8, 5.0, 2, 1),   # 3 free cores over 2 workers: 1 each, never more than the free cores
    (8, 20.0, 4, 1),  # never fewer than one
    (1, 0.0, 4, 1),   # more workers than cores
])
def test_the_rule_gives_each_process_at_most_its_share_of_the_free_cores(cores, load, workers, threads):
    assert threads_for_load(cores, load, workers) == threads


def test_an_override_wins_over_any_load_and_is_not_capped():
    assert threads_for_load(2, 9.0, 1, override=4) == 4
    assert threads_for_load(8, 0.0, 2, override=1) == 1


@pytest.mark.parametrize("value", ["0", "-1", "abc", "2.5", 0, -3, 1.5, True])
@pytest.mark.parametrize("parse, flag, allowed", [(parse_threads, "--threads", ">= 1"),
                                                  (parse_workers, "--workers", "'auto'")])
def test_a_bad_thread_or_worker_count_is_one_line_naming_the_value(value, parse, flag, allowed):
    with pytest.raises(ConfigError) as err:
        parse(value, flag)
    message = str(err.value)
    assert isinstance(err.value, LrmMupError) and "\n" not in message
    assert repr(value) in message and flag in message and ">= 1" in message and allowed in message


def test_an_override_is_a_whole_number_or_nothing():
    assert parse_threads("3") == 3 and parse_threads(" 2 ") == 2 and parse_threads(5) == 5
    assert parse_threads(None) is None and parse_threads("") is None


def test_the_environment_variable_overrides_the_rule_and_a_bad_one_is_named(monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "3")
    choice = choose_threads(2)
    assert (choice.threads, choice.source, choice.load) == (3, THREADS_ENV, None)
    assert choose_threads(2, override=1).threads == 1  # an explicit argument wins over the environment
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(ConfigError, match=f"{THREADS_ENV} 'many' is invalid"):
        choose_threads(1)


def test_the_choice_is_said_in_one_line():
    assert ThreadChoice(1, 1, 2, 7.94, "rule").line() == "threads: 1 per process (2 cores, load 7.9)"
    assert ThreadChoice(4, 2, 8, 0.0, "rule").line() == "threads: 4 per worker, 2 workers (8 cores, load 0.0)"
    assert ThreadChoice(3, 1, 2, None, "--threads").line() == "threads: 3 per process (--threads; 2 cores)"


def test_busy_processes_are_seen_as_load_and_leave_the_rule_fewer_threads():
    """Two CPU-bound processes are runnable all the time: the instantaneous count sees them at once (the 1-minute
    average would take a minute), so the rule leaves them their cores."""
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        for _ in range(100):  # until both are in their loop (runnable), at most 5 s
            if all(Path(f"/proc/{b.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "R" for b in busy):
                break
            time.sleep(0.05)
        assert _instant_load() >= 2 - 1e-9
        cores = available_cores()
        assert choose_threads(1).threads <= max(1, cores - 2)
        assert other_load() >= 2 - 1e-9
    finally:
        for b in busy:
            b.kill()
            b.wait()


def test_the_api_leaves_the_callers_threads_alone_unless_asked(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    seen = threads_argument(lambda: torch.get_num_threads())
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert seen() == 1  # not asked: the caller's own setting, whatever the load
        assert seen(threads=2) == 2 and torch.get_num_threads() == 1  # asked: for the call, then put back
        monkeypatch.setenv(THREADS_ENV, "2")
        assert seen() == 2 and torch.get_num_threads() == 1
        with pytest.raises(ConfigError, match=r"threads=\.\.\.\) 0 is invalid"):
            seen(threads=0)
    finally:
        torch.set_num_threads(before)


def test_an_override_reaches_worker_processes_through_the_environment_for_the_block_only(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    before = torch.get_num_threads()
    with threads_set(1, where="--threads") as threads:
        assert threads == 1 and torch.get_num_threads() == 1 and os.environ[THREADS_ENV] == "1"
    assert THREADS_ENV not in os.environ and torch.get_num_threads() == before
    with threads_set(rule=True) as threads:  # the rule: between 1 and the cores
        assert 1 <= threads == torch.get_num_threads() <= available_cores() and THREADS_ENV not in os.environ


def _cli(args, tmp_path, out=True, **env):
    environ = {k: v for k, v in os.environ.items() if k not in (THREADS_ENV, "OMP_NUM_THREADS")}
    environ.update(PYTHONPATH=str(REPO), **env)
    return subprocess.run([sys.executable, "-m", "lrm_mup", *args, *(["--out", str(tmp_path / "cc")] if out else [])],
                          env=environ, capture_output=True, text=True, timeout=600)


def test_the_cli_says_the_rules_choice_and_an_environment_override_in_one_line(tmp_path):
    abm = ["equilibrium", "--abm", "--steps", "20", "--shape", "4,4"]  # a command that computes, in a second
    ruled = _cli(abm, tmp_path, out=False)
    assert ruled.returncode == 0, ruled.stderr
    lines = [x for x in ruled.stderr.splitlines() if x.startswith("threads: ")]
    assert len(lines) == 1 and " per process (" in lines[0] and " cores, load " in lines[0], ruled.stderr
    given = _cli(abm, tmp_path, out=False, **{THREADS_ENV: "2"})
    assert f"threads: 2 per process ({THREADS_ENV}; {available_cores()} cores)" in given.stderr.splitlines()


def test_the_cli_runs_a_coordinate_check_on_the_threads_given(tmp_path):
    given = _cli([*TINY, "--threads", "1"], tmp_path)
    assert given.returncode == 0, given.stderr
    assert [x for x in given.stderr.splitlines() if x.startswith("threads: ")] == [
        f"threads: 1 per process (--threads; {available_cores()} cores)"]
    assert (tmp_path / "cc" / "coord_check.json").is_file()


@pytest.mark.parametrize("args, env, named", [
    (["--threads", "0"], {}, "--threads '0' is invalid"),
    (["--threads", "two"], {}, "--threads 'two' is invalid"),
    ([], {THREADS_ENV: "-2"}, f"{THREADS_ENV} '-2' is invalid"),
])
def test_a_bad_thread_count_on_the_command_line_exits_2_with_one_line(tmp_path, args, env, named):
    done = _cli([*TINY, *args], tmp_path, **env)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and named in done.stderr, done.stderr
    assert not (tmp_path / "cc").exists()


def test_a_command_stopped_by_other_bad_input_says_only_its_error(tmp_path):
    done = _cli([*TINY, "--steps", "0"], tmp_path)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "lrm-mup coord-check: error: --steps 0 is invalid: must be at least 1"], done.stderr
