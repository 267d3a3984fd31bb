"""Estimators: pure reductions of sampler traces."""

from slt_jax.estimators.estimate import estimate_llc
from slt_jax.estimators.llc import LLCResult, llc

__all__ = ["LLCResult", "estimate_llc", "llc"]
