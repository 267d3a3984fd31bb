"""slt_jax: singular learning theory in JAX.

Samplers are optax gradient transformations (:mod:`slt_jax.samplers`), :func:`sample` runs
vmapped chains in one compiled program, and estimators reduce traces to local learning
coefficients and friends. See docs/mathematics.md for every formula.
"""

from slt_jax import (
    accumulators,
    adapters,
    calibration,
    data,
    diagnostics,
    evaluation,
    masks,
    models,
    plotting,
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
    "LLCResult",
    "LLCSweepResult",
    "SampleOptions",
    "Trace",
    "accumulators",
    "adapters",
    "bif",
    "bif_accumulator",
    "calibration",
    "compiled_memory",
    "count_compilations",
    "data",
    "default_nbeta",
    "diagnostics",
    "enable_compilation_cache",
    "estimate_bif",
    "estimate_llc",
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
    "sample",
    "samplers",
    "shared_drift",
    "to_arviz",
    "training",
    "truth",
]


def __getattr__(name):
    # slt_jax.reference imports numpyro's NUTS: load it only when asked for
    if name == "reference":
        import importlib

        return importlib.import_module("slt_jax.reference")
    raise AttributeError(f"module 'slt_jax' has no attribute {name!r}")
