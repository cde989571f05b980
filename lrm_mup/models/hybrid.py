"""The hybrid model (`--model hybrid`): Falcon-H1's block, attention and a Mamba-2 mixer side by side, in plain PyTorch.

    x = x + attn(n) + ssm(n),  n = RMSNorm(x)          (attention ∥ SSM on the same normalised input, summed)
    x = x + mlp(RMSNorm(x))                            (SwiGLU)

The attention and the MLP are the proxy's own modules (models/proxy.py); the model is the proxy's GPT with this
block. Like the proxy it carries no multipliers: `lrm_mup.parametrize` adds them from `lrm_roles()`.

The Mamba-2 mixer (Falcon-H1 layout; d_ssm = ssm_expand · width channels in ssm_heads heads of ssm_head_dim, one group
of B, C with state size ssm_state):

    z, x, B, C, dt = W_z n, W_x n, W_B n, W_C n, W_dt n          (Falcon-H1's fused in_proj, one matrix per segment)
    x, B, C = SiLU(causal depthwise conv1d([x, B, C]))          (kernel ssm_conv, per-channel weights and bias)
    dt = softplus(dt + dt_bias);  A = -exp(A_log)                 (per head)
    y = SSD(x, dt, A, B, C) + D ⊙ x                               (models/ssd.py; D per head)
    out = W_out (y ⊙ SiLU(z))   or   W_out GatedRMSNorm(y, z)     (ssm_norm; Falcon-H1-0.5B runs without it)

The fused in_proj is five nn.Linear here, one per segment: the same function (a fused matmul is the five matmuls
stacked), and what μP and the multipliers need, since each segment has its own role: its own forward multiplier
(Falcon-H1's `ssm_multipliers` = z, x, B, C, dt, its `mup_vector`), its own width kind and its own placement in the
paper's appendix C (W_Z, W_dt row; W_X, W_B, W_C none). A learnable row multiplier on a segment is the segment's
rows of a row multiplier on the fused matrix; a column multiplier is per segment (on the fused matrix the five would
share one column vector; at init, all ones, the two are the same model).

Width and μP (widths grow by SSM heads at a fixed ssm_head_dim, or by head dim at fixed ssm_heads):
- W_z, W_x (width → d_ssm) and W_out (d_ssm → width): hidden matrices.
- W_B, W_C (width → ssm_state, fixed): readout-like, fan-in grows, fan-out fixed: μP's readout rule (multiplier
  α/m, Adam LR × 1, init ∝ 1/fan_in or zero). They start at ZERO (μP's zero readout init), so B and C start at
  SiLU(conv bias), Θ(1) and width-independent (their conv biases at the quantiles of Mamba's uniform init), and
  their updates are Θ(1). With the
  1/fan_in init instead, B and C start ~ width^-1/2 and the SSD scores C·B ~ width^-1: measured on the coordinate
  check (widths 32..128, lr 1e-2), the Θ(1) updates take far more than its 10 steps to dominate that init term
  (B's slope still -0.3 at step 24), so the whole SSD path sits in a width-dependent transient; zero starts avoid
  it. C·B sums ssm_state (fixed) terms, so no extra factor. W_B and W_C are not both a saddle at zero: the gradient
  of W_B is ∝ C = SiLU(bias) ≠ 0.
- W_dt (width → ssm_heads): hidden when width grows by SSM heads (role `ssm_dt`), readout-like when the number of
  SSM heads is fixed (role `ssm_dt_readout`: μP multiplier α/m; zero init, so dt starts at softplus(dt_bias)).
  Under Adam both give the dt segment a forward multiplier ∝ d⁻¹, the paper's measured law for the learned dt
  multiplier; under Muon only the readout-like one has it. dt after softplus(· + dt_bias) is Θ(1) either way.
- The SSM head dim needs no factor: the scan contracts over the state (C·h sums ssm_state terms), not the head dim.
- conv1d weights and bias, A_log, D, dt_bias: per-channel / per-head vectors; no width scaling, no weight decay
  (core/roles.py `per_channel_parameters`).
Inits: matrices as the proxy's (N(0, init_std²/fan_in)) but the zero readout-like ones above; A ~ U(1, 16) per
head as in Mamba-2; dt at the heads' quantiles of Mamba-2's log-uniform(1e-3, 1e-1) (deterministic, so that the mean
over a few heads does not swing with the draw at small widths), dt_bias = softplus⁻¹(dt); D = 1. Both spreads are
width-independent (Falcon-H1's A = 1..heads is not).

Coordinate checks see x, B, C (after the conv), dt (after softplus) and y (the scan output, before the gate) through
the mixer's `ssm_probes` (nn.Identity modules), besides every matrix output.
Two of their series drift at small widths with no μP exponent to declare (README's SSM notes; benchmarks/RESULTS.md
"issue 11"): W_dt's spectral ‖ΔW‖/‖W‖ (slope -1/2 × the growth exponent of the update's stable rank: each row is one
head's readout, moved by that head's own gradient signal; its output change Δdt, μP's condition, is flat) and
W_out's Δy (the incoherent part of ΔW·u, ∝ d_ssm^-1/2 against a coherent Θ(1) part, fades with d_ssm: local slopes
-0.19 → -0.05 from width 64 to 1024).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .proxy import GPT, MLP, ROLES, Attention, GPTConfig
from .ssd import ssd_chunked

__all__ = ["HybridConfig", "Hybrid", "HybridBlock", "Mamba2Mixer", "GatedRMSNorm", "hybrid", "SSM_FIELDS",
           "ssm_fields"]


@dataclass(frozen=True)
class HybridConfig(GPTConfig):
    """GPTConfig plus the SSM's shape. Set exactly one of ssm_head_dim / ssm_heads (ssm_heads=N: pass
    ssm_head_dim=None): a fixed SSM head dim widens by SSM heads, a fixed number of heads by head dim."""

    ssm_head_dim: int | None = 32
    ssm_heads: int | None = None
    ssm_expand: float = 1.0   # d_ssm = ssm_expand · width (Falcon-H1-0.5B: 1.5)
    ssm_state: int = 16       # N, the state size (Falcon-H1-0.5B: 128)
    ssm_conv: int = 4         # causal conv kernel
    ssm_chunk: int = 32       # SSD chunk length (Falcon-H1: 128)
    ssm_norm: bool = False    # gated RMSNorm before out_proj (Falcon-H1-0.5B: False)

    def __post_init__(self):
        super().__post_init__()

        def bad(field, allowed):
            raise ConfigError(f"HybridConfig.{field}={getattr(self, field)!r} is invalid: {allowed}")

        def positive_int(x):
            return isinstance(x, int) and not isinstance(x, bool) and x > 0

        for field in ("ssm_state", "ssm_conv", "ssm_chunk"):
            if not positive_int(getattr(self, field)):
                bad(field, "must be a positive int")
        d_ssm = self.ssm_expand * self.width
        if not (isinstance(self.ssm_expand, (int, float)) and 0 < d_ssm < math.inf
                and abs(d_ssm - round(d_ssm)) < 1e-9 * d_ssm):
            bad("ssm_expand", f"ssm_expand * width = {d_ssm} must be a positive integer")
        if (self.ssm_head_dim is None) == (self.ssm_heads is None):
            bad("ssm_heads", f"set exactly one of ssm_heads / ssm_head_dim (ssm_head_dim={self.ssm_head_dim!r})")
        field = "ssm_heads" if self.ssm_heads is not None else "ssm_head_dim"
        if not positive_int(getattr(self, field)) or self.d_ssm % getattr(self, field):
            bad(field, f"must be a positive int dividing d_ssm = ssm_expand * width = {self.d_ssm}")
        if not isinstance(self.ssm_norm, bool):
            bad("ssm_norm", "must be true or false")

    @property
    def d_ssm(self) -> int:
        return round(self.ssm_expand * self.width)

    @property
    def n_ssm_heads(self) -> int:
        return self.ssm_heads if self.ssm_heads is not None else self.d_ssm // self.ssm_head_dim

    @property
    def d_ssm_head(self) -> int:
        return self.d_ssm // self.n_ssm_heads


class GatedRMSNorm(nn.Module):
    """RMSNorm(y ⊙ SiLU(z)) · weight: Mamba-2's gated norm with the gate applied first (norm_before_gate=False,
    Falcon-H1's fused kernel), over all channels (one group)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(y * F.silu(z), (y.shape[-1],), self.weight, self.eps)


class Mamba2Mixer(nn.Module):
    """The Mamba-2 mixer of the module docstring, width → width."""

    ssm_probes = ("x_probe", "b_probe", "c_probe", "dt_probe", "y_probe")  # what coordinate checks record

    def __init__(self, config: HybridConfig):
        super().__init__()
        d, d_ssm, n = config.width, config.d_ssm, config.ssm_state
        self.heads, self.head_dim, self.state, self.chunk = config.n_ssm_heads, config.d_ssm_head, n, config.ssm_chunk
        self.z_proj = nn.Linear(d, d_ssm, bias=False)
        self.x_proj = nn.Linear(d, d_ssm, bias=False)
        self.b_proj = nn.Linear(d, n, bias=False)
        self.c_proj = nn.Linear(d, n, bias=False)
        self.dt_proj = nn.Linear(d, self.heads, bias=False)
        channels = d_ssm + 2 * n
        self.conv1d = nn.Conv1d(channels, channels, config.ssm_conv, groups=channels, padding=config.ssm_conv - 1)
        with torch.no_grad():
            # B's and C's conv biases at the quantiles of the default U(-1/√kernel, 1/√kernel): what B and C start
            # at (W_B = W_C = 0), the same few values at every width
            bound = 1 / math.sqrt(config.ssm_conv)
            self.conv1d.bias[d_ssm:] = (((torch.arange(n) + 0.5) / n) * 2 - 1).repeat(2) * bound
            # the log-uniform's quantiles, not samples: the same spread of time scales at every width
            quantiles = (torch.arange(self.heads, dtype=torch.float32) + 0.5) / self.heads
            dt = torch.exp(math.log(1e-3) + quantiles * (math.log(1e-1) - math.log(1e-3)))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus(dt_bias) = dt
        self.A_log = nn.Parameter(torch.log(torch.empty(self.heads).uniform_(1.0, 16.0)))
        self.D = nn.Parameter(torch.ones(self.heads))
        self.norm = GatedRMSNorm(d_ssm) if config.ssm_norm else None
        self.out_proj = nn.Linear(d_ssm, d, bias=False)
        for probe in self.ssm_probes:
            setattr(self, probe, nn.Identity())

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        b, length, _ = u.shape
        z, dt = self.z_proj(u), self.dt_proj(u)
        xbc = torch.cat([self.x_proj(u), self.b_proj(u), self.c_proj(u)], dim=-1).transpose(1, 2)
        xbc = F.silu(self.conv1d(xbc)[..., :length]).transpose(1, 2)  # causal: drop the right padding's outputs
        x, B, C = xbc.split([self.heads * self.head_dim, self.state, self.state], dim=-1)
        x, B, C = self.x_probe(x), self.b_probe(B), self.c_probe(C)
        dt = self.dt_probe(F.softplus(dt + self.dt_bias))
        x = x.reshape(b, length, self.heads, self.head_dim)
        y, _ = ssd_chunked(x, dt, -torch.exp(self.A_log), B[:, :, None], C[:, :, None], self.chunk)
        y = self.y_probe((y + self.D[:, None] * x).reshape(b, length, -1))
        y = self.norm(y, z) if self.norm is not None else y * F.silu(z)
        return self.out_proj(y)


class HybridBlock(nn.Module):
    """Falcon-H1's block: one input RMSNorm feeding attention and the SSM in parallel, their sum added to the
    residual; then RMSNorm → SwiGLU MLP → residual."""

    def __init__(self, config: HybridConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(config.width)
        self.attn = Attention(config)
        self.ssm = Mamba2Mixer(config)
        self.mlp_norm = nn.RMSNorm(config.width)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.attn_norm(x)
        x = x + self.attn(h) + self.ssm(h)
        return x + self.mlp(self.mlp_norm(x))


class Hybrid(GPT):
    """The proxy GPT with Falcon-H1's attention ∥ SSM block."""

    block = HybridBlock

    def __init__(self, config: HybridConfig):
        if not isinstance(config, HybridConfig):
            raise ConfigError(f"Hybrid needs a HybridConfig, not {type(config).__name__}")
        super().__init__(config)
        with torch.no_grad():  # μP's zero readout init for the readout-like segments (module docstring)
            for block in self.blocks:
                for layer in (block.ssm.b_proj, block.ssm.c_proj) + ((block.ssm.dt_proj,) if config.ssm_heads else ()):
                    layer.weight.zero_()

    def lrm_roles(self) -> dict[str, str]:
        """The proxy's roles plus the SSM's: each in_proj segment, out_proj (`ssm_out_normed` behind the gated norm,
        whose weight already acts as its column multiplier), and dt by whether the SSM heads grow with width."""
        c = self.config
        ssm = {"z_proj": "ssm_z", "x_proj": "ssm_x", "b_proj": "ssm_b", "c_proj": "ssm_c",
               "dt_proj": "ssm_dt" if c.ssm_heads is None else "ssm_dt_readout",
               "out_proj": "ssm_out_normed" if c.ssm_norm else "ssm_out"}
        roles = {}
        for name, _ in self.named_modules():
            parent, _, leaf = name.rpartition(".")
            table = ssm if parent.endswith(".ssm") else ROLES
            if leaf in table:
                roles[name] = table[leaf]
        return roles

    def flops_per_token(self) -> float:
        """The proxy's count plus, per block, 6 × the SSM's matmul parameters (five in-projections, out_proj) and
        6 × the chunked scan's multiply-adds per token: chunk · (state + d_ssm) inside a chunk (C·Bᵀ, scores·X) and
        2 · d_ssm · state for the chunk states in and out (the conv and the gates are negligible)."""
        c = self.config
        n_ssm = c.width * (2 * c.d_ssm + 2 * c.ssm_state + c.n_ssm_heads) + c.d_ssm * c.width
        scan = c.ssm_chunk * (c.ssm_state + c.d_ssm) + 2 * c.d_ssm * c.ssm_state
        return super().flops_per_token() + float(c.depth * 6 * (n_ssm + scan))


def hybrid(width: int, **fields) -> Hybrid:
    """The hybrid model at `width`, other HybridConfig fields as given."""
    return Hybrid(HybridConfig(width=width, **fields))


# The SSM's shape by its short names: what `--ssm-NAME` sets on the command line, TrainConfig.ssm and a sweep file's
# [model.ssm] table hold; each is HybridConfig's `ssm_NAME`.
SSM_FIELDS = ("heads", "head_dim", "expand", "state", "conv", "chunk", "norm")


def ssm_fields(model: str, ssm: dict) -> dict:
    """The HybridConfig keyword arguments of `ssm` ({short name: value}, `SSM_FIELDS`) for model `model`. How the
    width grows follows from which of heads / head_dim is given: `heads` alone fixes the number of SSM heads (width
    grows by head dim; HybridConfig's default ssm_head_dim is then cleared), `head_dim` fixes the head dim (width
    grows by heads, the default). The values are HybridConfig's to check; a name outside SSM_FIELDS, or any SSM
    field for a model other than `hybrid`, is a one-line ConfigError."""
    if not isinstance(ssm, dict):
        raise ConfigError(f"ssm={ssm!r} is invalid: a table of SSM fields ({', '.join(SSM_FIELDS)})")
    if not ssm:
        return {}
    unknown = [k for k in ssm if k not in SSM_FIELDS]
    if unknown:
        raise ConfigError(f"ssm field {unknown[0]!r} is unknown; allowed: {', '.join(SSM_FIELDS)}")
    if model != "hybrid":
        first = next(iter(ssm))
        raise ConfigError(f"--ssm-{first.replace('_', '-')} (ssm.{first}) is a field of model 'hybrid'; "
                          f"model {model!r} has no SSM")
    kw = {f"ssm_{k}": v for k, v in ssm.items()}
    if "heads" in ssm and "head_dim" not in ssm:
        kw["ssm_head_dim"] = None  # a fixed number of SSM heads: the head dim grows with the width
    return kw
