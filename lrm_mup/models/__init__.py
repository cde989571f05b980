"""Models chosen by name (`--model`, a sweep file's `[model] name`): the registry every stage builds from.

A model entry is a constructor taking the width first (`build(width, **fields)`), so base, delta and target are
built from one definition; the remaining fields are the config's model fields (depth, head_dim, heads, context,
init_std, vocab; `config`, an HF config file, for `hf:` models). A name is one of (torchtitan style):

    proxy                  the built-in GPT (`proxy.py`: `GPTConfig` and `GPT`)
    hybrid                 Falcon-H1's attention ∥ Mamba-2 block (`hybrid.py`: `HybridConfig` and `Hybrid`; its
                           scan in `ssd.py`)
    hf:llama, hf:qwen3,    Hugging Face transformers models built from an HF config at the asked width
    hf:mistral, hf:gpt2,   (`hf.py`: the MLP by ratio, heads by a fixed head dim or count, Falcon-H1's SSM by a fixed
    hf:falcon_h1           SSM head dim); with `config` (the CLI's
                           --model-config FILE) a user's own HF config JSON, `hf:TYPE` its model_type, is scaled
    pkg.module:build       a user's builder `build(width) -> nn.Module`, imported by name (called with the width only)
    NAME                   a constructor added in this process by `register_model(NAME, build)`

HF models return an output object (`.logits`), the proxy a tensor, other models maybe a tuple: `logits_of` takes the
logits out of any of them, for the training engine, evaluation, coordinate checks and the HF Trainer alike.
"""
from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

import torch
from torch import nn

from .._names import BUILDER, HF_NAME, HF_PREFIX, check_table
from .._names import MODELS as BUILTIN_MODELS
from ..errors import ConfigError
from .hf import FAMILIES, check_hf_fields, hf_builder, hf_model
from .hybrid import Hybrid, HybridConfig, hybrid
from .proxy import GPT, GPTConfig, proxy

__all__ = ["MODELS", "GPT", "GPTConfig", "proxy", "Hybrid", "HybridConfig", "hybrid", "register_model",
           "build_model", "model_builder", "check_model", "logits_of", "hf_model", "is_hf", "flops_per_token"]

MODELS: dict[str, Callable[..., nn.Module]] = {"proxy": proxy, "hybrid": hybrid,
                                               **{f"{HF_PREFIX}{k}": hf_builder(k) for k in FAMILIES}}
check_table("MODELS", MODELS, BUILTIN_MODELS)


def register_model(name: str, build: Callable[..., nn.Module]) -> None:
    """Make `build(width, **fields)` available as model `name` (one definition, any width)."""
    if not (isinstance(name, str) and name) or not callable(build):
        raise ConfigError(f"register_model needs a name and a constructor, not {name!r}, {build!r}")
    MODELS[name] = build


def is_hf(name: str) -> bool:
    """Whether model `name` is built by transformers (`hf:TYPE`)."""
    return isinstance(name, str) and bool(HF_NAME.fullmatch(name))


def _import_builder(name: str) -> Callable[[int], nn.Module]:
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"model {name!r}: module {module_name!r} cannot be imported ({e}); put it on PYTHONPATH "
                          "or install it") from None
    build = getattr(module, attr, None)
    if not callable(build):
        raise ConfigError(f"model {name!r}: {module_name!r} has no callable {attr!r}; define build(width) -> "
                          "nn.Module there")
    try:
        inspect.signature(build).bind(1)
    except TypeError:
        raise ConfigError(f"model {name!r}: {attr}{inspect.signature(build)} cannot be called as {attr}(width); "
                          "a builder takes the width alone") from None
    except ValueError:  # a builtin or C callable without a signature: called as given
        pass
    return build


def model_builder(name: str) -> Callable[..., nn.Module]:
    """The constructor `build(width, **fields)` of model `name` (module docstring: registered, hf:TYPE, or
    pkg.module:build, whose builder gets the width alone)."""
    if name in MODELS:
        return MODELS[name]
    if is_hf(name):
        return lambda width, **fields: hf_model(name, width, **fields)
    if isinstance(name, str) and BUILDER.fullmatch(name):
        build = _import_builder(name)
        return lambda width, **fields: build(width)
    raise ConfigError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}, hf:TYPE with --model-config FILE, "
                      "or pkg.module:build (a builder build(width) -> nn.Module)")


def check_model(name: str, width: int, **fields) -> None:
    """Raise ConfigError (one line) when model `name` cannot be built at `width` with `fields`; builds nothing
    for the proxy and HF models (their configs are checked), imports a user's builder."""
    builtin = {"proxy": (proxy, GPTConfig), "hybrid": (hybrid, HybridConfig)}
    if name in builtin and MODELS[name] is builtin[name][0]:
        builtin[name][1](width=width, **{k: v for k, v in fields.items() if k != "config"})
    elif is_hf(name) and (name not in MODELS or MODELS[name].__module__ == hf_builder.__module__):
        check_hf_fields(name, width, **fields)
    else:
        model_builder(name)


def build_model(name: str, width: int, **fields) -> nn.Module:
    """The model `name` at `width`."""
    return model_builder(name)(width, **fields)


def logits_of(output) -> torch.Tensor:
    """The logits of a language model's forward output: the tensor itself, a tuple's first element, or the output
    object's `.logits` (transformers' `CausalLMOutput...`). The one place that knows the three conventions."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ConfigError(f"the model's forward returned {type(output).__name__}, not logits: return a tensor "
                      "(B, T, vocab), a tuple whose first element is one, or an object with .logits")


def flops_per_token(model: nn.Module, context: int) -> float:
    """Training (forward + backward) FLOPs per token: the model's own `flops_per_token()` where it has one (the
    proxy), else, for a model with an HF config, the same PaLM convention counted from its modules: 6 × the weights
    of every matrix layer but the embedding lookups (a tied readout counted as a matmul), plus 12 · layers · heads ·
    head dim · context for q·k and attention·v; 0 for any other model (unknown)."""
    own = getattr(model, "flops_per_token", None)
    if callable(own):
        return float(own())
    config = getattr(model, "config", None)
    layers, heads = getattr(config, "num_hidden_layers", None), getattr(config, "num_attention_heads", None)
    hidden = getattr(config, "hidden_size", None)
    if not (layers and heads and hidden):
        return 0.0
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    weights = sum(m.weight.numel() for m in model.modules() if not isinstance(m, nn.Embedding)
                  and isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() == 2)
    return float(6 * weights + 12 * layers * heads * head_dim * context)
