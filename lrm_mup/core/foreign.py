"""Hugging Face transformers models under `parametrize`, duck-typed on `model.config` (transformers is an optional
dependency: nothing here imports it).

What the core reads from an HF config: the head dim (`shapes.head_dim_of`: `config.head_dim`, else
hidden_size // num_attention_heads), so μP's 1/d_head reaches HF attention through the query layer's forward
multiplier (HF's attention multiplies q·kᵀ by `module.scaling` = head_dim^-1/2; q_proj's factor √(d_base / d)
turns that into √d_base / d, μP's α/d_head); GQA (`num_key_value_heads`) and tying (`tie_word_embeddings`) are in
`attention_config` for whoever needs them (k/v projections' kinds come from their shapes, like every matrix's).

What `parametrize` guards on an HF model (`guard`), since these would silently break the parametrization:
- `model.resize_token_embeddings` refuses: transformers replaces the embedding and readout with plain layers,
  which drops the readout's μP factor (resize before parametrizing: build the model with the new vocabulary);
- `model.save_pretrained` refuses: it would write the stored (unmerged) weights, which a plain class loads as a
  wrong model with only a load report. `lrm_mup.save_pretrained(model, folder)` writes the merged model, a plain HF
  checkpoint that `from_pretrained` loads with identical logits; `torch.save(model.state_dict())` keeps the
  unmerged state to resume training;
- the state dict carries a marker entry (`lrm_mup_unmerged`), so a plain model's `load_state_dict` refuses an
  unmerged state by name ("Unexpected key(s) in state_dict: lrm_mup_unmerged").

Falcon-H1 (transformers' FalconH1ForCausalLM) multiplies activations by fixed constants from its config in its own
forward (`FALCON_H1_MULTIPLIERS`: where each one is applied). A constant c on a matrix's input or output is the
fixed scalar c on that matrix (exact without biases, Falcon-H1's default), so each is the α of one lrm_mup role:
`falcon_h1_alphas(config)` gives them as the `alphas` of our own hybrid (models/hybrid.py), whose forward has none.
On the HF model itself the rule is: **the config's constants are the base's α, kept in HF's forward at every width;
μP adds only its width factor (the layer's fixed_mult, α = 1 there), so each constant is applied exactly once.**
`alphas` for a role whose constant the model applies itself are refused (`check_builtin_alphas`): set the config
field instead. At the base width every recipe is then the HF model itself, whatever the constants.

Its Mamba-2 mixer has ONE in_proj for the five segments z, x, B, C, dt (role `ssm_in`, hidden by its shapes) where
our hybrid has five matrices. Under Adam μP's forward multiplier is α/m for every segment (the hidden rule for z, x,
dt; the readout rule for B, C, whose fan-out is the fixed state size), and Falcon-H1's per-segment α are its own
`mup_vector`, applied by HF; what the readout rule changes is the init: `fused_ssm_init` gives the B and C rows μP's
readout init (std × 1/√m more than the hidden rows: variance ∝ 1/fan_in²). What differs from our five-matrix hybrid:
- learnable multipliers: row multipliers on the fused matrix are per segment row, as on five matrices; the column
  multiplier is ONE vector shared by the five segments (ours: one per segment; both all-ones at init). Under
  placement symmetry-free `ssm_in` gets a row multiplier on every segment (appendix C: z and dt only);
- lr-wd: the B, C rows share the hidden WD × m of the fused matrix (ours: the readout's × 1);
- Muon: the fused matrix takes the hidden rule (no width factor) on all rows, B and C included;
- dt is taken as hidden (SSM heads grow with width, as `hf:falcon_h1` builds it); our hybrid's fixed-heads case
  (dt readout-like) is not told apart on the fused matrix;
- init: HF's (N(0, 0.02²) rescaled to μP), where our hybrid starts B, C (and a readout-like dt) at zero.

transformers' Mamba-2 mixers hand `out_proj.weight` itself to mamba_ssm's fused kernel when it is installed (in
training, without a cache), which would skip out_proj's μP and LRM multipliers: `fused_ssm_kernel` says whether that
path is on, and a parametrized mixer refuses to run it (`guard`).
"""
from __future__ import annotations

import functools
import importlib.util
import inspect
import os
import sys

import torch
from torch import nn

from ..errors import RecipeError
from .multipliers import merge
from .parametrization import UNMERGED_MARKER, parametrization_of
from .roles import ROLE_KIND, fused_ssm_segments
from .shapes import head_dim_of


def is_hf_model(model: nn.Module) -> bool:
    """A transformers PreTrainedModel, duck-typed: a `config` with `to_dict` and a `save_pretrained` method."""
    return callable(getattr(getattr(model, "config", None), "to_dict", None)) and callable(
        getattr(model, "save_pretrained", None))


def attention_config(model: nn.Module) -> dict:
    """{"heads", "kv_heads", "head_dim", "tied"} from an HF model's config (None where it does not say)."""
    config = getattr(model, "config", None)
    heads = getattr(config, "num_attention_heads", None)
    return {"heads": heads, "kv_heads": getattr(config, "num_key_value_heads", None) or heads,
            "head_dim": head_dim_of(model), "tied": getattr(config, "tie_word_embeddings", None)}


def _refuse_resize(*args, **kwargs):
    raise RecipeError("resize_token_embeddings after parametrize would replace the embedding and readout with plain "
                      "layers (dropping μP's readout factor): build the model with the new vocabulary, then "
                      "parametrize it")


def _refuse_save(*args, **kwargs):
    raise RecipeError("save_pretrained of a parametrized model would write its unmerged weights, which a plain "
                      "model class loads as a wrong model: use lrm_mup.save_pretrained(model, folder) for a plain "
                      "HF checkpoint (merged), or torch.save(model.state_dict(), path) to resume training")


def guard(model: nn.Module) -> None:
    """Fused Mamba-2 mixers refuse the fused kernel that would skip out_proj's multipliers (`fused_ssm_kernel`); on
    an HF model: refuse resize_token_embeddings and save_pretrained, and mark the state dict (module doc)."""
    for name, module in model.named_modules():
        if fused_ssm_segments(module) is not None and _kernel_entry(type(module)) is not None:
            module.register_forward_pre_hook(functools.partial(_refuse_fused_kernel, name), with_kwargs=True)
    if not is_hf_model(model):
        return
    weight = next(model.parameters())
    model.register_buffer(UNMERGED_MARKER, torch.ones((), dtype=weight.dtype, device=weight.device))
    model.__dict__["resize_token_embeddings"] = _refuse_resize
    model.__dict__["save_pretrained"] = _refuse_save


@torch.no_grad()
def save_pretrained(model: nn.Module, folder: str | os.PathLike, **kwargs) -> nn.Module:
    """Merge the parametrized HF `model` (`lrm_mup.merge`) and write it with transformers' `save_pretrained(folder,
    **kwargs)`: a plain checkpoint of the model's own class, which `from_pretrained` loads with identical logits.
    Returns the merged model. The merged readout is its own matrix (μP's readout factor differs from the
    embedding's), so the saved config says `tie_word_embeddings=False` where the model was tied."""
    parametrization_of(model)  # the one "not parametrized" error
    if not is_hf_model(model):
        raise RecipeError(f"save_pretrained needs a Hugging Face model (a config and save_pretrained); "
                          f"{type(model).__name__} is not one: use lrm_mup.merge(model) and save it your way")
    merged = merge(model)
    inp, out = merged.get_input_embeddings(), merged.get_output_embeddings()
    if inp is not None and out is not None and out.weight is not inp.weight:
        for config in {id(c): c for c in (merged.config, merged.config.get_text_config())}.values():
            config.tie_word_embeddings = False
    merged.save_pretrained(folder, **kwargs)
    return merged


# ----------------------------------------------------------------------------------------------------------
# Falcon-H1's built-in multipliers

# config field -> where transformers' modeling_falcon_h1.py applies it -> the role whose α it is
FALCON_H1_MULTIPLIERS = {
    "embedding_multiplier": "FalconH1Model: embed_tokens(ids) × c -> embedding",
    "lm_head_multiplier": "FalconH1ForCausalLM: lm_head(h) × c -> readout",
    "attention_in_multiplier": "FalconH1DecoderLayer: self_attn(n × c) -> query, key, value",
    "key_multiplier": "FalconH1Attention: k_proj(x) × c (before RoPE) -> key",
    "attention_out_multiplier": "FalconH1DecoderLayer: self_attn(...) × c, after o_proj -> attn_out",
    "mlp_multipliers": "FalconH1MLP: [gate: act(gate_proj(x) × c0), down: down_proj(y) × c1] -> mlp_gate, mlp_down",
    "ssm_in_multiplier": "FalconH1Mixer: in_proj(x × c) -> every in_proj segment",
    "ssm_multipliers": "FalconH1Mixer: in_proj(x) × mup_vector, [z, x, B, C, dt] per segment row -> ssm_z, ssm_x, "
                       "ssm_b, ssm_c, ssm_dt",
    "ssm_out_multiplier": "FalconH1DecoderLayer: mamba(...) × c, after out_proj -> ssm_out",
}


def _is_falcon_h1_config(config) -> bool:
    return all(hasattr(config, f) for f in FALCON_H1_MULTIPLIERS)


def falcon_h1_alphas(config) -> dict[str, float]:
    """Falcon-H1's forward multipliers (a FalconH1Config, or any object with its fields) as the `alphas` of the
    lrm_mup roles of our hybrid (models/hybrid.py): `parametrize(hybrid, ..., alphas=falcon_h1_alphas(config))`
    applies each where Falcon-H1 does (`FALCON_H1_MULTIPLIERS`). A product where two act on one matrix (the key:
    attention_in × key; each in_proj segment: ssm_in × its ssm_multipliers entry). mlp_up has none (α 1)."""
    if not _is_falcon_h1_config(config):
        missing = [f for f in FALCON_H1_MULTIPLIERS if not hasattr(config, f)]
        raise RecipeError(f"falcon_h1_alphas needs a Falcon-H1 config; {type(config).__name__} has no "
                          f"{', '.join(missing)}")
    c = {f: getattr(config, f) for f in FALCON_H1_MULTIPLIERS}
    gate, down = (float(v) for v in c["mlp_multipliers"])
    z, x, b, c_seg, dt = (float(v) for v in c["ssm_multipliers"])
    attn_in, ssm_in = float(c["attention_in_multiplier"]), float(c["ssm_in_multiplier"])
    alphas = {"embedding": c["embedding_multiplier"], "readout": c["lm_head_multiplier"],
              "query": attn_in, "key": attn_in * c["key_multiplier"], "value": attn_in,
              "attn_out": c["attention_out_multiplier"], "mlp_gate": gate, "mlp_down": down,
              "ssm_z": ssm_in * z, "ssm_x": ssm_in * x, "ssm_b": ssm_in * b, "ssm_c": ssm_in * c_seg,
              "ssm_dt": ssm_in * dt, "ssm_dt_readout": ssm_in * dt,
              "ssm_out": c["ssm_out_multiplier"], "ssm_out_normed": c["ssm_out_multiplier"]}
    return {role: float(v) for role, v in alphas.items()}


# role of the HF model's own matrices -> the config fields its forward multiplies that matrix by
_FALCON_H1_ROLE_FIELDS = {
    "embedding": "embedding_multiplier", "readout": "lm_head_multiplier", "query": "attention_in_multiplier",
    "key": "attention_in_multiplier and key_multiplier", "value": "attention_in_multiplier",
    "attn_out": "attention_out_multiplier", "mlp_gate": "mlp_multipliers[0]", "mlp_down": "mlp_multipliers[1]",
    "ssm_in": "ssm_in_multiplier and ssm_multipliers", "ssm_out": "ssm_out_multiplier",
    "ssm_out_normed": "ssm_out_multiplier",
}


def builtin_multipliers(model: nn.Module) -> dict[str, str]:
    """{role: the config fields} of the constants a model's own forward applies to the matrices of that role
    (Falcon-H1's, read as the base's α: module doc); {} for a model without any."""
    config = getattr(model, "config", None)
    if not _is_falcon_h1_config(config) or not is_hf_model(model):
        return {}
    return dict(_FALCON_H1_ROLE_FIELDS)


def check_builtin_alphas(model: nn.Module, alphas: dict[str, float] | None) -> None:
    """Refuse an α (by role or kind) for matrices whose constant the model's forward applies itself: it would be
    applied twice (module doc: the config's constant is the base's α; set it there)."""
    builtin = builtin_multipliers(model)
    for key in alphas or {}:
        role = next((r for r in builtin if r == key or ROLE_KIND[r] == key), None)
        if role is not None:
            raise RecipeError(f"alpha for {key!r}: {type(model).__name__} multiplies its {role} matrices by "
                              f"config.{builtin[role]} in its own forward (the base's α, kept at every width); "
                              "set it in the model's config, not in alphas")


@torch.no_grad()
def fused_ssm_init(model: nn.Module, readout_init: bool) -> None:
    """μP's readout init on the B and C rows of every fused Mamba-2 in_proj (module doc): × m^-1/2 on their stored
    rows, m the in_proj's fan-in multiplier, when the recipe gives readouts μP's init (every recipe but sp). The
    other rows keep the hidden rule the whole matrix got; at the base width (m = 1) nothing changes."""
    if not readout_init:
        return
    for module in model.modules():
        segments = fused_ssm_segments(module)
        layer = getattr(module, "in_proj", None)
        record = getattr(layer, "parametrization", None)
        if segments is None or record is None or record.fan_in_mult == 1.0 or record.tied:
            continue
        rows = layer._matrix(layer.weight)
        for seg in ("B", "C"):
            rows[segments[seg]] *= record.fan_in_mult ** -0.5


# transformers' (5.2x) module-level entry point of mamba_ssm's fused Mamba-2 kernel, in each Mamba-2 model's module
_KERNEL_ENTRY = "mamba2_split_conv1d_scan_combined"


@functools.cache
def _kernel_entry(cls: type):
    """The kernel dispatcher of the transformers module defining `cls`, or None."""
    return getattr(sys.modules.get(cls.__module__), _KERNEL_ENTRY, None)


@functools.cache
def _kernel_of(entry) -> str | None:
    """The implementation behind transformers' dispatcher `entry` (`use_kernel_func_from_hub_with_fallback`: the
    package's kernel, else its own torch stand-in that returns None so that the mixer runs its torch path), named
    module.function; None for the torch stand-in."""
    found = inspect.getclosurevars(entry).nonlocals if inspect.isfunction(entry) else {}
    implementation, stand_in = found.get("implementation"), found.get("torch_function", inspect.unwrap(entry))
    if implementation is None:  # a dispatcher of another shape: the kernel is there when mamba_ssm is
        return "mamba_ssm" if importlib.util.find_spec("mamba_ssm") is not None else None
    if implementation is stand_in:
        return None
    return f"{getattr(implementation, '__module__', '?')}.{getattr(implementation, '__qualname__', '?')}"


def fused_ssm_kernel(mixer: nn.Module, training: bool | None = None, cache=None) -> str | None:
    """The fused kernel transformers' Mamba-2 `mixer` (FalconH1Mixer, Mamba2Mixer, ...) would run its forward
    through, named module.function, or None where it runs its torch path. transformers calls the kernel (mamba_ssm's
    mamba_split_conv1d_scan_combined, where mamba_ssm is installed) in training without a cache, and hands it
    `out_proj.weight` itself: a parametrized out_proj's multipliers would be skipped. `training` defaults to the
    mixer's mode."""
    entry = _kernel_entry(type(mixer))
    if entry is None or fused_ssm_segments(mixer) is None:
        return None
    if not (mixer.training if training is None else training) or cache is not None:
        return None
    return _kernel_of(entry)


def _refuse_fused_kernel(name: str, mixer: nn.Module, args, kwargs) -> None:
    """Forward pre-hook of a parametrized fused Mamba-2 mixer (`guard`): refuse the fused kernel path, which would
    read out_proj's stored weight. A merged model (plain out_proj) runs it: its weight is the effective one."""
    if getattr(mixer.out_proj, "parametrization", None) is None:
        return
    kernel = fused_ssm_kernel(mixer, cache=kwargs.get("cache", kwargs.get("cache_params")))
    if kernel is not None:
        raise RecipeError(f"{type(mixer).__name__} {name!r} would train through the fused kernel {kernel}, which "
                          "reads out_proj.weight itself and skips its μP/LRM multipliers: train where mamba_ssm is "
                          "not installed (transformers then takes its torch path), or train lrm_mup.merge(model)")
