"""Tuning stages built on training runs: coordinate checks, Optuna sweeps on a proxy, transfer to wide models."""
