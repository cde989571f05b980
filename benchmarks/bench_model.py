"""Training throughput (tokens/s) of lrm_mup.model.GPT under each recipe vs the same architecture written plainly.

    python benchmarks/bench_model.py [--width 256] [--depth 2] [--context 128] [--batch 8] [--rounds 15]

A step is zero_grad + forward + backward + AdamW step on one fixed batch, float32, CPU:
- plain      `PlainGPT` below: pre-norm GPT (RMSNorm, SwiGLU, rotary, SDPA), no multipliers, no probes, no checks;
             torch.optim.AdamW over its parameters
- gpt        lrm_mup.model.GPT, not parametrized, torch.optim.AdamW (the model definition's own cost)
- sp/mup/lrm lrm_mup.model.GPT parametrized under the recipe (lrm: the reparametrized autograd path),
             lrm_mup.build_optimizer(model, "adamw")
Before timing, PlainGPT is checked to compute the same logits as lrm_mup.model.GPT with the weights copied over.
Models are warmed up, then timed in interleaved rounds (order rotated each round); tokens/s = batch·context / median
step time (and batch·context / fastest step), and each ratio ours/plain is the median over rounds of the per-round
ratio of tokens/s (and the ratio of the best tokens/s: the least disturbed steps, for a shared machine).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform

import torch
import torch.nn.functional as F
from _bench import add_common_args, print_ratio_table, time_interleaved, train_step
from torch import nn

import lrm_mup
from lrm_mup.models import GPT, GPTConfig
from lrm_mup.training import TrainConfig, parametrized_model

# the same architecture, written plainly -----------------------------------------------------------------------


def rotate(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class PlainBlock(nn.Module):
    def __init__(self, d, n_heads, hidden):
        super().__init__()
        self.n_heads = n_heads
        self.norm1, self.norm2 = nn.RMSNorm(d), nn.RMSNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.gate, self.up = nn.Linear(d, hidden, bias=False), nn.Linear(d, hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        h = self.norm1(x)
        q, k, v = (t.view(B, T, self.n_heads, -1).transpose(1, 2) for t in (self.q(h), self.k(h), self.v(h)))
        y = F.scaled_dot_product_attention(rotate(q, cos, sin), rotate(k, cos, sin), v, is_causal=True)
        x = x + self.o(y.transpose(1, 2).reshape(B, T, C))
        h = self.norm2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class PlainGPT(nn.Module):
    def __init__(self, vocab, d, depth, n_heads, hidden, context, rope_base=10000.0):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(PlainBlock(d, n_heads, hidden) for _ in range(depth))
        self.norm = nn.RMSNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        d_head = d // n_heads
        angles = torch.outer(torch.arange(context).float(), rope_base ** -(torch.arange(0, d_head, 2).float() / d_head))
        angles = torch.cat((angles, angles), dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, idx, targets):
        T = idx.shape[1]
        x = self.embed(idx)
        cos, sin = self.cos[:T].to(x.dtype), self.sin[:T].to(x.dtype)
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.head(self.norm(x))
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())


# ------------------------------------------------------------------------------------------------------------------


def plain_like(cfg: GPTConfig) -> PlainGPT:
    return PlainGPT(cfg.vocab, cfg.width, cfg.depth, cfg.n_heads, cfg.mlp_hidden, cfg.context, cfg.rope_base)


@torch.no_grad()
def copy_weights(src: GPT, dst: PlainGPT) -> None:
    names = {"attn_norm": "norm1", "mlp_norm": "norm2", "attn.": "", "mlp.": ""}
    dst_params = dict(dst.named_parameters())
    for name, p in src.named_parameters():
        for old, new in names.items():
            name = name.replace(old, new)
        dst_params.pop(name).copy_(p)
    assert not dst_params, f"not copied: {sorted(dst_params)}"


def check_same_logits(cfg: GPTConfig) -> float:
    """PlainGPT with GPT's weights gives GPT's logits (float64, so the tolerance can be tight)."""
    torch.manual_seed(0)
    ours = GPT(cfg).double()
    plain = plain_like(cfg).double()
    copy_weights(ours, plain)
    x = torch.randint(0, cfg.vocab, (2, cfg.context + 1), generator=torch.Generator().manual_seed(1))
    a, la = ours(x[:, :-1], x[:, 1:])
    b, lb = plain(x[:, :-1], x[:, 1:])
    err = ((a - b).abs().max() / a.abs().max()).item()
    assert err < 1e-12 and abs(la.item() - lb.item()) < 1e-12, f"PlainGPT differs from GPT: rel. err {err:.3g}"
    return err


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=256)
    add_common_args(p, batch=8, threads=os.cpu_count())
    p.add_argument("--base", type=int, default=64, help="base width for parametrize (delta = 2 × base)")
    p.add_argument("--lr", type=float, default=1e-3)
    return p.parse_args(argv)


def steppers(args) -> dict:
    cfg = GPTConfig(width=args.width, depth=args.depth, context=args.context)
    data = torch.randint(0, cfg.vocab, (args.batch, args.context + 1), generator=torch.Generator().manual_seed(0))
    x, y = data[:, :-1], data[:, 1:]

    def build(width):
        torch.manual_seed(0)
        return GPT(GPTConfig(width=width, depth=args.depth, context=args.context))

    def stepper(model, opt):
        return train_step(model, opt, x, y)

    def ours(recipe):
        model = parametrized_model(TrainConfig(recipe=recipe, width=args.width, depth=args.depth, context=args.context,
                                               base_width=args.base))  # seeded by the config (seed 0), as `build`
        return stepper(model, lrm_mup.build_optimizer(model, "adamw", lr=args.lr, weight_decay=0.1))

    torch.manual_seed(0)
    plain = plain_like(cfg)
    copy_weights(build(args.width), plain)
    gpt = build(args.width)
    return {
        "plain": stepper(plain, torch.optim.AdamW(plain.parameters(), lr=args.lr, weight_decay=0.1)),
        "gpt": stepper(gpt, torch.optim.AdamW(gpt.parameters(), lr=args.lr, weight_decay=0.1)),
        "sp": ours("sp"),
        "mup": ours("mup"),
        "lrm": ours("lrm"),
    }


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    err = check_same_logits(GPTConfig(width=64, depth=2, context=args.context))
    print(f"# bench_model  {datetime.date.today()}  torch {torch.__version__}  "
          f"{platform.processor() or platform.machine()}  cpus={os.cpu_count()} threads={torch.get_num_threads()}"
          f"  loadavg(before)={os.getloadavg()[0]:.2f}")
    print(f"# width {args.width}, depth {args.depth}, context {args.context}, batch {args.batch}, float32, "
          f"fwd+bwd+AdamW, warmup {args.warmup}, {args.rounds} interleaved rounds")
    print(f"# sanity: PlainGPT logits == lrm_mup.model.GPT logits with copied weights (max rel. err {err:.1e}, f64)")
    times = time_interleaved(steppers(args), args.warmup, args.rounds)
    print_ratio_table(times, args.batch * args.context)
    print(f"\n# loadavg(after)={os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
