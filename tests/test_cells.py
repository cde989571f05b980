"""A coordinate check's runs in forked worker processes (lrm_mup.tuning._cells, `coord_check(workers=...)`): the
worker rule as a pure function (bad counts: tests/test_threads.py), the records of worker processes equal to those
of one process, an error in a run raised in the caller, a worker that dies reported in one line, no worker left
behind, and no hang when two-thread workers are forked after a two-thread op in the parent (GNU OpenMP's fork trap).
Never a wall time: waits are on process exits, bounded by waiting.DEADLINE only against a hang."""
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lrm_mup._threads import AUTO_WORKERS, available_cores, choose_workers, parse_workers, workers_for_load
from lrm_mup.data import load_corpus
from lrm_mup.errors import ConfigError, CoordCheckError
from lrm_mup.models import GPT, GPTConfig
from lrm_mup.tuning.coord_check import coord_check, depth_coord_check
from tests.waiting import DEADLINE

REPO = Path(__file__).resolve().parent.parent
SLICE = str(REPO / "tests" / "data" / "shakespeare")
T = 16
SMALL = dict(base_width=32, delta_width=64, recipes=["mup", "lrm"], steps=2, last_steps=1, seeds=2, batch_size=4,
             context=T, progress=False)


def tiny(width, depth=1):
    return GPT(GPTConfig(width=width, depth=depth, head_dim=16, context=T))


@pytest.fixture(scope="module")
def corpus():
    return load_corpus(SLICE, progress=False)


@pytest.mark.parametrize("cores, load, cells, workers", [
    (2, 0.0, 48, 2),   # idle: one per core
    (2, 2.0, 48, 4),   # two busy loops: one more per busy core, 4/3 of a core against 1 for two workers
    (2, 20.0, 48, 4),  # at most two per core, however loaded
    (2, 0.4, 48, 2),   # noise below half a core
    (8, 0.0, 3, 3),    # never more than the runs
    (1, 0.0, 48, 1),   # one idle core: in this process
    (16, 3.0, 48, 19),
])
def test_the_worker_rule_takes_one_per_core_and_one_more_per_busy_core(cores, load, cells, workers):
    assert workers_for_load(cores, load, cells) == workers


def test_a_worker_count_is_a_whole_number_or_auto_and_never_more_than_the_runs():
    assert [parse_workers(v) for v in (None, 1, "3", " Auto ")] == [1, 1, 3, AUTO_WORKERS]
    assert choose_workers(8, 3) == 3 and choose_workers(2, 48) == 2
    assert 1 <= choose_workers("auto", 48) <= 2 * available_cores()


def test_a_bad_worker_count_stops_the_check_before_any_model_is_built(corpus):
    built = []
    for check, args in ((coord_check, ([32, 64],)), (depth_coord_check, ([1, 2],))):
        kw = ({**SMALL} if check is coord_check else
              dict(width=32, base_depth=1, depth_rule="sqrt", steps=2, last_steps=1, seeds=1, progress=False))
        with pytest.raises(ConfigError, match="^workers 0 is invalid"):
            check(lambda *a: built.append(a) or tiny(*a), *args, corpus=corpus, workers=0, **kw)
    assert built == []


def test_runs_in_two_worker_processes_give_the_records_of_one_process(corpus):
    here = coord_check(tiny, [32, 64], corpus=corpus, threads=1, **SMALL)
    forked = coord_check(tiny, [32, 64], corpus=corpus, threads=1, workers=2, **SMALL)
    assert forked.records == here.records and forked.config == here.config
    assert {r["recipe"] for r in forked.records} == {"mup", "lrm"} and {r["seed"] for r in forked.records} == {0, 1}
    assert multiprocessing.active_children() == []


def test_a_depth_check_in_worker_processes_gives_the_records_of_one_process(corpus):
    kw = dict(width=32, base_depth=1, depth_rule="sqrt", recipes=["mup"], steps=2, last_steps=1, seeds=2,
              batch_size=4, context=T, progress=False, corpus=corpus, threads=1)
    here = depth_coord_check(tiny, [1, 2], **kw)
    forked = depth_coord_check(tiny, [1, 2], workers=2, **kw)
    assert forked.records == here.records and forked.config == here.config
    assert multiprocessing.active_children() == []


def _in_a_worker() -> bool:
    return multiprocessing.parent_process() is not None


def test_an_error_in_a_run_is_raised_in_the_caller_and_no_worker_is_left(corpus):
    def build(width):
        if width == 64 and _in_a_worker():  # the shapes (built here) pass; the run at width 64 (in a worker) fails
            raise ConfigError("width 64 refused by this test's model")
        return tiny(width)

    with pytest.raises(ConfigError, match="^width 64 refused by this test's model$"):
        coord_check(build, [32, 64], corpus=corpus, threads=1, workers=2, **SMALL)
    assert multiprocessing.active_children() == []


def test_a_worker_that_dies_is_one_line_and_no_worker_is_left(corpus):
    def build(width):
        if width == 64 and _in_a_worker():
            os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would
        return tiny(width)

    with pytest.raises(CoordCheckError) as err:
        coord_check(build, [32, 64], corpus=corpus, threads=1, workers=2, **SMALL)
    message = str(err.value)
    assert "\n" not in message and "worker process ended abruptly" in message and "workers=1" in message
    assert multiprocessing.active_children() == []


HANG = textwrap.dedent("""
    import torch
    from lrm_mup.data import load_corpus
    from lrm_mup.models import GPT, GPTConfig
    from lrm_mup.tuning.coord_check import coord_check

    torch.set_num_threads(2)
    a = torch.randn(1024, 1024)
    (a @ a).sum().item()  # a two-thread op in the parent: GNU OpenMP's pool is now live in this thread
    build = lambda w: GPT(GPTConfig(width=w, depth=1, head_dim=16, context=16))
    r = coord_check(build, [32, 64], base_width=32, delta_width=64, recipes=["mup"], steps=2, last_steps=1, seeds=2,
                    batch_size=4, context=16, corpus=load_corpus({slice!r}, progress=False), progress=False,
                    workers=2, threads=2)
    print("records", len(r.records))
""")


def test_two_thread_workers_forked_after_a_two_thread_op_in_the_parent_do_not_hang():
    if torch.backends.openmp.is_available() is False:
        pytest.skip("torch without OpenMP: no OpenMP pool to inherit")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", HANG.format(slice=SLICE)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=DEADLINE)  # waits on the exit; the bound only ends a hang
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"the coordinate check in two-thread workers hung (no exit in {DEADLINE:.0f} s)")
    assert proc.returncode == 0, err
    assert out.strip().startswith("records ")


def test_the_cli_runs_the_check_in_the_workers_given_and_says_so(tmp_path):
    argv = ["coord-check", "--recipes", "mup", "--widths", "32,64", "--base-width", "32", "--delta-width", "64",
            "--steps", "2", "--seeds", "2", "--context", "16", "--data", SLICE, "--workers", "2", "--threads", "1",
            "--out", str(tmp_path / "cc")]
    env = {k: v for k, v in os.environ.items() if k not in ("LRM_MUP_THREADS", "OMP_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-m", "lrm_mup", *argv], env={**env, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=DEADLINE)
    assert done.returncode == 0, done.stderr
    said = [x for x in done.stderr.splitlines() if " worker processes; " in x]
    assert said == ["coord check: 2 worker processes; threads: 1 per worker, 2 workers (LRM_MUP_THREADS; "
                    f"{available_cores()} cores)"], done.stderr
    assert (tmp_path / "cc" / "coord_check.json").is_file()
