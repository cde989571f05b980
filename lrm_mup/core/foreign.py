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
"""
from __future__ import annotations

import os

import torch
from torch import nn

from ..errors import RecipeError
from .multipliers import merge
from .parametrization import UNMERGED_MARKER, parametrization_of
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
    """On an HF model: refuse resize_token_embeddings and save_pretrained, and mark the state dict (module doc)."""
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
