"""`lrm-mup train` and `transfer` launched by real torchrun (2 CPU processes over gloo, DDP and FSDP), against
single-process runs.

A config means the same at every world size (`batch` is the global batch), so a torchrun run must equal the
single-process run up to float reduction order: losses, gradient norms, validation, final weights and multipliers.
"""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from lrm_mup.cli import main
from lrm_mup.training import TrainConfig, train
from lrm_mup.training.distributed import World
from lrm_mup.tuning.transfer import run_transfer

pytestmark = [
    pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed, gloo"),
    pytest.mark.usefixtures("one_thread"),
]

SLICE = os.path.abspath("tests/data/shakespeare")
TINY = dict(recipe="lrm", width=32, base_width=16, depth=1, head_dim=8, context=32, batch=4, steps=8, eval_every=4,
            eval_batches=3, lr=1e-2, data=SLICE, device="cpu", path="autograd")  # the reference: autograd
TOL = dict(rtol=1e-4, atol=1e-5)  # float32, 8 AdamW steps: only the reduction order differs


def flags(cfg: dict) -> list[str]:
    return [x for k, v in cfg.items() for x in (f"--{k.replace('_', '-')}", str(v))]


def torchrun(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "lrm_mup", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                          check=False)


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(actual, expected):
    """Two run folders: the same metrics (timing aside) and the same final checkpoint, up to TOL."""
    a, e = rows(actual), rows(expected)
    assert [sorted(r) for r in a] == [sorted(r) for r in e]
    for ra, re in zip(a, e):
        for key in ("loss", "grad_norm", "val_bpb", "train_loss"):
            if key in re:
                assert ra[key] == pytest.approx(re[key], rel=TOL["rtol"]), (ra["step"], key)
        assert {k: ra[k] for k in ("step", "tokens", "lr") if k in ra} == {k: re[k] for k in ("step", "tokens", "lr")
                                                                           if k in re}
    sa, se = (torch.load(d / "checkpoint.pt", weights_only=True) for d in (actual, expected))
    execution = {"parallel": "ddp", "micro_batch": None}  # how the step was computed, not what it computed
    assert sa["step"] == se["step"] and {**sa["config"], **execution} == {**se["config"], **execution}
    assert sa["model"].keys() == se["model"].keys()
    for name, tensor in se["model"].items():
        torch.testing.assert_close(sa["model"][name], tensor, **TOL, msg=name)
    torch.testing.assert_close(sa["data_rng"], se["data_rng"], rtol=0, atol=0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The single-process run on the full global batch."""
    out = tmp_path_factory.mktemp("single") / "run"
    result = train(TrainConfig(**TINY), out, progress=False)
    assert result.status == "ok"
    return out


def test_rows_split_a_batch_into_contiguous_near_equal_shards():
    assert [World(r, r, 2).rows(4) for r in range(2)] == [slice(0, 2), slice(2, 4)]
    assert [World(r, r, 3).rows(5) for r in range(3)] == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert [World(r, r, 2).rows(1) for r in range(2)] == [slice(0, 1), slice(1, 1)]


def test_train_under_torchrun_equals_one_process(tmp_path, reference):
    done = torchrun("train", *flags(TINY), "--quiet", "--out", "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("ok: step 8") == 1  # rank 0 alone prints
    assert_same_run(tmp_path / "run", reference)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["base_shapes.json", "checkpoint.pt",
                                                                      "config.json", "metrics.jsonl"]


def test_torchrun_checkpoint_resumes_in_one_process(tmp_path, reference):
    """Stopped at step 4 by 2 processes accumulating micro-batches of one sequence (DDP all-reduces after the last
    only), finished by one process on whole batches: data order and optimizer state carry over."""
    micro = {**TINY, "micro_batch": 1}
    done = torchrun("train", *flags(micro), "--quiet", "--stop-after", "4", "--out", "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert rows(tmp_path / "run")[-1]["status"] == "stopped"
    # micro_batch is an execution setting (how a step is computed, not what it is): it may change on resume
    assert train(TrainConfig(**TINY), tmp_path / "run", resume=True, progress=False).status == "ok"
    assert_same_run(tmp_path / "run", reference)


def test_fsdp_trains_like_one_process_and_checkpoints_whole_tensors(tmp_path, reference):
    """FSDP2 shards parameters, gradients and optimizer state; its checkpoint is gathered into the one format (whole
    tensors keyed by name) and loads back into the shards. Stopped at step 4 with micro-batches of one sequence
    (a reduce-scatter after each), resumed by FSDP on whole batches."""
    fsdp = {**TINY, "parallel": "fsdp"}
    done = torchrun("train", *flags(fsdp), "--micro-batch", "1", "--quiet", "--stop-after", "4", "--out", "run",
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    single = train(TrainConfig(**TINY), tmp_path / "single", until=4, progress=False)
    assert single.status == "stopped"
    sharded, whole = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True) for d in ("run", "single"))
    assert sharded["step"] == whole["step"] == 4
    for part in ("model", "optimizer"):
        flat_s, flat_w = flatten(sharded[part]), flatten(whole[part])
        assert flat_s.keys() == flat_w.keys()
        for key, value in flat_w.items():
            if isinstance(value, torch.Tensor):
                assert flat_s[key].shape == value.shape, key
                torch.testing.assert_close(flat_s[key], value, **TOL, msg=key)
            elif key[-1] not in ("micro_batch", "parallel"):
                assert flat_s[key] == value, key
    done = torchrun("train", "--resume", "--parallel", "fsdp", "--quiet", "--out", "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(tmp_path / "run", reference)


def flatten(tree, prefix=()):
    """{path tuple: leaf} of nested dicts and lists."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else None
    if items is None:
        return {prefix: tree}
    return {k: v for key, sub in items for k, v in flatten(sub, (*prefix, key)).items()}


def test_effective_path_under_torchrun_averages_its_mapped_gradients(tmp_path, reference):
    """The effective path cannot use DDP (its merged matrices are not parameters); train averages the gradients
    after `map_grads()` instead, and the run equals the single-process autograd run."""
    cfg = {**TINY, "path": "effective"}
    done = torchrun("train", *flags(cfg), "--quiet", "--out", "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    # the same run but for the config's path field
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    expected = torch.load(reference / "checkpoint.pt", weights_only=True)
    assert state["config"] == {**expected["config"], "path": "effective"}
    moved = 0
    for name, tensor in expected["model"].items():
        torch.testing.assert_close(state["model"][name], tensor, **TOL, msg=name)
        moved += "mult_" in name and not torch.allclose(tensor, torch.ones_like(tensor))
    assert moved >= 10  # the multipliers were trained, and alike on both ranks


@pytest.mark.parametrize("bad, message", [
    ({"batch": 3}, "batch=3 is invalid: the global batch must split evenly over the 2 processes"),
    ({"data": "missing.txt"}, "data path missing.txt does not exist"),  # raised by the rank that fetches the corpus
    ({"out": "taken"}, "run folder 'taken' is not empty"),              # raised by rank 0, which writes the folder
    ({"micro_batch": 4}, "micro_batch=4 is invalid: it must divide the 2 sequences each of the 2 processes gets"),
])
def test_bad_input_under_torchrun_is_said_once_and_writes_nothing(bad, message, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    out = bad.pop("out", "run")
    done = torchrun("train", *flags({**TINY, **bad}), "--quiet", "--out", out, cwd=tmp_path)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("lrm-mup train: error:")]
    assert len(errors) == 1 and message in errors[0], done.stderr[-3000:]  # once (rank 0), not once per rank
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]


def test_transfer_under_torchrun_equals_one_process(tmp_path):
    """Every run of the plan trained by both processes (here sharded by FSDP, in micro-batches of one sequence)."""
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"lrm": {**TINY, "width": 16, "steps": 6}, "mup": {**TINY, "recipe": "mup",
                                                                                   "width": 16, "steps": 6}}))
    args = dict(widths=[32], lr_offsets=[1])
    single = run_transfer(str(best), tmp_path / "single", **args, log=None)
    done = torchrun("transfer", str(best), "--out", "multi", "--widths", "32", "--lr-offsets=1", "--parallel", "fsdp",
                    "--micro-batch", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("[6/6]") == 1
    multi = json.loads((tmp_path / "multi" / "transfer.json").read_text())
    assert [r["name"] for r in multi["runs"]] == [r.name for r in single.runs] and len(single.runs) == 6
    for rm, rs in zip(multi["runs"], single.runs):
        assert rm["val_bpb"] == pytest.approx(rs.val_bpb, rel=TOL["rtol"]), rs.name
    for run in single.runs:
        assert_same_run(tmp_path / "multi" / "runs" / run.name, tmp_path / "single" / "runs" / run.name)


@pytest.mark.parametrize("command", [["sweep", "sweeps/demo.toml"], ["coord-check"], ["demo", "--quick"]])
def test_commands_that_are_not_data_parallel_refuse_torchrun(command, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.chdir(tmp_path)
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err == (f"lrm-mup {command[0]}: error: {command[0]!r} does not run under torchrun (WORLD_SIZE=2); "
                   "only train and transfer do: run it as one process\n")
    assert list(tmp_path.iterdir()) == []
