"""Pipelines: stages chained end to end. `run_demo` (coordinate check → sweep → transfer → report) and
`tuning_report` (a sweep's and a transfer's records gathered into the report). The CLI calls these; nothing below
imports them."""
from .demo import run_demo
from .tuning_report import tuning_report

__all__ = ["run_demo", "tuning_report"]
