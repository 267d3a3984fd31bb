"""Models as pure functions on parameter pytrees: deep linear networks and MLPs."""

from slt_jax.models.dln import count_parameters, dln_apply, dln_init, dln_loss, dln_product
from slt_jax.models.mlp import mlp_apply, mlp_classification_loss, mlp_init, mlp_loss

__all__ = [
    "count_parameters",
    "dln_apply",
    "dln_init",
    "dln_loss",
    "dln_product",
    "mlp_apply",
    "mlp_classification_loss",
    "mlp_init",
    "mlp_loss",
]

from slt_jax.models.transformer import (  # noqa: E402
    transformer_apply,
    transformer_generate,
    transformer_init,
    transformer_loss,
)

__all__ += [
    "transformer_apply",
    "transformer_generate",
    "transformer_init",
    "transformer_loss",
]

from slt_jax.models.zoo import (  # noqa: E402
    MLP,
    AttentionOnlyTransformer,
    InContextRegressionTransformer,
    MultiHeadAttention,
    ToyModelOfSuperposition,
    cross_entropy_loss,
    icl_loss,
    mse_loss,
    next_token_loss,
    tms_loss,
)

__all__ += [
    "MLP",
    "AttentionOnlyTransformer",
    "InContextRegressionTransformer",
    "MultiHeadAttention",
    "ToyModelOfSuperposition",
    "cross_entropy_loss",
    "icl_loss",
    "mse_loss",
    "next_token_loss",
    "tms_loss",
]
