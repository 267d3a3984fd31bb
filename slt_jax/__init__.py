"""slt_jax: singular learning theory in JAX.

Samplers are optax gradient transformations (:mod:`slt_jax.samplers`), :func:`sample` runs
vmapped chains in one compiled program, and estimators reduce traces to local learning
coefficients and friends. See MATH.md for every formula.
"""

from slt_jax import calibration, data, diagnostics, models, reference, samplers, truth
from slt_jax.estimators import LLCResult, estimate_llc, llc
from slt_jax.samplers import default_nbeta
from slt_jax.sampling import Trace, evaluate_loss, sample

__version__ = "0.1.0"

__all__ = [
    "LLCResult",
    "Trace",
    "calibration",
    "data",
    "default_nbeta",
    "diagnostics",
    "estimate_llc",
    "evaluate_loss",
    "llc",
    "models",
    "reference",
    "sample",
    "samplers",
    "truth",
]
