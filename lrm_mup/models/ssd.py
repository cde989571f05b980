"""The Mamba-2 scan (state-space duality, SSD) in plain PyTorch: a chunked form for training and a sequential
reference it must equal.

The selective state space of Mamba-2, per head h (state size N, head dim P, one scalar decay per head):

    h_t = exp(dt_t · A) · h_{t-1} + dt_t · x_t ⊗ B_t        h_t ∈ R^{P×N}, x_t ∈ R^P, B_t, C_t ∈ R^N
    y_t = h_t · C_t                                           y_t ∈ R^P

with A < 0 and dt_t > 0, so exp(dt_t·A) ∈ (0, 1) is the decay. B and C are shared by the heads of a group. Unrolled,
y_t = Σ_{s≤t} (C_t·B_s) · exp(Σ_{k=s+1..t} dt_k A) · dt_s x_s: a causal "attention" whose scores are C·Bᵀ times a
decay mask L (the duality). `ssd_chunked` splits the sequence into chunks of length Q and computes
 1. inside each chunk: the quadratic form (C Bᵀ ⊙ L) (dt x), cost ∝ T·Q per head;
 2. each chunk's final state from its own inputs, with the decay to the chunk's end;
 3. the state entering each chunk, by the recurrence over chunks (c+1 × c+1 decay matrix, tiny);
 4. the contribution of the entering state to every position, with the decay from the chunk's start.
Matmuls throughout instead of a Python loop over time: what makes it fast on CPU (benchmarks/bench_ssm.py).
`ssd_sequential` runs the recurrence above step by step (the definition); tests/test_ssm.py checks both agree to
1e-10 in float64, values and gradients, with and without an initial state.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["segsum", "ssd_chunked", "ssd_sequential"]


def segsum(a: torch.Tensor) -> torch.Tensor:
    """(..., T) -> (..., T, T): out[i, j] = a[j+1] + ... + a[i] for j ≤ i (0 on the diagonal), -inf above it, so that
    exp(segsum(a)) is the causal decay mask. Built from masked cumulative sums, not a difference of cumsums, so no
    large sums cancel (exact where the decays are long)."""
    T = a.shape[-1]
    x = a[..., None].expand(*a.shape, T)  # x[..., i, j] = a[i]
    strict = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(-1)
    x = x.masked_fill(~strict, 0).cumsum(dim=-2)  # sum over i' in (j, i] of a[i']
    return x.masked_fill(~strict.logical_or(torch.eye(T, dtype=torch.bool, device=a.device)), float("-inf"))


def _check(x, dt, A, B, C):
    b, length, h, _ = x.shape
    g = B.shape[2]
    if dt.shape != (b, length, h) or A.shape != (h,) or B.shape != C.shape or B.shape[:2] != (b, length) or h % g:
        raise ValueError(f"SSD shapes: x {tuple(x.shape)} (b, l, heads, p), dt {tuple(dt.shape)} (b, l, heads), "
                         f"A {tuple(A.shape)} (heads,), B {tuple(B.shape)} and C {tuple(C.shape)} (b, l, groups, n) "
                         "with groups dividing heads")


def ssd_chunked(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, chunk: int,
                initial_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """y (b, l, heads, p) and the final state (b, heads, p, n) of the SSD recurrence (module docstring), in chunks
    of `chunk` steps. x (b, l, heads, p); dt (b, l, heads), already positive (after softplus); A (heads,), negative;
    B, C (b, l, groups, n); initial_state (b, heads, p, n) or None (zeros). A sequence not a multiple of `chunk` is
    padded at the end with dt = 0 (decay 1, no input), which leaves the outputs and the final state unchanged."""
    _check(x, dt, A, B, C)
    b, length, h, p = x.shape
    g, n = B.shape[2:]
    r = h // g  # heads per group
    pad = (-length) % chunk
    if pad:
        x, dt, B, C = (F.pad(t, (0, 0) * (t.ndim - 2) + (0, pad)) for t in (x, dt, B, C))
    c, Q = (length + pad) // chunk, chunk
    # layout (b, g, r, c, Q, ·): batch, group, head in group, chunk, step in chunk; matmuls over the last two dims
    X = (x * dt[..., None]).reshape(b, c, Q, g, r, p).permute(0, 3, 4, 1, 2, 5)  # dt_s x_s
    a_cum = (dt * A).reshape(b, c, Q, g, r).permute(0, 3, 4, 1, 2).cumsum(-1)    # (b, g, r, c, Q) log-decays
    Bc = B.reshape(b, c, Q, g, n).permute(0, 3, 1, 2, 4)[:, :, None]              # (b, g, 1, c, Q, n)
    Cc = C.reshape(b, c, Q, g, n).permute(0, 3, 1, 2, 4)[:, :, None]
    # 1. inside each chunk: y_l = Σ_{s≤l} (C_l·B_s) L[l, s] X_s, with L[l, s] = exp(a_cum[l] - a_cum[s]): a
    #    difference of one chunk's cumulative sums (2× faster than `segsum` on CPU; in float32 it costs a relative
    #    error ≈ 6e-8 · |a_cum| on L, where |a_cum| ≤ chunk · max dt·|A|); the mask goes in before the exp, so no
    #    inf meets a zero in the backward pass
    causal = torch.ones(Q, Q, dtype=torch.bool, device=x.device).tril()
    L = torch.exp((a_cum[..., :, None] - a_cum[..., None, :]).masked_fill(~causal, float("-inf")))
    y = ((Cc @ Bc.transpose(-1, -2)) * L) @ X                                     # (b, g, r, c, Q, p)
    # 2. each chunk's final state from its own inputs: Σ_s exp(a_cum[end] - a_cum[s]) X_s ⊗ B_s
    to_end = torch.exp(a_cum[..., -1:] - a_cum)[..., None]
    states = (X * to_end).transpose(-1, -2) @ Bc                                  # (b, g, r, c, p, n)
    # 3. the state entering each chunk: recurrence over chunks, the initial state entering the first
    if initial_state is None:
        first = states.new_zeros(b, g, r, 1, p, n)
    else:
        first = initial_state.reshape(b, g, r, 1, p, n).to(states.dtype)
    states = torch.cat([first, states], dim=3)                                    # (b, g, r, c+1, p, n)
    decay_chunks = torch.exp(segsum(F.pad(a_cum[..., -1], (1, 0))))              # (b, g, r, c+1, c+1)
    states = (decay_chunks @ states.flatten(-2)).unflatten(-1, (p, n))
    entering, final = states[:, :, :, :-1], states[:, :, :, -1]
    # 4. the entering state's contribution to every position: exp(a_cum[l]) C_l · h_entering
    y = y + (Cc @ entering.transpose(-1, -2)) * torch.exp(a_cum)[..., None]
    y = y.permute(0, 3, 4, 1, 2, 5).reshape(b, c * Q, h, p)[:, :length]
    return y, final.reshape(b, h, p, n)


def ssd_sequential(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   initial_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrence h_t = exp(dt_t A) h_{t-1} + dt_t x_t ⊗ B_t, y_t = h_t C_t, one step at a time: the definition
    `ssd_chunked` must equal (same arguments, no chunk)."""
    _check(x, dt, A, B, C)
    b, length, h, p = x.shape
    r = h // B.shape[2]
    Bh, Ch = B.repeat_interleave(r, dim=2), C.repeat_interleave(r, dim=2)  # (b, l, heads, n)
    state = x.new_zeros(b, h, p, B.shape[3]) if initial_state is None else initial_state.to(x.dtype)
    ys = []
    for t in range(length):
        decay = torch.exp(dt[:, t] * A)[..., None, None]                 # (b, heads, 1, 1)
        state = decay * state + (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t]))
    return torch.stack(ys, dim=1), state
