"""Estimators: pure reductions of sampler traces."""

from slt_jax.estimators.estimate import estimate_llc
from slt_jax.estimators.influence import (
    BIFResult,
    bif,
    bif_accumulator,
    estimate_bif,
    loss_kernel,
    loss_kernel_accumulator,
)
from slt_jax.estimators.llc import LLCResult, llc, runaway_chains
from slt_jax.estimators.sweep import LLCSweepResult, llc_over_checkpoints, refined_llc_sampler

__all__ = [
    "BIFResult",
    "LLCResult",
    "LLCSweepResult",
    "bif",
    "bif_accumulator",
    "estimate_bif",
    "estimate_llc",
    "llc",
    "llc_over_checkpoints",
    "loss_kernel",
    "loss_kernel_accumulator",
    "refined_llc_sampler",
    "runaway_chains",
]
