"""Typed records that stages exchange (frozen dataclasses with a schema version and a strict-JSON round trip; see
`lrm_mup._record`). Training yields `StepRecord`s and returns a `RunResult`; the tuning stages, the analysis and the
report read and write only records like these, never each other's internals.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ._record import Record

RUN_STATUSES = ("ok", "diverged", "stopped")


@dataclass(frozen=True)
class StepRecord(Record):
    """One optimizer step of a run: train loss (nats, averaged over ranks), the clipped-against gradient norm
    (multipliers excluded, lr-only's units), the first group's LR, tokens and model FLOPs so far, throughput, and
    validation bits/byte when the step evaluated."""

    SCHEMA: ClassVar[str] = "step"
    step: int
    loss: float
    grad_norm: float
    lr: float
    tokens: int
    flops: float
    tokens_per_s: float
    val_bpb: float | None = None


@dataclass(frozen=True)
class RunResult(Record):
    """How a training run ended: status ("ok", "diverged" or "stopped": stopped early and resumable), the last step,
    its train loss (nats), validation bits/byte, tokens, model training FLOPs and wall seconds."""

    SCHEMA: ClassVar[str] = "run-result"
    status: str
    step: int
    train_loss: float
    val_bpb: float
    tokens: int
    flops: float
    seconds: float

    def summary(self) -> str:
        return (f"{self.status}: step {self.step}, train loss {self.train_loss:.4f} nats, "
                f"val {self.val_bpb:.4f} bits/byte, {self.tokens:,} tokens, {self.flops:.3g} FLOPs, "
                f"{self.seconds:.1f} s")
