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
from slt_jax.estimators.llc import LLCResult, llc

__all__ = [
    "BIFResult",
    "LLCResult",
    "bif",
    "bif_accumulator",
    "estimate_bif",
    "estimate_llc",
    "llc",
    "loss_kernel",
    "loss_kernel_accumulator",
]
