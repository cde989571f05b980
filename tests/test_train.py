"""`lrm-mup train` end to end on the committed slice of the real corpus: files, resume, divergence, bad input."""
import json
import subprocess
import sys

import pytest
import torch

from lrm_mup.cli import main
from lrm_mup.errors import ConfigError
from lrm_mup.training import TrainConfig, train

SLICE = "tests/data/shakespeare"
TINY = dict(width=32, base_width=16, depth=1, head_dim=8, context=32, batch=4, eval_every=5, eval_batches=2,
            data=SLICE)


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_cli_train_writes_a_complete_run_and_learns(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--recipe", "lrm", "--width", "32", "--base-width", "16", "--depth", "1", "--head-dim",
                 "8", "--context", "32", "--batch", "8", "--steps", "40", "--lr", "1e-2", "--data", SLICE,
                 "--eval-every", "20", "--quiet", "--out", str(out)])
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"config.json", "metrics.jsonl", "checkpoint.pt", "base_shapes.json"}
    assert "ok: step 40" in capsys.readouterr().out
    metrics = rows(out)
    train_rows = [r for r in metrics if "loss" in r]
    assert len(train_rows) == 40 and metrics[-1]["status"] == "ok"
    assert train_rows[-1]["loss"] < train_rows[0]["loss"] - 1.5  # it learns
    assert metrics[-1]["val_bpb"] < 5.0  # well under the 8 bits of a uniform byte model
    assert train_rows[-1]["flops"] > 0 and train_rows[-1]["tokens"] == 40 * 8 * 32
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 40 and "blocks.0.attn.q.mult_row" in state["model"]
    assert json.loads((out / "config.json").read_text())["recipe"] == "lrm"


@pytest.mark.parametrize("schedule, optimizer", [("cosine", "adamw"), ("wsd", "adamw"), ("cosine", "muon")])
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, schedule, optimizer):
    cfg = TrainConfig(recipe="lrm", steps=12, schedule=schedule, warmup=2, optimizer=optimizer, **TINY)
    straight = train(cfg, tmp_path / "a", progress=False)
    first = train(cfg, tmp_path / "b", until=7, progress=False)
    assert first.status == "stopped" and first.step == 7
    resumed = train(cfg, tmp_path / "b", resume=True, progress=False)
    assert resumed.status == "ok" and resumed.train_loss == straight.train_loss
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("tokens_per_s", "seconds")} for r in rs]  # noqa
    assert strip(rows(tmp_path / "a")) == strip(rows(tmp_path / "b"))


def test_effective_path_trains_like_autograd(tmp_path):
    base = dict(recipe="lrm", steps=5, **TINY)
    a = train(TrainConfig(**base), progress=False)
    b = train(TrainConfig(path="effective", **base), progress=False)
    assert b.train_loss == pytest.approx(a.train_loss, rel=1e-4)


@pytest.mark.parametrize("path", ["autograd", "effective"])
def test_micro_batches_accumulate_to_the_full_batch_step(tmp_path, path):
    """Gradient accumulation is a memory knob, not a hyperparameter: 4 micro-batches of 1 sequence take the same steps
    as one batch of 4 (up to float summation order)."""
    base = dict(recipe="lrm", steps=6, lr=1e-2, path=path, **TINY)
    whole = train(TrainConfig(**base), tmp_path / "whole", progress=False)
    micro = train(TrainConfig(micro_batch=1, **base), tmp_path / "micro", progress=False)
    assert micro.val_bpb == pytest.approx(whole.val_bpb, rel=1e-5)
    *micro_steps, micro_final = rows(tmp_path / "micro")
    *whole_steps, whole_final = rows(tmp_path / "whole")
    assert len(micro_steps) == len(whole_steps) == 6
    for a, b in zip(micro_steps, whole_steps):
        assert a["step"] == b["step"] and a.keys() == b.keys()
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    assert micro_final["status"] == whole_final["status"] == "ok"
    assert micro_final["train_loss"] == pytest.approx(whole_final["train_loss"], rel=1e-5)
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True)["model"] for d in ("micro", "whole"))
    for name in b:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)


def test_divergence_stops_with_a_status_not_a_traceback(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--recipe", "sp", "--lr", "1e4", "--clip", "0", "--steps", "30", "--quiet", "--out", str(out)]
    for key, value in TINY.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    assert main(args) == 1
    final = rows(out)[-1]
    assert final["status"] == "diverged" and final["step"] < 30
    assert not (out / "checkpoint.pt").exists()
    assert "diverged: step" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["--width", "30"], "GPTConfig.head_dim=8 is invalid: must divide width=30"),
    (["--recipe", "xl"], "argument --recipe: invalid choice: 'xl'"),
    (["--lr", "-1"], "lr=-1.0 is invalid: must be a finite number >= 0"),
    (["--placement", "scalar", "--recipe", "mup"], "placement applies to recipe 'lrm' only"),
    (["--alpha", "readout=-2"], "alpha for 'readout' is -2.0"),
    (["--batch", "4", "--micro-batch", "3"], "micro_batch=3 is invalid: must be a positive integer dividing batch=4"),
    (["--parallel", "fsdp", "--path", "effective"], "path='effective' is invalid: the effective path's merged"),
    (["--parallel", "fsdp", "--optimizer", "muon"], "optimizer='muon' is invalid: Muon's Newton-Schulz needs whole"),
    (["--data", "no/such/corpus"], "no/such/corpus"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--steps", "0"], "is invalid"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "run"
    base = ["-m", "lrm_mup.cli", "train", "--width", "32", "--base-width", "16", "--head-dim", "8",
            "--data", SLICE, "--steps", "2", "--quiet", "--out", str(out)]
    proc = subprocess.run([sys.executable, *base, *args], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_resume_takes_only_execution_settings_from_the_command_line(tmp_path, capsys):
    out = str(tmp_path / "run")
    args = ["train", "--quiet", "--out", out]
    for key, value in {**TINY, "steps": 4}.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    assert main([*args, "--stop-after", "2"]) == 0
    assert main(["train", "--resume", "--out", out, "--lr", "1e-2"]) == 2
    assert ("--lr cannot change when resuming (the run's settings are in " + out + "/config.json); only "
            "--micro-batch, --device, --compile, --parallel can") in capsys.readouterr().err
    assert main(["train", "--resume", "--quiet", "--out", out, "--micro-batch", "2", "--device", "cpu"]) == 0
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4 and state["config"]["micro_batch"] == 2
    with pytest.raises(ConfigError, match=r"differs from the checkpoint's in lr; resume with the same config \(only "
                                          r"micro_batch, device, compile, parallel may change\)"):
        train(TrainConfig(**{**TINY, "steps": 4, "lr": 1.0}), tmp_path / "run", resume=True, progress=False)


def test_refuses_to_overwrite_a_run_and_resume_needs_a_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["train", "--data", SLICE, "--quiet", "--out", str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert main(["train", "--resume", "--quiet", "--out", str(tmp_path / "none")]) == 2


def test_describe_prints_the_role_table(capsys):
    assert main(["describe", "--recipe", "lrm", "--width", "256", "--base-width", "64"]) == 0
    out = capsys.readouterr().out
    assert "blocks.0.attn.q" in out and "query" in out and "row,col" in out and "0.25" in out


def strict(run_dir):
    """metrics.jsonl through a strict JSON reader (NaN / Infinity refused)."""
    def refuse(token):
        raise ValueError(f"non-finite {token}")
    return [json.loads(line, parse_constant=refuse) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_diverged_run_writes_strict_json_and_its_status_row_says_why(tmp_path):
    cfg = TrainConfig(recipe="sp", lr=1e4, clip=0.0, steps=30, **TINY)
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.status == "diverged"
    *steps, final = strict(tmp_path / "run")
    assert steps[-1]["loss"] is None and final["train_loss"] is None
    assert final["status"] == "diverged" and f"at step {final['step']} is" in final["reason"]


def test_a_stopped_run_reports_the_validation_at_its_stop_step(tmp_path):
    """eval_every only says when validation is logged, not how training goes: the stop step's value equals the
    value an evaluating-every-step run logs at that step."""
    stopped = train(TrainConfig(**{**TINY, "steps": 8, "eval_every": 2}), tmp_path / "a", until=3, progress=False)
    assert train(TrainConfig(**{**TINY, "steps": 8, "eval_every": 1}), tmp_path / "b", until=3,
                 progress=False).status == stopped.status == "stopped"
    at = {r["step"]: r["val_bpb"] for r in rows(tmp_path / "b") if "val_bpb" in r and "status" not in r}
    assert stopped.step == 3 and stopped.val_bpb == at[3] != at[2]


@pytest.mark.parametrize("until", [0, -1, 9, 2.5])
def test_a_stop_step_outside_the_run_is_refused_before_anything_is_written(tmp_path, until):
    with pytest.raises(ConfigError, match=r"stop step \(--stop-after\) .* is invalid: it must be an integer from 1"):
        train(TrainConfig(**{**TINY, "steps": 8}), tmp_path / "run", until=until, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_heads_can_be_given_instead_of_the_default_head_dim(tmp_path, capsys):
    args = ["--width", "32", "--base-width", "16", "--depth", "1", "--heads", "2", "--context", "32", "--batch", "4",
            "--steps", "2", "--data", SLICE, "--quiet"]
    assert main(["train", *args, "--out", str(tmp_path / "run")]) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["heads"] == 2 and saved["head_dim"] is None
    assert TrainConfig().head_dim == 32 and TrainConfig(heads=4).head_dim is None
    with pytest.raises(ConfigError, match="heads=4 and head_dim=32 are both set"):
        TrainConfig(heads=4, head_dim=32)
    assert main(["describe", "--width", "64", "--heads", "2"]) == 0
    assert "blocks.0.attn.q" in capsys.readouterr().out


def test_force_discards_an_unfinished_run_but_never_a_finished_one(tmp_path, capsys):
    out = str(tmp_path / "run")
    args = ["train", "--quiet", "--out", out]
    for key, value in {**TINY, "steps": 4}.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    assert main([*args, "--stop-after", "2"]) == 0
    assert main(args) == 2
    assert "holds an unfinished run with a checkpoint: pass --resume to continue it, --force to discard it" in \
        capsys.readouterr().err
    assert main([*args, "--force"]) == 0
    assert "--force: discarding the unfinished run" in capsys.readouterr().out
    assert [r["step"] for r in rows(tmp_path / "run") if "status" not in r] == [1, 2, 3, 4]
    assert [r["status"] for r in rows(tmp_path / "run") if "status" in r] == ["ok"]
    assert main([*args, "--force"]) == 2
    assert "holds a finished run (ok at step 4)" in capsys.readouterr().err
