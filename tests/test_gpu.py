"""The CUDA path: bf16 autocast and torch.compile (on by default on CUDA), checkpoints that load on the CPU, and
NCCL data parallelism. Skipped without a GPU (none has been lent to this project so far); run on a GPU machine with
`python -m pytest -q tests/test_gpu.py`.

bf16 and compiled kernels are not bit-reproducible against float32 on the CPU, so these tests compare with
tolerances in bits per byte, not bitwise.
"""
import json

import pytest
import torch

from lrm_mup.training import TrainConfig, train
from tests.test_torchrun import SLICE, flags, rows, torchrun

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

GPU = dict(recipe="lrm", width=128, base_width=64, depth=2, head_dim=32, context=64, batch=16, steps=40,
           eval_every=20, eval_batches=4, lr=1e-2, data=SLICE)
BPB = 0.05  # bf16 autocast against float32: validation within this many bits per byte


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cpu") / "run"
    return out, train(TrainConfig(**GPU, device="cpu"), out, progress=False)


def test_cuda_bf16_compiled_run_learns_like_float32_on_the_cpu(tmp_path, cpu_run):
    _, cpu = cpu_run
    cuda = train(TrainConfig(**GPU, device="cuda"), tmp_path / "run", progress=False)  # compile: on by default
    assert cuda.status == "ok"
    losses = [r["loss"] for r in rows(tmp_path / "run") if "loss" in r]
    assert losses[-1] < losses[0] - 1.0
    assert cuda.val_bpb == pytest.approx(cpu.val_bpb, abs=BPB)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)  # whole float32 tensors, on the CPU
    assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in state["model"].values())


def test_cuda_run_resumes_on_the_cpu(tmp_path, cpu_run):
    _, cpu = cpu_run
    assert train(TrainConfig(**GPU, device="cuda"), tmp_path / "run", until=20, progress=False).status == "stopped"
    resumed = train(TrainConfig(**GPU, device="cpu"), tmp_path / "run", resume=True, progress=False)
    assert resumed.status == "ok" and resumed.step == GPU["steps"]
    assert resumed.val_bpb == pytest.approx(cpu.val_bpb, abs=BPB)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_nccl_data_parallel_run_matches_one_gpu(tmp_path, parallel):
    one = train(TrainConfig(**GPU, device="cuda"), tmp_path / "one", progress=False)
    done = torchrun("train", *flags({**GPU, "device": "cuda", "parallel": parallel}), "--quiet", "--out", "two",
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    two = [r for r in rows(tmp_path / "two") if "status" in r][-1]
    assert two["status"] == "ok" and two["val_bpb"] == pytest.approx(one.val_bpb, abs=BPB)
    assert json.loads((tmp_path / "two" / "config.json").read_text())["parallel"] == parallel
