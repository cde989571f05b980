"""Hugging Face `Trainer` with lrm_mup's optimizer and clipping: the supported way to train a parametrized HF model
with transformers' training loop.

    model = parametrize(AutoModelForCausalLM.from_config(cfg), base_shapes(base, delta), recipe="lrm")
    trainer = MupTrainer(model=model, args=TrainingArguments(..., learning_rate=3e-3, weight_decay=0.1),
                         train_dataset=dataset)
    trainer.train()

`Trainer`'s own optimizer puts every parameter in one of two plain AdamW groups (decay / no decay): μP's per-layer
LR and WD scales are lost and the learnable multipliers get the matrices' weight decay; its `max_grad_norm` clips
with the multipliers' gradients in the norm. `MupTrainer` builds the optimizer with `lrm_mup.build_optimizer` (one
group per LR/WD scale, multipliers with their own LR and WD `mult_lr` / `mult_wd`) and clips with
`lrm_mup.core.optim.clip_grad_norm_` (the global norm of the effective gradients, multipliers excluded); the LR
schedule, logging and everything else stay transformers'.

Checkpoints: `save_pretrained` is refused on a parametrized model (a plain HF checkpoint of the unmerged factors
would load as a wrong model), so `MupTrainer` saves its checkpoints as the parametrized model's own state (W̃, the
multipliers and the `lrm_mup_unmerged` marker, in `model.safetensors`), which `Trainer`'s
`resume_from_checkpoint` loads back into the same parametrized model. The plain HF checkpoint for `from_pretrained`
is `lrm_mup.save_pretrained(trainer.model, folder)` after training.

`transformers` is an optional dependency: this module imports it at the top (the class derives from `Trainer`),
and nothing in lrm_mup imports this module; import it yourself (`from lrm_mup.training.hf_trainer import
MupTrainer`).
"""
from __future__ import annotations

import os

import safetensors.torch
import torch
from transformers import Trainer  # optional dependency: this module exists to extend it (module docstring)
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.utils import SAFE_WEIGHTS_NAME

from ..core.multipliers import multiplied_modules
from ..core.optim import MULTIPLIER_WD, build_optimizer, clip_grad_norm_
from ..errors import ConfigError

__all__ = ["MupTrainer"]


class MupTrainer(Trainer):
    """`transformers.Trainer` whose optimizer is `lrm_mup.build_optimizer` and whose gradient clipping is
    `lrm_mup.core.optim.clip_grad_norm_` (module docstring).

    The matrices' LR and weight decay are `args.learning_rate` and `args.weight_decay` (times each layer's μP
    scales), AdamW's betas and eps are `args.adam_beta1/2` and `args.adam_epsilon`; `optimizer` ("adamw" or
    "muon"), `adam_lr`, `mult_lr` (default: the AdamW LR / 4) and `mult_wd` are build_optimizer's. `args.max_grad_norm`
    is the clipping threshold (0: off). The model must be parametrized (`lrm_mup.parametrize`)."""

    def __init__(self, *args, optimizer: str = "adamw", adam_lr: float | None = None, mult_lr: float | None = None,
                 mult_wd: float = MULTIPLIER_WD, **kwargs):
        self.lrm_options = {"optimizer": optimizer, "adam_lr": adam_lr, "mult_lr": mult_lr, "mult_wd": mult_wd}
        super().__init__(*args, **kwargs)
        if not multiplied_modules(self.model):
            raise ConfigError(f"MupTrainer needs a parametrized model (lrm_mup.parametrize), not a plain "
                              f"{type(self.model).__name__}: parametrize it first, or use transformers.Trainer")

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """lrm_mup's optimizer for the model (once; a given `optimizers=(opt, ...)` is kept)."""
        if self.optimizer is None:
            opts = self.lrm_options
            self.optimizer = build_optimizer(
                self.model if model is None else model, opts["optimizer"], self.args.learning_rate,
                self.args.weight_decay, adam_lr=opts["adam_lr"], mult_lr=opts["mult_lr"], mult_wd=opts["mult_wd"],
                betas=(self.args.adam_beta1, self.args.adam_beta2), eps=self.args.adam_epsilon)
        return self.optimizer

    def _clip_grad_norm(self, model):
        """Trainer's clipping hook (called when `args.max_grad_norm > 0`): lrm_mup's clip over the parametrized
        model (unwrapped from accelerate's wrappers); returns the norm before clipping, which Trainer logs."""
        return clip_grad_norm_(self.accelerator.unwrap_model(model), self.args.max_grad_norm)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Trainer's checkpoint writer: the parametrized model's own state (module docstring), not
        `save_pretrained`, which a parametrized model refuses. Resume (`train(resume_from_checkpoint=...)`) loads it
        with `load_state_dict`; shared tensors (a tied readout) are written once."""
        output_dir = self.args.output_dir if output_dir is None else output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        safetensors.torch.save_model(model, os.path.join(output_dir, SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
