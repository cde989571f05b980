"""Mamba-2 on CPU, in one run: the chunked SSD scan vs the sequential scan, our mixer vs transformers' FalconH1Mixer
(its torch path) on the same config and weights, and the hybrid model's training step under sp / mup / lrm.

    python benchmarks/bench_ssm.py [--width 256] [--context 128] [--batch 8] [--threads 1] [--rounds 7]

- scan:   lrm_mup.models.ssd.ssd_chunked vs ssd_sequential on the mixer's shapes (heads = d_ssm / ssm_head_dim,
          state --state, chunk --chunk), forward and forward+backward, float32.
- mixer:  lrm_mup.models.hybrid.Mamba2Mixer vs transformers.models.falcon_h1.FalconH1Mixer built from a FalconH1Config
          of the same shape (no download), our weights copied into its fused in_proj (z, x, B, C, dt rows) and conv;
          checked to give the same output (float32, relative error printed) before timing. FalconH1Mixer in training
          mode without the CUDA kernels takes its torch path (mamba2_chunk_scan).
- hybrid: the hybrid model at --width, one AdamW training step (train_step of _bench.py: forward, backward, clip 1,
          step) under sp, mup and lrm (reparametrized path).
Timed steps are interleaved across the compared variants (order rotated each round); tokens/s = batch·context /
median time.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import torch
from _bench import train_step

import lrm_mup
from lrm_mup.models import hybrid
from lrm_mup.models.ssd import ssd_chunked, ssd_sequential


def falcon_mixer(ours, width: int, args):
    """transformers' FalconH1Mixer on our mixer's shape, with our weights (fused in_proj = z, x, B, C, dt rows)."""
    # transformers is optional for lrm_mup: imported here, where the comparison needs it
    from transformers import FalconH1Config
    from transformers.models.falcon_h1.modeling_falcon_h1 import FalconH1Mixer, compute_mup_vector

    cfg = FalconH1Config(hidden_size=width, mamba_d_ssm=ours.heads * ours.head_dim, mamba_n_heads=ours.heads,
                         mamba_d_head=ours.head_dim, mamba_d_state=ours.state, mamba_n_groups=1,
                         mamba_d_conv=args.conv, mamba_chunk_size=ours.chunk, mamba_rms_norm=False,
                         num_hidden_layers=1, num_attention_heads=max(1, width // 32), num_key_value_heads=max(1, width // 32),
                         vocab_size=256, intermediate_size=3 * width)
    mixer = FalconH1Mixer(cfg, layer_idx=0)
    mixer.register_buffer("mup_vector", compute_mup_vector(cfg), persistent=False)
    with torch.no_grad():
        mixer.in_proj.weight.copy_(torch.cat([ours.z_proj.weight, ours.x_proj.weight, ours.b_proj.weight,
                                              ours.c_proj.weight, ours.dt_proj.weight]))
        mixer.conv1d.weight.copy_(ours.conv1d.weight)
        mixer.conv1d.bias.copy_(ours.conv1d.bias)
        for name in ("dt_bias", "A_log", "D"):
            getattr(mixer, name).copy_(getattr(ours, name))
        mixer.out_proj.weight.copy_(ours.out_proj.weight)
    return mixer


def timed(fns: dict, warmup: int, rounds: int) -> dict[str, float]:
    """Median seconds per call of each function, interleaved rounds."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def forward_and_backward(fn, *leaves):
    def run():
        for t in leaves:
            t.grad = None
        out = fn()
        (out[0] if isinstance(out, tuple) else out).square().mean().backward()
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--ssm-head-dim", type=int, default=32)
    p.add_argument("--state", type=int, default=16)
    p.add_argument("--chunk", type=int, default=32)
    p.add_argument("--conv", type=int, default=4)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fields = dict(depth=args.depth, context=args.context, ssm_head_dim=args.ssm_head_dim, ssm_state=args.state,
                  ssm_chunk=args.chunk, ssm_conv=args.conv)
    model = hybrid(args.width, **fields)
    ours = model.blocks[0].ssm
    theirs = falcon_mixer(ours, args.width, args).train()
    B, T, tokens = args.batch, args.context, args.batch * args.context
    u = torch.randn(B, T, args.width)
    with torch.no_grad():
        a, b = ours(u), theirs(u)
    rel = ((a - b).norm() / b.norm()).item()
    print(f"# {datetime.date.today()}, torch {torch.__version__}, {platform.machine()} "
          f"{os.cpu_count()} CPUs, {args.threads} thread(s), float32, width {args.width}, batch {B}×{T}, "
          f"SSM heads {ours.heads}×{ours.head_dim}, state {ours.state}, chunk {ours.chunk}")
    print(f"our mixer vs FalconH1Mixer (same weights): relative difference {rel:.2e}")

    g = torch.Generator().manual_seed(1)
    h, pdim, n = ours.heads, ours.head_dim, ours.state
    x = torch.randn(B, T, h, pdim, generator=g, requires_grad=True)
    dt = (torch.rand(B, T, h, generator=g) * 0.1 + 1e-3).requires_grad_(True)
    A = (-torch.rand(h, generator=g) * 15 - 1).requires_grad_(True)
    Bm = torch.randn(B, T, 1, n, generator=g, requires_grad=True)
    Cm = torch.randn(B, T, 1, n, generator=g, requires_grad=True)
    chunked = lambda: ssd_chunked(x, dt, A, Bm, Cm, ours.chunk)  # noqa: E731
    sequential = lambda: ssd_sequential(x, dt, A, Bm, Cm)  # noqa: E731
    rows = []
    with torch.no_grad():
        fwd = timed({"chunked": chunked, "sequential": sequential}, args.warmup, args.rounds)
    both = timed({"chunked": forward_and_backward(chunked, x, dt, A, Bm, Cm),
                  "sequential": forward_and_backward(sequential, x, dt, A, Bm, Cm)}, args.warmup, args.rounds)
    for k in fwd:
        rows.append(("scan", k, tokens / fwd[k], tokens / both[k]))
    uu = u.clone().requires_grad_(True)
    with torch.no_grad():
        fwd = timed({"ours": lambda: ours(u), "FalconH1Mixer": lambda: theirs(u)}, args.warmup, args.rounds)
    both = timed({"ours": forward_and_backward(lambda: ours(uu), uu),
                  "FalconH1Mixer": forward_and_backward(lambda: theirs(uu), uu)}, args.warmup, args.rounds)
    for k in fwd:
        rows.append(("mixer", k, tokens / fwd[k], tokens / both[k]))
    print(f"{'what':8} {'variant':14} {'forward tok/s':>14} {'fwd+bwd tok/s':>14}")
    for what, k, f, fb in rows:
        print(f"{what:8} {k:14} {f:14.0f} {fb:14.0f}")

    idx = torch.randint(0, 256, (B, T + 1), generator=g)
    xs, ys = idx[:, :-1], idx[:, 1:]
    steps = {}
    for recipe in ("sp", "mup", "lrm"):
        torch.manual_seed(0)
        m = lrm_mup.parametrize(hybrid(args.width, **fields), hybrid(64, **fields), hybrid(128, **fields), recipe)
        opt = lrm_mup.build_optimizer(m, "adamw", lr=1e-3, weight_decay=0.1)
        steps[recipe] = train_step(m, opt, xs, ys, clip=1.0)
    sec = timed(steps, args.warmup, args.rounds)
    print(f"hybrid width {args.width} depth {args.depth}: training step (AdamW, clip 1)")
    for k, s in sec.items():
        print(f"  {k:4} {s * 1e3:8.1f} ms/step {tokens / s:8.0f} tok/s  ({s / sec['mup']:.3f}× mup)")


if __name__ == "__main__":
    main()
