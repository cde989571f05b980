"""Training: a config, the run it builds (model, optimizer, schedule, data), its step loop and its run folder."""
from .run import EXECUTION, Run, TrainConfig, TrainResult, lr_factor, train

__all__ = ["TrainConfig", "Run", "TrainResult", "train", "lr_factor", "EXECUTION"]
