"""Training throughput (tokens/s) of an HF Llama parametrized by lrm_mup (mup, lrm) vs the same HF Llama plain.

    python benchmarks/bench_hf.py [--width 256] [--depth 2] [--context 128] [--batch 8] [--rounds 15] [--threads 1]

A step is zero_grad + forward + backward + clipping + AdamW step on one fixed batch, float32, CPU, the loss the
cross-entropy of the logits (`lrm_mup.training.engine.lm_forward`, the engine's own) for all three:
- plain   `transformers.LlamaForCausalLM` from the `hf:llama` config at --width (`lrm_mup.build_model`), not
          parametrized; torch.optim.AdamW over its parameters, `lrm_mup.clip_grad_norm_` (on a plain model: every
          gradient, as torch's)
- mup/lrm the same model parametrized under the recipe (`lrm_mup.training.parametrized_model`, base --base),
          `lrm_mup.build_optimizer(model, "adamw")`, `lrm_mup.clip_grad_norm_`
Models are warmed up, then timed in interleaved rounds (order rotated each round): `_bench.time_interleaved` and
`_bench.print_ratio_table` (the same as bench_model.py's).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform

import torch
import transformers
from _bench import add_common_args, print_ratio_table, time_interleaved, train_step

import lrm_mup
from lrm_mup.models import build_model
from lrm_mup.training import TrainConfig, parametrized_model
from lrm_mup.training.engine import lm_forward


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=256)
    add_common_args(p, batch=8, threads=1)
    p.add_argument("--base", type=int, default=64, help="base width for parametrize (delta = 2 × base)")
    p.add_argument("--lr", type=float, default=1e-3)
    return p.parse_args(argv)


def steppers(args) -> dict:
    fields = dict(depth=args.depth, context=args.context)
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (args.batch, args.context + 1), generator=gen)
    x, y = data[:, :-1], data[:, 1:]

    def ours(recipe):
        model = parametrized_model(TrainConfig(model="hf:llama", recipe=recipe, width=args.width, base_width=args.base,
                                               **fields))
        opt = lrm_mup.build_optimizer(model, "adamw", lr=args.lr, weight_decay=0.1)
        return train_step(model, opt, x, y, clip=1.0, forward=lm_forward(model))

    torch.manual_seed(0)
    plain = build_model("hf:llama", args.width, head_dim=32, **fields)
    return {"plain": train_step(plain, torch.optim.AdamW(plain.parameters(), lr=args.lr, weight_decay=0.1), x, y,
                                clip=1.0, forward=lm_forward(plain)),
            "mup": ours("mup"), "lrm": ours("lrm")}


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# bench_hf  {datetime.date.today()}  torch {torch.__version__}  transformers {transformers.__version__}  "
          f"{platform.processor() or platform.machine()}  cpus={os.cpu_count()} threads={torch.get_num_threads()}"
          f"  loadavg(before)={os.getloadavg()[0]:.2f}")
    print(f"# hf:llama width {args.width} (head dim 32, MLP 3x), depth {args.depth}, context {args.context}, batch "
          f"{args.batch}, float32, fwd+bwd+AdamW, warmup {args.warmup}, {args.rounds} interleaved rounds")
    times = time_interleaved(steppers(args), args.warmup, args.rounds)
    print_ratio_table(times, args.batch * args.context)
    print(f"\n# loadavg(after)={os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
