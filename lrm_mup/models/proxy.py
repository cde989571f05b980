"""The proxy language model: a small pre-norm GPT in plain PyTorch.

It carries no μP multipliers on purpose. `lrm_mup.parametrize` swaps every
nn.Linear / nn.Embedding for a multiplier-carrying version afterwards, guided
by the role table from `GPT.lrm_roles()`; keeping the model plain means the
same file serves standard parametrisation (SP), μP and learnable multipliers.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

DEFAULT_HEAD_DIM = 32  # the default head dim (TrainConfig's too, when neither heads nor head_dim is given)


@dataclass(frozen=True)
class GPTConfig:
    """Shape and init of the model. Set exactly one of head_dim / heads (heads=N: pass head_dim=None).

    head_dim fixed: widening adds heads. heads fixed: widening grows the head
    dimension (then the core rescales attention through `GPT.head_dim`).
    """

    width: int = 128
    depth: int = 2
    head_dim: int | None = DEFAULT_HEAD_DIM
    heads: int | None = None
    mlp_ratio: float = 3.0  # SwiGLU hidden = mlp_ratio * width, must be an integer
    context: int = 128
    vocab: int = 256  # byte-level
    tie_embeddings: bool = False
    rope_base: float = 10000.0
    init_std: float = 1.0  # matrices ~ N(0, init_std^2 / fan_in); embedding ~ N(0, 1)

    def __post_init__(self):
        def bad(field, allowed):
            raise ConfigError(f"GPTConfig.{field}={getattr(self, field)!r} is invalid: {allowed}")

        def positive_int(x):
            return isinstance(x, int) and not isinstance(x, bool) and x > 0

        for field in ("width", "depth", "context", "vocab"):
            if not positive_int(getattr(self, field)):
                bad(field, "must be a positive int")
        if (self.head_dim is None) == (self.heads is None):
            bad("heads", f"set exactly one of heads / head_dim (head_dim={self.head_dim!r})")
        field = "heads" if self.heads is not None else "head_dim"
        if not positive_int(getattr(self, field)):
            bad(field, "must be a positive int")
        if self.width % getattr(self, field):
            bad(field, f"must divide width={self.width}")
        if self.d_head % 2:
            bad(field, f"gives odd head dim {self.d_head}; rotary needs an even one")
        hidden = self.mlp_ratio * self.width
        if not (0 < hidden < math.inf and abs(hidden - round(hidden)) < 1e-9 * hidden):
            bad("mlp_ratio", f"mlp_ratio * width = {hidden} must be a positive integer")
        for field in ("rope_base", "init_std"):
            if not 0 < getattr(self, field) < math.inf:
                bad(field, "must be a finite number > 0")

    @property
    def n_heads(self) -> int:
        return self.heads if self.heads is not None else self.width // self.head_dim

    @property
    def d_head(self) -> int:
        return self.head_dim if self.head_dim is not None else self.width // self.heads

    @property
    def mlp_hidden(self) -> int:
        return round(self.mlp_ratio * self.width)


def rotary_tables(d_head: int, context: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape (context, d_head), built once in float32; forward casts them to q's dtype."""
    inv_freq = base ** -(torch.arange(0, d_head, 2, dtype=torch.float32) / d_head)
    angles = torch.outer(torch.arange(context, dtype=torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)  # rotate-half layout: pair i with i + d_head/2
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, d_head) so that q·k depends on positions only through their offset."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    """Causal multi-head self-attention with rotary positions."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_heads, self.d_head = config.n_heads, config.d_head
        self.q = nn.Linear(config.width, config.width, bias=False)
        self.k = nn.Linear(config.width, config.width, bias=False)
        self.v = nn.Linear(config.width, config.width, bias=False)
        self.o = nn.Linear(config.width, config.width, bias=False)
        self.scale = 1 / math.sqrt(self.d_head)  # plain attribute so μP can switch to 1/d_head
        # SDPA hides its logits; coordinate checks hook these to see the q, k it receives.
        self.q_probe = nn.Identity()
        self.k_probe = nn.Identity()
        cos, sin = rotary_tables(self.d_head, config.context, config.rope_base)
        self.register_buffer("cos", cos, persistent=False)  # derived from config, not state
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        heads = lambda t: t.view(B, T, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, T, d_head)
        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        cos, sin = self.cos[:T].to(q.dtype), self.sin[:T].to(q.dtype)
        q = self.q_probe(apply_rotary(q, cos, sin))
        k = self.k_probe(apply_rotary(k, cos, sin))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        return self.o(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.gate = nn.Linear(config.width, config.mlp_hidden, bias=False)
        self.up = nn.Linear(config.width, config.mlp_hidden, bias=False)
        self.down = nn.Linear(config.mlp_hidden, config.width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    """Pre-norm residual block: the residual stream itself is never normalised."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(config.width)
        self.attn = Attention(config)
        self.mlp_norm = nn.RMSNorm(config.width)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


# Role of each matrix by its attribute name; parametrize picks multipliers and LR scaling per role.
ROLES = {
    "embed": "embedding",
    "q": "query",
    "k": "key",
    "v": "value",
    "o": "attn_out",
    "gate": "mlp_gate",
    "up": "mlp_up",
    "down": "mlp_down",
    "head": "readout",
}


class GPT(nn.Module):
    """Decoder-only language model: embed -> blocks -> RMSNorm -> readout. `block` is the block class (the hybrid
    model, models/hybrid.py, swaps in its attention ∥ SSM block)."""

    block: type[nn.Module] = Block

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.head_dim = config.d_head  # read by the core to scale attention as head dim grows
        self.embed = nn.Embedding(config.vocab, config.width)
        self.blocks = nn.ModuleList(self.block(config) for _ in range(config.depth))
        self.norm = nn.RMSNorm(config.width)
        self.head = nn.Linear(config.width, config.vocab, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight
        # SP fan-in init, the starting point μP rescales; RMSNorm weights already start at 1.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=config.init_std / math.sqrt(module.in_features))
        nn.init.normal_(self.embed.weight, std=1.0)  # last, so a tied head gets the embedding init

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Logits (B, T, vocab); with targets also the mean cross-entropy in nats."""
        T = idx.shape[1]
        if T > self.config.context:
            raise ValueError(
                f"sequence length T={T} is invalid: must be <= GPTConfig.context={self.config.context}"
            )
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.norm(x))
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def lrm_roles(self) -> dict[str, str]:
        """Qualified name -> role for every matrix. Keyed by name, not type, so it stays valid after
        parametrize has swapped the modules; a tied head is still listed as the readout."""
        leaves = ((name, name.rpartition(".")[2]) for name, _ in self.named_modules())
        return {name: ROLES[leaf] for name, leaf in leaves if leaf in ROLES}

    def lrm_depth(self) -> dict:
        """Where the depth is, for the depth rules (`lrm_mup.core.depth`): the block list and, inside each block,
        the layers whose output the residual stream adds (x + attn.o(...), x + mlp.down(...))."""
        return {"blocks": "blocks", "branches": ["attn.o", "mlp.down"]}

    def flops_per_token(self) -> float:
        """Training (forward + backward) FLOPs per token, PaLM convention.

        6 * N, with N the matmul parameters (all Linear weights, the readout even when tied; the
        embedding lookup is free), plus 12 * depth * width * context for q·k and attention·v over
        the full context: the causal mask is not credited with halving it.
        """
        c = self.config
        n_matmul = c.depth * (4 * c.width**2 + 3 * c.width * c.mlp_hidden) + c.width * c.vocab
        return float(6 * n_matmul + 12 * c.depth * c.width * c.context)


def proxy(width: int, **fields) -> GPT:
    """The proxy model at `width`, other GPTConfig fields as given."""
    return GPT(GPTConfig(width=width, **fields))

