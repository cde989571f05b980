"""A model shaped unlike ours, for checking the core API on foreign layouts: GPT-2 style (learned positions, fused
QKV `c_attn`, LayerNorm with biases, GELU MLP named c_fc/c_proj, readout tied to the token embedding)."""
import torch
import torch.nn.functional as F
from torch import nn


class GPT2Block(nn.Module):
    def __init__(self, d: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.ln_1 = nn.LayerNorm(d)
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.c_fc = nn.Linear(d, 4 * d)
        self.mlp_proj = nn.Linear(4 * d, d)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class GPT2Style(nn.Module):
    def __init__(self, width: int, depth: int = 2, vocab: int = 64, ctx: int = 16, tie: bool = True):
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(ctx, width)
        self.h = nn.ModuleList(GPT2Block(width, width // 16) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        if tie:
            self.lm_head.weight = self.wte.weight
        for name, p in self.named_parameters():  # SP fan-in init; biases and norms as PyTorch makes them
            if name.endswith("weight") and p.ndim == 2 and "wte" not in name and "wpe" not in name:
                nn.init.normal_(p, std=p.shape[1] ** -0.5)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


class WithMHA(nn.Module):
    """nn.MultiheadAttention keeps its fused QKV matrix as a raw parameter: not reparametrizable."""

    def __init__(self, width: int):
        super().__init__()
        self.emb = nn.Embedding(32, width)
        self.attn = nn.MultiheadAttention(width, 2, batch_first=True)
        self.head = nn.Linear(width, 32)

    def forward(self, idx):
        x = self.emb(idx)
        return self.head(self.attn(x, x, x, need_weights=False)[0])


class HeadFirst(nn.Module):
    """A tied model that defines its readout before its embedding: the embedding must still own the weight."""

    def __init__(self, width: int):
        super().__init__()
        self.out = nn.Linear(width, 32, bias=False)
        self.mix = nn.Linear(width, width)
        self.tok = nn.Embedding(32, width)
        self.out.weight = self.tok.weight

    def forward(self, idx):
        return self.out(torch.relu(self.mix(self.tok(idx))))
