"""slt_jax: singular learning theory in JAX.

Samplers are optax gradient transformations (:mod:`slt_jax.samplers`), :func:`sample` runs
vmapped chains in one compiled program, and estimators reduce traces to local learning
coefficients and friends. See docs/mathematics.md for every formula.
"""

from slt_jax import (
    accumulators,
    adapters,
    calibration,
    compression,
    diagnostics,
    masks,
    samplers,
    training,
    truth,
)
from slt_jax.compilation_cache import enable_compilation_cache
from slt_jax.diagnostics import shared_drift
from slt_jax.estimators import (
    BIFResult,
    LLCResult,
    LLCSweepResult,
    bif,
    bif_accumulator,
    estimate_bif,
    estimate_llc,
    llc,
    llc_over_checkpoints,
    loss_kernel,
    loss_kernel_accumulator,
)
from slt_jax.estimators.compressibility import CompressibilityResult, estimate_compressibility
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
from slt_jax.estimators.stagewise import StagewiseBIFResult, bif_over_checkpoints
from slt_jax.estimators.trajectory import (
    TrajectoryPCA,
    TurningPoints,
    trajectory_outputs,
    trajectory_pca,
    trajectory_turning_points,
)
from slt_jax.export import to_arviz
from slt_jax.samplers import default_nbeta
from slt_jax.sampling import (
    ChainState,
    SampleOptions,
    Trace,
    compiled_memory,
    count_compilations,
    evaluate_loss,
    sample,
)

__version__ = "0.1.0"

__all__ = [
    "BIFResult",
    "ChainState",
    "CompressibilityResult",
    "LLCResult",
    "LLCSweepResult",
    "ResponseMatrix",
    "ResponsePCA",
    "SampleOptions",
    "StagewiseBIFResult",
    "SusceptibilityResult",
    "Trace",
    "TrajectoryPCA",
    "TurningPoints",
    "accumulators",
    "adapters",
    "bif",
    "bif_accumulator",
    "bif_over_checkpoints",
    "calibration",
    "compiled_memory",
    "compression",
    "count_compilations",
    "data",
    "default_nbeta",
    "diagnostics",
    "enable_compilation_cache",
    "estimate_bif",
    "estimate_compressibility",
    "estimate_llc",
    "estimate_susceptibilities",
    "evaluate_loss",
    "evaluation",
    "llc",
    "llc_over_checkpoints",
    "loss_kernel",
    "loss_kernel_accumulator",
    "masks",
    "models",
    "plotting",
    "reference",
    "response_matrix",
    "response_pca",
    "sample",
    "samplers",
    "shared_drift",
    "susceptibility",
    "susceptibility_accumulator",
    "to_arviz",
    "training",
    "trajectory_outputs",
    "trajectory_pca",
    "trajectory_turning_points",
    "truth",
]


#: submodules loaded when first used (``slt.plotting``, ``from slt_jax import data``): reference
#: imports numpyro's NUTS, models (and data, which builds on it) Flax, plotting matplotlib
_LAZY_MODULES = ("data", "evaluation", "models", "plotting", "reference")


def __getattr__(name):
    if name in _LAZY_MODULES:
        import importlib

        return importlib.import_module(f"slt_jax.{name}")
    raise AttributeError(f"module 'slt_jax' has no attribute {name!r}")
