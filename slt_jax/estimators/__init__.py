"""Estimators: pure reductions of sampler traces."""

from slt_jax.estimators.compressibility import CompressibilityResult, estimate_compressibility
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
from slt_jax.estimators.stagewise import StagewiseBIFResult, bif_over_checkpoints
from slt_jax.estimators.sweep import LLCSweepResult, llc_over_checkpoints, refined_llc_sampler
from slt_jax.estimators.susceptibility import (
    ResponseMatrix,
    ResponsePCA,
    SusceptibilityResult,
    response_matrix,
    response_pca,
    susceptibility,
    susceptibility_accumulator,
)
from slt_jax.estimators.susceptibility_estimate import estimate_susceptibilities
from slt_jax.estimators.trajectory import (
    TrajectoryPCA,
    TurningPoints,
    trajectory_outputs,
    trajectory_pca,
    trajectory_turning_points,
)

__all__ = [
    "CompressibilityResult",
    "estimate_compressibility",
    "BIFResult",
    "LLCResult",
    "LLCSweepResult",
    "StagewiseBIFResult",
    "bif",
    "bif_over_checkpoints",
    "bif_accumulator",
    "estimate_bif",
    "estimate_llc",
    "llc",
    "llc_over_checkpoints",
    "loss_kernel",
    "loss_kernel_accumulator",
    "refined_llc_sampler",
    "runaway_chains",
    "ResponseMatrix",
    "ResponsePCA",
    "SusceptibilityResult",
    "response_matrix",
    "response_pca",
    "susceptibility",
    "susceptibility_accumulator",
    "estimate_susceptibilities",
    "TrajectoryPCA",
    "TurningPoints",
    "trajectory_outputs",
    "trajectory_pca",
    "trajectory_turning_points",
]
