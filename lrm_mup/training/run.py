"""The names `lrm_mup.training.run` held before the training package was split by concern (config, build, engine,
run_folder). Import them from `lrm_mup.training`; this module goes once no caller uses it."""
from .config import DEVICES, EXECUTION, PATHS, SCHEDULES, TrainConfig, lr_factor
from .engine import Run
from .run_folder import TrainResult, train

__all__ = ["TrainConfig", "lr_factor", "EXECUTION", "SCHEDULES", "DEVICES", "PATHS", "Run", "TrainResult", "train"]
