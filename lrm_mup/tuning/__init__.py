"""Tuning stages built on training runs: coordinate checks (`coord_check`), Optuna sweeps on a proxy (`sweep`) and
transfer of the winners to wide models (`transfer`). Each is a module with its own public names."""
from . import coord_check, sweep, transfer

__all__ = ["coord_check", "sweep", "transfer"]
