"""Training: config -> parametrized model -> the step loop -> a run folder.

- `config`: `TrainConfig` (every setting of a run) and `lr_factor` (its LR schedule);
- `build`: `parametrized_model(cfg)`, the one function from a config to a parametrized model (meta device: the layer
  table), and `config_base_shapes(cfg)`;
- `engine`: `Run` (model, optimizer, schedule, data, device) and its step loop `Run.steps()`, yielding
  `lrm_mup.records.StepRecord`s; `lockstep` steps several runs together (a sweep trial's seeds);
- `run_folder`: `train(cfg, out)`, the loop into a run folder (metrics, checkpoints, resume, the folder's lock);
  `read_metrics`, `final_status`, `load_checkpoint` read a run folder's files (a damaged one: one line)
- `distributed`: the processes torchrun starts (DDP / FSDP).
"""
from ..records import RunResult
from .build import config_base_shapes, parametrized_model
from .config import DEVICES, EXECUTION, PATHS, SCHEDULES, TrainConfig, lr_factor
from .engine import Run, diverged, lockstep
from .run_folder import TrainResult, final_status, load_checkpoint, read_metrics, resumed_config, train

__all__ = ["TrainConfig", "lr_factor", "EXECUTION", "SCHEDULES", "DEVICES", "PATHS", "parametrized_model",
           "config_base_shapes", "Run", "lockstep", "diverged", "RunResult", "TrainResult", "train", "resumed_config",
           "read_metrics", "final_status", "load_checkpoint"]
