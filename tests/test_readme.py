"""The README is the contract: every command in its ```bash blocks runs as written. Each command is in the table
below with how it is checked — run as written (plus flags appended that shrink it to quick settings: argparse keeps
the last value of a flag, so the README's own flags stay on the command line), its `--help` where a run takes long,
or the chain `sweep` -> `transfer` -> `report` run as written on a shrunk copy of the sweep file — and a command the
table does not know fails the test, so the README cannot gain an unchecked command."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from lrm_mup import __version__

REPO = Path(__file__).resolve().parent.parent
SLICE = str(REPO / "tests" / "data" / "shakespeare")
TINY_TRAIN = ["--width", "32", "--base-width", "16", "--head-dim", "8", "--steps", "3", "--batch", "2", "--context",
              "16", "--eval-batches", "1", "--data", SLICE, "--quiet"]
TINY_COORD = ["--recipes", "sp,mup", "--widths", "32,64", "--base-width", "32", "--delta-width", "64", "--steps", "2",
              "--seeds", "1", "--context", "16", "--data", SLICE, "--out", "cc", "--quiet"]

# command (comment stripped) -> (how it is checked, flags appended / why not run, what its output must contain)
COMMANDS = {
    'pip install torch==2.13.0 && pip install --no-deps mup==1.0.0 && pip install -e ".[test,postgres,hf]"':
        ("ci", ".ci/run runs the Install section's first bash block in a fresh venv", None),
    "python -m pytest -q": ("ci", ".ci/run runs the Test section's first bash block", None),
    'pip install -e ".[png]" && apt-get install -y chromium':
        ("install", "optional: installs kaleido and Debian's chromium (the PNG export)", None),
    "pip install optuna-dashboard": ("install", "optional: optuna-dashboard is not a dependency", None),
    "optuna-dashboard runs/lr-transfer/optuna.journal": ("chain-file", "runs/lr-transfer/optuna.journal", None),
    "lrm-mup --version": ("run", [], f"lrm-mup {__version__}"),
    "lrm-mup --help": ("run", [], "coord-check"),
    "lrm-mup demo": ("help", "the full demo takes about 15 minutes; its --quick twin runs below", "--quick"),
    "lrm-mup demo --quick": ("run", ["--data", SLICE, "--out", "demo"], "verdict: Winner at width"),
    "lrm-mup data": ("run", ["--data", SLICE], "distinct characters"),
    "lrm-mup train --recipe lrm --width 128 --steps 200": ("run", TINY_TRAIN + ["--out", "train"], "bits/byte"),
    "lrm-mup train --model hf:llama --recipe lrm --width 128 --steps 200":
        ("run", TINY_TRAIN + ["--out", "train"], "bits/byte"),
    "lrm-mup coord-check --model hf:llama --widths 64,128,256": ("run", TINY_COORD, "NO VERDICT: too little data"),
    "lrm-mup describe --model-config my_llama.json --width 1024 --recipe mup":
        ("help", "needs the user's config file; tests/test_hf_loop.py runs describe --model-config", "--model-config"),
    "lrm-mup describe --recipe lrm --width 512": ("run", [], "lr-only's units, so one --clip acts alike"),
    "lrm-mup train --model hybrid --recipe lrm --width 128 --steps 200 --out runs/hybrid":
        ("run", TINY_TRAIN + ["--width", "64", "--base-width", "32", "--out", "hybrid"], "bits/byte"),
    "lrm-mup describe --model hybrid --recipe lrm --placement symmetry-free": ("run", [], "ssm_dt"),
    "lrm-mup coord-check --recipes sp,lr-only,mup,lrm --widths 64,128,256,512 --steps 10 --seeds 3 --lr 1e-2":
        ("run", TINY_COORD, "NO VERDICT: too little data to judge"),
    "lrm-mup train --recipe lrm --depth 8 --base-depth 2 --depth-rule complete":
        ("run", TINY_TRAIN + ["--out", "train-depth"], "bits/byte"),
    "lrm-mup coord-check --depths 2,4,8 --width 32 --depth-rule complete --recipes mup,lrm":
        ("run", ["--steps", "2", "--seeds", "1", "--context", "16", "--data", SLICE, "--out", "ccd", "--quiet"],
         "depth rule complete"),
    "lrm-mup sweep sweeps/lr_transfer.toml --workers 2": ("chain", ["--workers", "1"], "sweep 'lr-transfer' done"),
    "lrm-mup transfer runs/lr-transfer --out runs/lr-transfer-target":
        ("chain", ["--widths", "64", "--lr-offsets=-1,1"], "runs/lr-transfer-target"),
    "lrm-mup report runs/lr-transfer runs/lr-transfer-target": ("chain", [], "reports/lr-transfer/index.html"),
    "lrm-mup equilibrium --abm --lr 0.01 --weight-decay 0.1": ("run", [], "predicted sqrt(lr/(2 wd)) = 0.2236"),
    "lrm-mup equilibrium --abm --optimizer muon --lr 0.005 --weight-decay 1":
        ("run", ["--shape", "16,16"], "predicted 0.54 sqrt(lr/wd) = 0.0382"),
    "lrm-mup equilibrium runs/w128":
        ("help", "needs a finished run; tests/test_equilibrium.py runs it on tiny mup and lrm runs", "--abm"),
    "lrm-mup sweep sweeps/equilibrium_s.toml --workers 2":
        ("help", "24 runs of 1,000 steps; tests/test_equilibrium.py checks the file's fixed ηλ", "--workers"),
    "lrm-mup ablation sweeps/tiers.toml --target 128 --seeds 0,1 --budgets 2 --budget-seeds 0":
        ("help", "about as long as the demo; tests/test_tiers.py runs the ablation at a tiny size", "--direct"),
    "torchrun --nproc_per_node 8 -m lrm_mup train --recipe lrm --width 2048 --batch 64 --out runs/w2048":
        ("help", "needs 8 GPUs; tests/test_torchrun.py runs torchrun with 2 CPU processes", "--parallel"),
    "torchrun --nproc_per_node 8 -m lrm_mup transfer runs/lr-transfer":
        ("help", "needs 8 GPUs and a finished sweep; tests/test_torchrun.py runs torchrun transfers", "--parallel"),
    "torchrun --nnodes 4 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m lrm_mup transfer "
    "runs/lr-transfer": ("help", "needs 4 machines", "--micro-batch"),
}


def readme_commands() -> list[str]:
    """Every command line of README.md's ```bash blocks, its trailing comment dropped."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    out = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M):
        for line in block.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command and not command.startswith("#"):
                out.append(command)
    return out


def lrm_mup(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`lrm-mup ARGV` (python -m lrm_mup: the console script's module) in `cwd`, importing this checkout."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "lrm_mup", *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          check=False, timeout=600)


def check(command: str, proc: subprocess.CompletedProcess, expected: str) -> subprocess.CompletedProcess:
    """The command succeeded and printed `expected`."""
    output = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, f"{command!r} exited with {proc.returncode}:\n{output}"
    assert expected in proc.stdout, f"{command!r}: {expected!r} not in its output:\n{proc.stdout[-3000:]}"
    return proc


def subcommand_argv(command: str) -> list[str]:
    """The lrm-mup arguments of a README command (`lrm-mup ...` or `torchrun ... -m lrm_mup ...`)."""
    words = shlex.split(command)
    if words[0] == "lrm-mup":
        return words[1:]
    assert words[0] == "torchrun" and "lrm_mup" in words, command
    return words[words.index("lrm_mup") + 1:]


def test_the_table_knows_every_readme_command_and_no_other():
    found = readme_commands()
    unknown = [c for c in found if c not in COMMANDS]
    assert not unknown, f"README commands with no check in tests/test_readme.py: {unknown}"
    stale = [c for c in COMMANDS if c not in found]
    assert not stale, f"tests/test_readme.py checks commands the README no longer has: {stale}"
    assert len(found) == len(set(found)), "a README command appears twice"


@pytest.mark.parametrize("command", [c for c, (how, _, _) in COMMANDS.items() if how in ("run", "help")])
def test_readme_command_runs_as_written(command, tmp_path):
    how, extra, expected = COMMANDS[command]
    argv = subcommand_argv(command)
    if how == "help":
        argv = [argv[0], "--help"]  # `extra` says why the command itself is not run here
    else:
        argv = argv + extra
    check(command, lrm_mup(argv, tmp_path), expected)


def test_the_sweep_transfer_report_chain_runs_as_written(tmp_path):
    """The README's sweep, transfer and report lines, as written and in order (one worker, one target width and two
    LR offsets appended), in a folder whose sweeps/lr_transfer.toml is the real file (its name, its search key)
    shrunk to tiny widths: each command finds the folder the previous one wrote, and the dashboard's journal is where
    the README says."""
    real = tomllib.loads((REPO / "sweeps" / "lr_transfer.toml").read_text(encoding="utf-8"))
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "lr_transfer.toml").write_text(f"""
name = "{real['name']}"
description = "{real['description']} (shrunk by tests/test_readme.py)"
recipes = ["sp", "mup"]
widths = [16, 32]
seeds = [0]
steps = 6

[model]
base_width = 16
depth = 1
head_dim = 8
context = 16
batch = 2
eval_batches = 1
data = "{SLICE}"

[search]
log2_lr = [-8, -6, -4]

[sampler]
type = "grid"
""")
    for command, (how, extra, expected) in COMMANDS.items():
        if how != "chain":
            continue
        proc = check(command, lrm_mup(subcommand_argv(command) + extra, tmp_path), expected)
        if command.startswith("lrm-mup report"):
            assert "verdict: Winner at width" in proc.stdout  # the verdict before the report's path
    for command, (how, path, _) in COMMANDS.items():
        if how == "chain-file":
            assert (tmp_path / path).is_file(), f"{command!r} names {path}, which the chain did not write"
    assert (tmp_path / "reports" / "lr-transfer" / "index.html").is_file()
