"""Hugging Face `transformers` causal LMs at any width: the `hf:llama`, `hf:qwen3`, `hf:mistral`, `hf:gpt2`,
`hf:falcon_h1` models and a user's own HF config file (`--model-config FILE`), scaled to the asked width.

A family is an HF config (its `model_type` and the traits a user chose: norms, activation, tying, biases, GQA) that
lends its shape RATIOS, not its sizes. At width `w` (the hidden size):

    intermediate = round(ratio · w),  ratio = intermediate / hidden of the family config (GPT-2: n_inner, 4 by default)
    heads        = w / head_dim        with a fixed head dim (`head_dim`; default: the file's own, else 32)
                 = heads               with a fixed head count (`heads`): the head dim w / heads grows with width
    kv heads     = heads / group,      group = heads / kv heads of the family config (GQA kept)
    d_ssm        = round(ratio · w),   ratio = mamba_d_ssm / hidden (Mamba-2 mixers: Falcon-H1; mamba_expand if unset)
    SSM heads    = d_ssm / mamba_d_head  (a fixed SSM head dim: widening adds SSM heads; state size, groups fixed)

and the run sets depth (`num_hidden_layers`), context (`max_position_embeddings`) and the vocabulary (the
tokenizer's). The model is `AutoModelForCausalLM.from_config` (no download: the config is built here or read from
the user's JSON), with the KV cache off (training only) and, for the built-in families, dropout 0.

`transformers` is an optional dependency: this module imports it inside the functions that build a model, so that
`import lrm_mup.models` works without it (the registry lists these names either way).
"""
from __future__ import annotations

import contextlib
import json
import pathlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ..errors import ConfigError

DEFAULT_HEAD_DIM = 32  # the built-in families' fixed head dim (the proxy's default too)

# The built-in families: the config fields that set their traits (the sizes are set per width by `scaled_config`).
FAMILIES: dict[str, dict] = {
    "llama": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 192, "num_attention_heads": 2,
              "num_key_value_heads": 2, "head_dim": 32, "tie_word_embeddings": False},
    "qwen3": {"model_type": "qwen3", "hidden_size": 64, "intermediate_size": 192, "num_attention_heads": 2,
              "num_key_value_heads": 1, "head_dim": 32, "tie_word_embeddings": False},   # q_norm / k_norm, GQA 2
    "mistral": {"model_type": "mistral", "hidden_size": 64, "intermediate_size": 192, "num_attention_heads": 2,
                "num_key_value_heads": 1, "head_dim": 32, "tie_word_embeddings": False, "sliding_window": None},
    "gpt2": {"model_type": "gpt2", "n_embd": 64, "n_inner": 256, "n_head": 2, "resid_pdrop": 0.0,
             "embd_pdrop": 0.0, "attn_pdrop": 0.0},                                        # Conv1D, tied, learned pos
    # Falcon-H1: attention ∥ Mamba-2 in every layer, one fused in_proj; its multipliers at transformers' defaults (1;
    # a config file sets them: they are the base's α, core/foreign.py). Falcon-H1-0.5B: d_ssm 1.5 × hidden, SSM
    # head dim 64, state 128, no gated norm
    "falcon_h1": {"model_type": "falcon_h1", "hidden_size": 64, "intermediate_size": 192, "num_attention_heads": 2,
                  "num_key_value_heads": 2, "tie_word_embeddings": False, "mamba_d_ssm": 64, "mamba_n_heads": 4,
                  "mamba_d_head": 16, "mamba_d_state": 16, "mamba_n_groups": 1, "mamba_chunk_size": 32,
                  "mamba_rms_norm": False},
}
_NO_DROPOUT = {"attention_dropout": 0.0}
_TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def read_config_file(path: str | pathlib.Path) -> dict:
    """A user's HF config JSON (`config.json` of a checkpoint, or written by `config.to_json_file`) as a dict; it
    must name its `model_type` (the class `AutoModelForCausalLM` builds)."""
    p = pathlib.Path(path).expanduser()
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"model config {str(path)!r} cannot be read ({e.strerror}); pass an HF config.json") from None
    except ValueError as e:
        raise ConfigError(f"model config {str(path)!r} is not JSON ({e}); pass an HF config.json") from None
    if not isinstance(d, dict) or not isinstance(d.get("model_type"), str):
        raise ConfigError(f"model config {str(path)!r} has no \"model_type\" (e.g. \"llama\"); pass an HF "
                          "config.json, as written by config.to_json_file")
    return d


def family_of(name: str, config: str | None = None) -> dict:
    """The family config of model `hf:TYPE`: the built-in one, or the user's file (whose model_type must be TYPE)."""
    kind = name.removeprefix("hf:")
    if config is not None:
        d = read_config_file(config)
        if d["model_type"] != kind:
            raise ConfigError(f"model {name!r} does not match model config {config!r}, whose model_type is "
                              f"{d['model_type']!r}: use --model hf:{d['model_type']} or leave --model out")
        return d
    if kind not in FAMILIES:
        raise ConfigError(f"model {name!r}: no built-in config for {kind!r} (built-in: "
                          f"{', '.join('hf:' + k for k in FAMILIES)}); give your own with --model-config FILE")
    return {**FAMILIES[kind], **_NO_DROPOUT}


def _head_dim(cfg) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def scaled_config(family: dict, width: int, *, depth: int, context: int, vocab: int = 256,
                  head_dim: int | None = None, heads: int | None = None, init_std: float = 1.0):
    """The HF config of `family` at hidden size `width` (module docstring: the MLP by ratio, the heads by a fixed
    head dim or a fixed count, GQA kept); depth, context and vocab as given; `initializer_range` × init_std."""
    # optional dependency, imported where a model is built (module docstring)
    from transformers import AutoConfig

    d = dict(family)
    kind = d.pop("model_type")
    d.pop("transformers_version", None)
    base = AutoConfig.for_model(kind, **d)
    h0, n0 = base.hidden_size, base.num_attention_heads
    kv0 = getattr(base, "num_key_value_heads", None) or n0
    mlp_key = "intermediate_size" if hasattr(base, "intermediate_size") else "n_inner" if hasattr(base, "n_inner") \
        else None
    if heads is not None and head_dim is not None:
        raise ConfigError(f"heads={heads} and head_dim={head_dim} are both set: give one")
    if heads is None:
        head_dim = head_dim or _head_dim(base)
        if width % head_dim:
            raise ConfigError(f"head_dim={head_dim} must divide width={width} (model {kind!r})")
        heads = width // head_dim
    elif width % heads:
        raise ConfigError(f"heads={heads} must divide width={width} (model {kind!r})")
    head_dim = width // heads
    group = n0 // kv0 if n0 % kv0 == 0 else 1
    if heads % group:
        raise ConfigError(f"{heads} heads at width {width} do not split into the config's GQA groups of {group} "
                          f"(model {kind!r}): choose a width or head dim giving a multiple of {group} heads")
    new = base.to_dict()
    new.pop("model_type", None)
    new.pop("transformers_version", None)
    update = {"hidden_size": width, "num_attention_heads": heads, "num_hidden_layers": depth,
              "max_position_embeddings": context, "vocab_size": vocab, "use_cache": False,
              "initializer_range": base.initializer_range * init_std}
    if "num_key_value_heads" in new:
        update["num_key_value_heads"] = heads // group
    if "head_dim" in new:
        update["head_dim"] = head_dim
    if isinstance(new.get("layer_types"), list) and new["layer_types"]:  # per-layer kinds (Qwen3): the pattern, cycled
        update["layer_types"] = [new["layer_types"][i % len(new["layer_types"])] for i in range(depth)]
    if mlp_key is not None:
        inner = getattr(base, mlp_key) or 4 * h0  # GPT-2's n_inner None means 4 × hidden
        hidden = inner / h0 * width
        if abs(hidden - round(hidden)) > 1e-9 * hidden:
            raise ConfigError(f"the MLP ratio {inner}/{h0} × width {width} = {hidden} is not an integer "
                              f"(model {kind!r}): choose another width")
        update[mlp_key] = round(hidden)
    if "mamba_n_heads" in new:
        update.update(_ssm_fields(base, width, kind))
    for key in _TOKEN_IDS:  # ids of the family's own vocabulary that the run's does not have
        value = new.get(key)
        if isinstance(value, int) and not 0 <= value < vocab:
            update[key] = None
    cfg = AutoConfig.for_model(kind, **{**new, **update})
    for key, value in update.items():  # aliases (GPT-2's n_embd for hidden_size, ...) resolved by the config
        if key != "initializer_range" and getattr(cfg, key, value) != value:
            raise ConfigError(f"model {kind!r}: config field {key} came out {getattr(cfg, key)!r}, not {value!r}")
    return cfg


def _ssm_fields(base, width: int, kind: str) -> dict:
    """A Mamba-2 mixer's sizes at `width` (module docstring): d_ssm by its ratio to hidden, SSM heads by the fixed
    SSM head dim."""
    d_ssm0 = base.mamba_d_ssm if base.mamba_d_ssm is not None else base.mamba_expand * base.hidden_size
    d_ssm = d_ssm0 / base.hidden_size * width
    head = base.mamba_d_head
    if abs(d_ssm - round(d_ssm)) > 1e-9 * d_ssm or round(d_ssm) % head:
        raise ConfigError(f"the SSM width {d_ssm0}/{base.hidden_size} × width {width} = {d_ssm:g} is not a multiple "
                          f"of the SSM head dim mamba_d_head={head} (model {kind!r}): choose another width")
    return {"mamba_d_ssm": round(d_ssm), "mamba_n_heads": round(d_ssm) // head, "mamba_d_head": head}


def hf_model(name: str, width: int, *, depth: int = 2, context: int = 128, vocab: int = 256,
             head_dim: int | None = None, heads: int | None = None, init_std: float = 1.0,
             config: str | None = None) -> nn.Module:
    """Model `hf:TYPE` at `width`: `AutoModelForCausalLM.from_config` of the scaled family config (see
    `scaled_config`); `config` is a user's HF config JSON replacing the built-in family. HF's own init."""
    # optional dependency, imported where a model is built (module docstring)
    from transformers import AutoModelForCausalLM

    if head_dim is None and heads is None and config is None:
        head_dim = DEFAULT_HEAD_DIM
    cfg = scaled_config(family_of(name, config), width, depth=depth, context=context, vocab=vocab,
                        head_dim=head_dim, heads=heads, init_std=init_std)
    return AutoModelForCausalLM.from_config(cfg)


def check_hf_fields(name: str, width: int, *, context: int = 128, vocab: int = 256, head_dim: int | None = None,
                    heads: int | None = None,
                    config: str | None = None, depth: int = 1, init_std: float = 1.0) -> None:
    """Raise ConfigError when `hf:TYPE` cannot be built at `width` with these fields (nothing is built)."""
    if head_dim is None and heads is None and config is None:
        head_dim = DEFAULT_HEAD_DIM
    scaled_config(family_of(name, config), width, depth=depth, context=context, vocab=vocab, head_dim=head_dim,
                  heads=heads, init_std=init_std)


def hf_builder(kind: str):
    """The registry entry of the built-in family `kind`: `build(width, **fields)`."""
    def build(width: int, **fields) -> nn.Module:
        return hf_model(f"hf:{kind}", width, **fields)
    build.__name__ = build.__qualname__ = f"hf_{kind}"
    build.__doc__ = f"HF {kind} at `width` (lrm_mup.models.hf.hf_model)."
    return build


PROBE = "lrm_mup_probe"  # the attention implementation `attention_probe` registers with transformers
_TAPS: dict[int, Callable] = {}  # id(attention module) -> what receives its (q, k, scaling), while a probe is on


def _probe_attention(module, query, key, value, attention_mask, *args, **kwargs):
    """transformers' attention function (the `AttentionInterface` signature) that hands the query, key (post-RoPE,
    post-q/k-norm, one per head: GQA's shared keys repeated) and the softmax `scaling` to the module's tap, then
    computes the attention with the implementation the model had (`module._lrm_mup_impl`)."""
    # optional dependency: only reached from a model transformers built
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    tap = _TAPS.get(id(module))
    if tap is not None:
        k = key.detach()
        if k.shape[1] != query.shape[1]:  # GQA: each key head serves query.shape[1] / k.shape[1] query heads
            k = k.repeat_interleave(query.shape[1] // k.shape[1], dim=1)
        scaling = kwargs.get("scaling")
        tap(query.detach(), k, query.shape[-1] ** -0.5 if scaling is None else float(scaling))
    impl = getattr(module, "_lrm_mup_impl", "sdpa")
    fn = ALL_ATTENTION_FUNCTIONS[impl if impl in ALL_ATTENTION_FUNCTIONS else "sdpa"]
    return fn(module, query, key, value, attention_mask, *args, **kwargs)


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The attention modules of an HF model (those that call transformers' attention interface: they carry
    `config` and a `scaling` or `scale_attn_weights` attribute, and sit under a model with `_attn_implementation`)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "_attn_implementation"):
        return {}
    return {name: m for name, m in model.named_modules()
            if hasattr(m, "config") and (hasattr(m, "scaling") or hasattr(m, "scale_attn_weights"))
            and any(isinstance(c, nn.Linear) or type(c).__name__ == "Conv1D" for c in m.children())}


@contextlib.contextmanager
def attention_probe(model: nn.Module, tap: Callable[[str, torch.Tensor, torch.Tensor, float], None]) -> Iterator[bool]:
    """While on, every attention call of the HF `model` calls `tap(name, q, k, scaling)` (q, k: (B, H, T, d_head))
    before computing the attention as before: the logits q·kᵀ·scaling that SDPA never materializes can be measured
    on any model that uses transformers' attention-function registry (`AttentionInterface`), whatever its
    attention implementation. Yields False (and taps nothing) for a model that does not (a plain nn.Module)."""
    modules = attention_modules(model)
    if not modules:
        yield False
        return
    # optional dependency: `modules` is non-empty only for a model transformers built
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    config = model.config
    impl = config._attn_implementation or "sdpa"
    if PROBE not in ALL_ATTENTION_FUNCTIONS:
        ALL_ATTENTION_FUNCTIONS.register(PROBE, _probe_attention)
    if impl != PROBE:
        # the probe's masks are those of the implementation it delegates to (eager's are additive, sdpa's boolean)
        ALL_MASK_ATTENTION_FUNCTIONS.register(PROBE, ALL_MASK_ATTENTION_FUNCTIONS[impl])
    for name, m in modules.items():
        m._lrm_mup_impl = impl
        _TAPS[id(m)] = lambda q, k, s, name=name: tap(name, q, k, s)
    configs = {id(c): c for c in [config, *(getattr(m, "config", None) for m in modules.values())] if c is not None}
    saved = {key: c._attn_implementation for key, c in configs.items()}
    try:
        for c in configs.values():
            c._attn_implementation = PROBE
        yield True
    finally:
        for key, c in configs.items():
            c._attn_implementation = saved[key]
        for m in modules.values():
            _TAPS.pop(id(m), None)
