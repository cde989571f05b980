"""Tuning stages built on training runs: coordinate checks (`coord_check`), Optuna sweeps on a proxy (`sweep`) and
transfer of the winners to wide models (`transfer`), and the tuning tiers and tuning-cost curves built on those two
(`tiers`). Each is a module with its own public names."""
from . import coord_check, sweep, tiers, transfer

__all__ = ["coord_check", "sweep", "transfer", "tiers"]
