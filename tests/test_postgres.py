"""Sweeps over a REAL local PostgreSQL server (started by the fixture): workers sharing one study, and a worker
killed with SIGKILL mid-trial whose trial the heartbeat fails and the surviving worker retries with the same params."""
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from itertools import product
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2 is not installed: pip install psycopg2-binary")
from optuna.trial import TrialState

from lrm_mup.cli import main
from lrm_mup.tuning.sweep import parse_sweep, records, run_sweep
from tests.waiting import DEADLINE, mid_trial, stop_if, wait_for

SLICE = str(Path(__file__).parent / "data" / "shakespeare")
REPO = Path(__file__).resolve().parent.parent
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: threads only fight over a busy machine's cores
MODEL = {"depth": 1, "context": 32, "batch": 4, "head_dim": 8, "base_width": 16, "eval_batches": 2, "data": SLICE}


def _server_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) + [f"/usr/local/pgsql/bin/{name}"]
    return next((c for c in reversed(candidates) if os.access(c, os.X_OK)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """postgresql:// URL of a fresh database on a throwaway server: initdb into a temporary folder, pg_ctl start on a
    free localhost port, stopped and deleted afterwards. PostgreSQL refuses to run as root, so under root the server
    runs as the `postgres` OS user (runuser), in a folder it owns. Its superuser `postgres` connects without a
    password (trust); `password_role` adds a role that must give one."""
    initdb, pg_ctl = _server_binary("initdb"), _server_binary("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql")
    as_user = []
    root = Path(tempfile.mkdtemp(prefix="lrm_mup_pg-"))
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            pytest.skip("running as root, and there is no 'postgres' OS user to run the server as")
        if not shutil.which("runuser"):
            shutil.rmtree(root)
            pytest.skip("running as root, and there is no runuser to start the server as 'postgres'")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, log, port = root / "data", root / "server.log", _free_port()

    def run(*cmd):
        proc = subprocess.run(as_user + list(cmd), capture_output=True, text=True, timeout=DEADLINE,
                              check=False)  # a last resort
        if proc.returncode != 0:
            tail = (log.read_text()[-2000:] if log.exists() else "") + proc.stdout[-1000:] + proc.stderr[-1000:]
            raise RuntimeError(f"{' '.join(cmd[:2])} failed ({proc.returncode}): {tail}")

    started = False
    try:
        run(initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60"
        run(pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "600", "start")
        started = True
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE sweeps")
        conn.close()
        yield f"postgresql://postgres@127.0.0.1:{port}/sweeps"
    finally:
        if started:
            run(pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def spec_dict(name: str, steps: int, log2_lrs: list, grace: int = 3) -> dict:
    """`grace`: seconds without a heartbeat before a RUNNING trial counts as dead. The kill test keeps it short (its
    retry waits that long); where nothing is killed it is generous, so that a worker starved of CPU on a busy
    machine is never taken for a dead one."""
    return {"name": name, "recipes": ["mup"], "widths": [16], "seeds": [0, 1] if steps < 100 else [0], "steps": steps,
            "model": dict(MODEL), "search": {"log2_lr": log2_lrs}, "sampler": {"type": "grid"},
            "trial": {"report_every": 5}, "heartbeat": {"interval": 1, "grace": grace, "max_retry": 2}}


def write(tmp_path: Path, d: dict) -> Path:
    def value(v):
        return "[" + ", ".join(value(x) for x in v) + "]" if isinstance(v, list) else json.dumps(v)

    lines = [f"{k} = {value(v)}" for k, v in d.items() if not isinstance(v, dict)]
    for k, v in d.items():
        if isinstance(v, dict):
            lines += [f"[{k}]"] + [f"{kk} = {value(vv)}" for kk, vv in v.items()]
    path = tmp_path / f"{d['name']}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def rdb(url: str) -> str:
    """The URL for optuna's own RDBStorage: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, absent here
    (the sweep code maps it to psycopg2 itself)."""
    return url.replace("postgresql://", "postgresql+psycopg2://", 1)


def point(t):
    return t.params["width"], t.params["seed"], float(t.params["log2_lr"])


class AdvisoryGate:
    """The PostgreSQL sweep's claim lock (an advisory lock keyed by the sweep's name), held by the test on its own
    connection: `queued()` counts the sessions waiting for it."""

    def __init__(self, url: str, name: str):
        self.url, self.key, self.conn = url, f"lrm_mup:{name}", None  # the key of sweep._storage._ClaimLock

    def close(self):
        self.conn = psycopg2.connect(self.url)
        self.conn.autocommit = True
        self.conn.cursor().execute("SELECT pg_advisory_lock(hashtext(%s))", (self.key,))

    def queued(self, pids) -> int:  # the workers' server sessions, whose pids are not theirs: count every waiter
        cur = self.conn.cursor()
        cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
        return cur.fetchone()[0]

    def open(self):
        self.conn.cursor().execute("SELECT pg_advisory_unlock(hashtext(%s))", (self.key,))
        self.conn.close()


def test_two_workers_share_one_study_over_postgres(postgres, tmp_path, spawns):
    d = spec_dict("pg-share", 10, [-9, -8, -7, -6, 14], grace=120)
    spec = parse_sweep(d)
    spawns.gate(AdvisoryGate(postgres, spec.name), 2)  # no trial is claimed before both workers wait for one
    run_sweep(spec, tmp_path / "out", storage=postgres, workers=2, progress=False)
    spawns.join()
    assert spawns.all_queued and len(spawns.procs) == 2
    trials = optuna.load_study(study_name="pg-share/mup", storage=rdb(postgres)).get_trials()
    assert all(t.state == TrialState.COMPLETE for t in trials)
    expected = set(product([16], [0, 1], [-9.0, -8.0, -7.0, -6.0, 14.0]))
    assert sorted(map(point, trials)) == sorted(expected)  # every grid point exactly once
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both processes took trials
    assert {int(t.user_attrs["worker"].rsplit(":", 1)[1]) for t in trials} == {p.pid for p in spawns.procs}
    rows = records(postgres, spec)
    assert len(rows) == 10 and {r.status for r in rows} == {"ok", "diverged"}
    assert all(r.tokens > 0 and r.flops > 0 and r.seconds > 0 for r in rows)
    assert len(records(tmp_path / "out", spec)) == 10  # the folder's manifest names the (password-free) URL


def test_a_worker_killed_mid_trial_is_retried_by_the_other(postgres, tmp_path):
    d = spec_dict("pg-kill", 250, [-9, -8, -7, -6])
    path = write(tmp_path, d)
    storage = optuna.storages.RDBStorage(rdb(postgres))

    def start(name):
        return subprocess.Popen([sys.executable, "-m", "lrm_mup.cli", "sweep", str(path), "--storage", postgres,
                                 "--out", str(tmp_path / name), "--quiet"], cwd=REPO, env=ONE_THREAD,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def trials():
        try:
            return optuna.load_study(study_name="pg-kill/mup", storage=storage).get_trials()
        except KeyError:  # not created yet
            return []

    a, b = start("a"), start("b")  # two "machines": separate processes and folders, one study
    by_pid = {a.pid: a, b.pid: b}

    def owner(t):
        return by_pid.get(int(t.user_attrs.get("worker", ":0").rsplit(":", 1)[1]))

    def victim_now():
        """A trial that a worker is mid-way through training, once another trial has completed (so that completed
        trials exist to survive the kill); whichever of the two workers runs it is the victim."""
        now = trials()
        if not any(t.state == TrialState.COMPLETE for t in now):
            return None
        return next((t for t in now if owner(t) is not None and mid_trial(t, d["steps"])), None)

    def stopped_mid_trial():  # its worker is SIGSTOPped, then the trial is checked again: still mid-trial
        t = victim_now()
        if t is None or not stop_if(owner(t).pid, lambda: mid_trial(trials()[t.number], d["steps"])):
            return None
        return t

    try:
        victim = wait_for(stopped_mid_trial, "a worker mid-way through a trial after the first one completed",
                          procs=[a, b])
        killed = owner(victim)
        survivor = b if killed is a else a
        os.kill(killed.pid, signal.SIGKILL)  # mid-trial: its heartbeat stops, its trial stays RUNNING
        killed.wait()
        complete_before = {t.number: point(t) for t in trials() if t.state == TrialState.COMPLETE}
        try:
            code = survivor.wait(timeout=DEADLINE)  # a last resort: it exits once every trial is done
        except subprocess.TimeoutExpired:
            pytest.fail(f"the surviving worker did not finish within {DEADLINE:.0f} s")
        assert code == 0, survivor.stderr.read().decode()[-2000:]
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
                p.wait()

    final = trials()
    dead = final[victim.number]
    assert dead.state == TrialState.FAIL  # failed by the heartbeat check, not by its (dead) worker
    retries = [t for t in final if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == victim.params  # the same params
    assert retries[0].user_attrs["worker"].endswith(f":{survivor.pid}")  # run by the surviving worker
    complete = [t for t in final if t.state == TrialState.COMPLETE]
    assert sorted(map(point, complete)) == sorted(product([16], [0], [-9.0, -8.0, -7.0, -6.0]))  # each point once
    assert {n: point(final[n]) for n in complete_before} == complete_before  # no COMPLETE trial lost
    assert all(final[n].state == TrialState.COMPLETE for n in complete_before)


# ----------------------------------------------------------------------------------------------------------
# a password in the storage URL: sweep -> transfer -> report, and it is printed and written nowhere

PASSWORD = "Pw@sw33p-T0ken"  # an @ in it: the userinfo ends at the last @ before the host


def password_role(postgres: str, role: str, password: str, database: str) -> str:
    """A role that must give `password` over TCP (scram-sha-256 for it in pg_hba.conf, first match, reloaded), owning
    a database of its own; returns its URL with the password. Waits until the server refuses a wrong password: then
    the password is what lets the sweep in."""
    conn = psycopg2.connect(postgres.replace("/sweeps", "/postgres"))
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute(f"CREATE ROLE {role} LOGIN PASSWORD %s", (password,))
    cur.execute(f"CREATE DATABASE {database} OWNER {role}")
    cur.execute("SHOW hba_file")
    hba = Path(cur.fetchone()[0])
    hba.write_text(f"host {database} {role} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    cur.execute("SELECT pg_reload_conf()")
    conn.close()
    host_port = postgres.split("@", 1)[1].split("/", 1)[0]

    def refused():
        try:
            psycopg2.connect(f"postgresql://{role}:wrong@{host_port}/{database}").close()
        except psycopg2.OperationalError as e:
            return "password authentication failed" in str(e)
        return False

    wait_for(refused, "the server to ask for a password")
    psycopg2.connect(host=host_port.split(":")[0], port=int(host_port.split(":")[1]), user=role, password=password,
                     dbname=database).close()
    return f"postgresql://{role}:{password}@{host_port}/{database}"


def test_a_password_in_the_storage_url_appears_in_no_output_and_no_file(postgres, tmp_path, capfd, monkeypatch):
    url = password_role(postgres, "lrm_secret", PASSWORD, "secretdb")
    host_port = url.rsplit("@", 1)[1].split("/", 1)[0]
    masked = f"postgresql://lrm_secret:***@{host_port}/secretdb"
    path = write(tmp_path, spec_dict("pg-secret", 6, [-8, -6], grace=120))
    sweep_dir, transfer_dir, report_dir = tmp_path / "sweep", tmp_path / "transfer", tmp_path / "report"
    outputs = []

    def cli(*args, storage_env=None, code=0):
        env = {k: v for k, v in ONE_THREAD.items() if k != "LRM_MUP_STORAGE"}
        env.update({"LRM_MUP_STORAGE": storage_env} if storage_env else {})
        proc = subprocess.run([sys.executable, "-m", "lrm_mup.cli", *map(str, args)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=DEADLINE, check=False)  # a last resort
        outputs.append(proc.stdout + proc.stderr)
        assert proc.returncode == code, proc.stdout[-2000:] + proc.stderr[-2000:]
        return proc

    # the password on the command line, in the environment, and with --storage again
    done = cli("sweep", path, "--out", sweep_dir, "--storage", url)
    assert f"storage {masked}" in done.stdout
    assert json.loads((sweep_dir / "sweep.json").read_text())["storage"] == masked
    cli("transfer", sweep_dir, "--out", transfer_dir, "--widths", "32", "--lr-offsets=1", storage_env=url)
    assert (transfer_dir / "transfer.json").exists()
    cli("report", sweep_dir, transfer_dir, "--out", report_dir, "--storage", url)
    assert (report_dir / "index.html").exists()

    # what a user is told instead (one line each, no password of any spelling, nothing written), in this process
    monkeypatch.delenv("LRM_MUP_STORAGE", raising=False)
    other_db = postgres.replace("/sweeps", "/postgres")
    for args, env, message in [
        ((), None, "pass its URL with --storage URL or in the environment variable LRM_MUP_STORAGE"),
        (("--storage", url.replace(PASSWORD, "WRONG-pass-1")), None, "password authentication failed"),
        (("--storage", f"postgresql://lrm_secret@{host_port}/secretdb?password={PASSWORD}"), None, "not postgresql"),
        (("--storage", f"postgresql://:{PASSWORD}@{host_port}/secretdb"), None, f"was swept into {masked}"),
        ((), other_db, f"was swept into {masked}, not {other_db}"),
    ]:
        for command in (["report", sweep_dir, "--out", tmp_path / "r2"],
                        ["transfer", sweep_dir, "--out", tmp_path / "t2", "--widths", "32"]):
            with monkeypatch.context() as m:
                if env:
                    m.setenv("LRM_MUP_STORAGE", env)
                assert main([str(a) for a in (*command, *args)]) == 2
            printed = capfd.readouterr()
            outputs.append(printed.out + printed.err)
            err = printed.err.strip()
            assert message in err and "\n" not in err and "Traceback" not in err, err
            assert not (tmp_path / "r2").exists() and not (tmp_path / "t2").exists()

    spellings = {PASSWORD, PASSWORD.replace("@", "%40"), "WRONG-pass-1"}
    for text in outputs:
        assert not any(s in text for s in spellings), text[-2000:]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 10 and any(p.suffix == ".pt" for p in files)  # runs, checkpoints, records, the report
    for p in files:
        data = p.read_bytes()
        assert not any(s.encode() in data for s in spellings), p
