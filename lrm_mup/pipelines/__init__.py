"""Pipelines: stages chained end to end. `run_demo` (coordinate check → sweep → transfer → report),
`tuning_report` (a sweep's and a transfer's records gathered into the report) and `run_ablation` (the tuning tiers
and cost curves of a tiers file → their report). The CLI calls these; nothing below
imports them."""
from .ablation import run_ablation
from .demo import run_demo
from .tuning_report import tuning_report

__all__ = ["run_demo", "tuning_report", "run_ablation"]
