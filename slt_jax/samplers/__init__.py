"""SGMCMC samplers as optax gradient transformations (docs/mathematics.md §1)."""

from slt_jax.samplers._base import (
    Preconditioner,
    Sampler,
    SamplerFamily,
    add_localization,
    hyperparameter_arrays,
    apply_mask,
    end_of_burnin,
    mask_as_floats,
    scale_by_nbeta,
    standard_normal_like,
    validate_mask,
)
from slt_jax.samplers._langevin import (
    SAMPLER_FAMILIES,
    AdamPreconditionerState,
    PreconditionedLangevinState,
    RMSPropPreconditionerState,
    SGHMCState,
    SGNHTState,
    adam_preconditioner,
    adam_sgld,
    default_nbeta,
    identity_preconditioner,
    preconditioned_langevin,
    rmsprop_preconditioner,
    rmsprop_sgld,
    sghmc,
    sgld,
    sgnht,
)
from slt_jax.samplers.mala import (
    langevin_proposal,
    mala_acceptance,
    mala_acceptance_probability,
)

#: every sampler factory by name (``estimate_llc(sampler="...")``, benchmarks); the records
#: in ``SAMPLER_FAMILIES`` hold what the calibration needs to know about each
SAMPLERS = {name: family.factory for name, family in SAMPLER_FAMILIES.items()}

__all__ = [
    "SAMPLERS",
    "SAMPLER_FAMILIES",
    "SamplerFamily",
    "hyperparameter_arrays",
    "AdamPreconditionerState",
    "PreconditionedLangevinState",
    "Preconditioner",
    "RMSPropPreconditionerState",
    "SGHMCState",
    "SGNHTState",
    "Sampler",
    "adam_preconditioner",
    "adam_sgld",
    "add_localization",
    "apply_mask",
    "default_nbeta",
    "end_of_burnin",
    "identity_preconditioner",
    "langevin_proposal",
    "mala_acceptance",
    "mala_acceptance_probability",
    "mask_as_floats",
    "preconditioned_langevin",
    "rmsprop_preconditioner",
    "rmsprop_sgld",
    "scale_by_nbeta",
    "sghmc",
    "sgld",
    "sgnht",
    "standard_normal_like",
    "validate_mask",
]
