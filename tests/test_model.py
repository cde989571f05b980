import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lrm_mup.errors import ConfigError
from lrm_mup.models import GPT, GPTConfig

TINY = dict(width=32, depth=2, head_dim=8, context=16, vocab=64)


def make(dtype=torch.float32, seed=0, **overrides):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**TINY, **overrides})).to(dtype).eval()


def tokens(config, batch=2, length=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab, (batch, length or config.context), generator=g)


# --- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, field, value",
    [
        (dict(width=0), "width", "0"),
        (dict(width=-8), "width", "-8"),
        (dict(depth=0), "depth", "0"),
        (dict(context=0), "context", "0"),
        (dict(vocab=-1), "vocab", "-1"),
        (dict(width=2.5), "width", "2.5"),
        (dict(width=100, head_dim=32), "head_dim", "32"),
        (dict(width=128, head_dim=None, heads=3), "heads", "3"),
        (dict(head_dim=32, heads=4), "heads", "4"),
        (dict(head_dim=None, heads=None), "heads", "None"),
        (dict(width=96, head_dim=3), "head_dim", "3"),
        (dict(width=12, head_dim=None, heads=4), "heads", "4"),  # d_head = 3: odd
        (dict(head_dim=0), "head_dim", "0"),
        (dict(width=10, head_dim=2, mlp_ratio=0.25), "mlp_ratio", "0.25"),
        (dict(mlp_ratio=0.0), "mlp_ratio", "0.0"),
        (dict(init_std=0.0), "init_std", "0.0"),
        (dict(init_std=-1.0), "init_std", "-1.0"),
        (dict(rope_base=0.0), "rope_base", "0.0"),
    ],
)
def test_bad_config_names_field_and_value(overrides, field, value):
    with pytest.raises(ConfigError) as err:
        GPTConfig(**overrides)
    message = str(err.value)
    assert isinstance(err.value, ValueError) and "\n" not in message
    assert f"{field}={value}" in message


def test_derived_sizes_for_both_growth_modes():
    fixed_head_dim = GPTConfig(width=256, head_dim=32, mlp_ratio=3.0)
    assert (fixed_head_dim.n_heads, fixed_head_dim.d_head, fixed_head_dim.mlp_hidden) == (8, 32, 768)
    fixed_heads = GPTConfig(width=256, head_dim=None, heads=4, mlp_ratio=2.0)
    assert (fixed_heads.n_heads, fixed_heads.d_head, fixed_heads.mlp_hidden) == (4, 64, 512)
    assert GPT(GPTConfig(width=64, head_dim=None, heads=2)).head_dim == 32


# --- forward --------------------------------------------------------------------------------------


def test_shapes_and_loss():
    model = make()
    idx = tokens(model.config, length=10)
    logits = model(idx)
    assert logits.shape == (2, 10, 64)
    logits2, loss = model(idx, idx)
    torch.testing.assert_close(logits2, logits)
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, 64), idx.reshape(-1)))


@pytest.mark.parametrize("init_std", [1.0, 0.5])
def test_fresh_loss_is_near_uniform(init_std):
    # Final RMSNorm gives unit-RMS features, so readout logits are ~ N(0, init_std^2) and the expected
    # loss is ln V + init_std^2 / 2; at init_std=1 that is ln 256 + 0.5, so check the exact prediction.
    torch.manual_seed(0)
    model = GPT(GPTConfig(init_std=init_std))
    idx = tokens(model.config, batch=8)
    _, loss = model(idx, idx)
    assert abs(loss.item() - (math.log(256) + init_std**2 / 2)) < 0.1
    assert abs(loss.item() - math.log(256)) < 0.5 + 0.1 * init_std


def test_sequence_longer_than_context_is_rejected():
    model = make()
    with pytest.raises(ValueError, match=r"T=17.*context=16"):
        model(tokens(model.config, length=17))


def test_bf16_autocast_runs_close_to_float32():
    model = make()
    idx = tokens(model.config)
    _, loss32 = model(idx, idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss16 = model(idx, idx)
    assert logits.dtype == torch.bfloat16 and loss16.dtype == torch.float32
    assert abs(loss16.item() - loss32.item()) < 0.05


def test_causality():
    model = make(torch.float64)
    idx = tokens(model.config, batch=1)
    base = model(idx)
    for t in (0, 5, 14):
        changed = idx.clone()
        changed[:, t + 1 :] = (changed[:, t + 1 :] + 1) % model.config.vocab
        out = model(changed)
        torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-12)
        assert not torch.allclose(out[:, t + 1 :], base[:, t + 1 :])


# --- attention internals --------------------------------------------------------------------------


def capture(module, store, key, pre=False):
    """Record a module's output (or first input with pre=True) under store[key]."""
    if pre:
        return module.register_forward_pre_hook(lambda m, args: store.__setitem__(key, args[0]))
    return module.register_forward_hook(lambda m, args, out: store.__setitem__(key, out))


def first_layer_qk(model, idx):
    seen = {}
    attn = model.blocks[0].attn
    hooks = [capture(attn.q_probe, seen, "q"), capture(attn.k_probe, seen, "k")]
    model(idx)
    for h in hooks:
        h.remove()
    return seen["q"], seen["k"]


def test_rotary_scores_depend_only_on_relative_position():
    # Layer 0 sees embeddings only, so before rotary a token's q, k do not depend on where it sits.
    model = make(torch.float64)
    seq = tokens(model.config, batch=1, length=10)
    prefix = tokens(model.config, batch=1, length=6, seed=2)
    q0, k0 = first_layer_qk(model, seq)
    q1, k1 = first_layer_qk(model, torch.cat([prefix, seq], dim=1))
    q1, k1 = q1[:, :, 6:], k1[:, :, 6:]
    # The rotation moved the vectors but kept their length ...
    assert not torch.allclose(q1, q0)
    torch.testing.assert_close(q1.norm(dim=-1), q0.norm(dim=-1), rtol=1e-6, atol=0)
    # ... and every q·k with the same offset is unchanged by the shift of 6.
    torch.testing.assert_close(q1 @ k1.transpose(-1, -2), q0 @ k0.transpose(-1, -2), rtol=1e-6, atol=1e-6)


def test_probes_see_what_sdpa_sees():
    model = make(torch.float64)
    attn = model.blocks[1].attn
    attn.scale = 0.37  # a non-default scale proves the attribute reaches SDPA
    seen = {}
    hooks = [
        capture(attn.q_probe, seen, "q"),
        capture(attn.k_probe, seen, "k"),
        capture(attn.v, seen, "v"),
        capture(attn.o, seen, "attn_out", pre=True),
    ]
    model(tokens(model.config))
    for h in hooks:
        h.remove()
    q, k = seen["q"], seen["k"]
    B, H, T, D = q.shape
    assert (H, D) == (model.config.n_heads, model.config.d_head)
    v = seen["v"].view(B, T, H, D).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) * 0.37
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    expected = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H * D)
    torch.testing.assert_close(seen["attn_out"], expected, rtol=1e-10, atol=1e-12)


# --- roles, tying, init, flops --------------------------------------------------------------------


@pytest.mark.parametrize("tie", [False, True])
def test_roles_cover_every_matrix(tie):
    model = make(tie_embeddings=tie)
    roles = model.lrm_roles()
    matrices = {n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))}
    assert set(roles) == matrices
    expected = {"embed": "embedding", "head": "readout"}
    for i in range(2):
        expected |= {f"blocks.{i}.attn.{n}": r for n, r in zip("qkvo", ("query", "key", "value", "attn_out"))}
        expected |= {f"blocks.{i}.mlp.{n}": f"mlp_{n}" for n in ("gate", "up", "down")}
    assert roles == expected


def test_tying_shares_the_parameter():
    untied, tied = make(), make(tie_embeddings=True)
    assert tied.head.weight is tied.embed.weight
    assert untied.head.weight is not untied.embed.weight
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(untied) - count(tied) == 64 * 32
    assert tied.embed.weight.std().item() == pytest.approx(1.0, rel=0.1)  # embedding init, not fan-in


def test_init_statistics():
    model = make(width=512, head_dim=64, init_std=0.7, vocab=256)
    for w, fan_in in [(model.blocks[0].attn.q.weight, 512), (model.blocks[0].mlp.down.weight, 3 * 512)]:
        assert w.std().item() == pytest.approx(0.7 / math.sqrt(fan_in), rel=0.05)
    assert model.embed.weight.std().item() == pytest.approx(1.0, rel=0.05)
    assert all(torch.all(m.weight == 1) for m in model.modules() if isinstance(m, nn.RMSNorm))
    torch.testing.assert_close(make(seed=3).head.weight, make(seed=3).head.weight, rtol=0, atol=0)


def test_flops_per_token_hand_count():
    model = GPT(GPTConfig(width=8, depth=3, head_dim=4, mlp_ratio=2.0, context=5, vocab=10))
    per_block = 4 * 8 * 8 + 3 * 8 * 16  # q, k, v, o + gate, up, down
    matmul_params = 3 * per_block + 8 * 10  # + readout; the embedding lookup costs nothing
    assert matmul_params == sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    assert model.flops_per_token() == 6 * matmul_params + 12 * 3 * 8 * 5


# --- torch.compile --------------------------------------------------------------------------------


def test_compile_matches_eager():
    if not torch._dynamo.is_dynamo_supported():
        pytest.skip("torch.compile (dynamo) is not supported on this Python")
    if shutil.which("g++") is None:
        pytest.skip("torch.compile's inductor backend needs a C++ compiler (g++) on CPU")
    model = make(width=16, depth=1, head_dim=8, context=8, vocab=32)
    idx = tokens(model.config)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, fullgraph=True)(idx), model(idx), rtol=0, atol=1e-5)
