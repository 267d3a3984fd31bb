r"""Step-size calibration from the curvature at :math:`w^*`.

On a quadratic with curvature matrix :math:`A = n\beta H + \gamma I`, SGLD is stable only for
:math:`\epsilon < 4/\lambda_{max}(A)` and its stationary variance along an eigendirection with
precision :math:`P` is :math:`1/(P(1 - \epsilon P/4))` (MATH.md §1, §7): the relative bias of the
stiffest direction is :math:`\approx \epsilon\lambda_{max}/4`. We measure :math:`\lambda_{max}(H)`
with power iteration on Hessian-vector products of the full-data (or a large random subset's)
mean loss and set :math:`\epsilon = \kappa/\lambda_{max}(A)` with a safety factor
:math:`\kappa` (``0.2`` by default: at most ~5% bias on the stiffest direction, well inside
the stability bound, which leaves room for curvature growing away from :math:`w^*`).

Preconditioned and momentum samplers get the equivalent step size:

* RMSProp-/Adam-SGLD: :math:`P \le 1/a`, so :math:`\epsilon = \kappa a / \lambda_{max}(A)`.
* SGHMC (learning rate :math:`\eta`, friction :math:`\alpha`): :math:`\eta = \kappa\alpha/(2\lambda_{max}(A))`
  (with :math:`\alpha = 1` SGHMC is SGLD with :math:`\epsilon = 2\eta`).
* SGNHT: a second-order integrator with position step :math:`\epsilon p`, stable for
  :math:`\epsilon\sqrt{\lambda_{max}} < 2`: :math:`\epsilon = \sqrt{\kappa/\lambda_{max}(A)}`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from slt_jax.sampling import check_loss_fn, check_params, num_examples

PyTree = Any

DEFAULT_SAFETY_FACTOR = 0.2


class Calibration(NamedTuple):
    """The chosen step size and the evidence for it."""

    step_size: float
    sampler: str
    max_hessian_eigenvalue: float
    max_curvature: float
    stability_bound: float
    safety_factor: float
    nbeta: float
    localization: float

    def summary(self) -> str:
        return (
            f"{self.sampler}: step_size={self.step_size:.3g} from lambda_max(H)="
            f"{self.max_hessian_eigenvalue:.4g}, lambda_max(nbeta*H + gamma)="
            f"{self.max_curvature:.4g} (SGLD stability bound 4/lambda_max = "
            f"{self.stability_bound:.3g}, safety factor {self.safety_factor})"
        )


@functools.partial(jax.jit, static_argnames=("loss_fn", "num_iterations", "chunk_size"))
def _power_iteration(params, data, key, *, loss_fn, num_iterations, chunk_size):
    flat, unravel = ravel_pytree(params)
    n = jax.tree.leaves(data)[0].shape[0]
    num_chunks = math.ceil(n / chunk_size)
    indices = jnp.arange(num_chunks * chunk_size).reshape(num_chunks, chunk_size)

    def gradient(flat_params):
        def chunk_gradient(chunk_indices):
            valid = (chunk_indices < n).astype(flat.dtype)
            batch = jax.tree.map(
                lambda x: jnp.take(x, jnp.minimum(chunk_indices, n - 1), axis=0), data
            )

            def weighted_sum(p):
                losses = loss_fn(unravel(p), batch)
                per_example = losses.reshape(losses.shape[0], -1).mean(axis=1)
                return jnp.sum(per_example * valid)

            return jax.grad(weighted_sum)(flat_params)

        return jnp.sum(jax.lax.map(chunk_gradient, indices), axis=0) / n

    def hessian_vector_product(vector):
        return jax.jvp(gradient, (flat,), (vector,))[1]

    vector = jax.random.normal(key, flat.shape, flat.dtype)
    vector = vector / jnp.linalg.norm(vector)

    def body(_, carry):
        vector, _ = carry
        product = hessian_vector_product(vector)
        eigenvalue = jnp.vdot(vector, product)
        norm = jnp.linalg.norm(product)
        vector = jnp.where(norm > 0, product / jnp.where(norm > 0, norm, 1.0), vector)
        return vector, eigenvalue

    _, eigenvalue = jax.lax.fori_loop(
        0, num_iterations, body, (vector, jnp.zeros((), flat.dtype))
    )
    return eigenvalue


def top_hessian_eigenvalue(
    loss_fn: Callable,
    params: PyTree,
    data: PyTree,
    *,
    key: jax.Array,
    num_iterations: int = 50,
    max_examples: int = 4096,
    chunk_size: int = 1024,
) -> float:
    r"""Largest eigenvalue of the Hessian of :math:`L_n` at ``params`` by power iteration.

    Hessian-vector products are forward-over-reverse (``jax.jvp`` of ``jax.grad``) on the mean
    loss over ``max_examples`` randomly chosen examples (all of them if ``n`` is smaller),
    accumulated in chunks of ``chunk_size``. Returns the Rayleigh quotient of the last iterate
    (a lower bound that converges to :math:`\lambda_{max}` when it dominates in magnitude).
    """
    check_params(params)
    n = num_examples(data)
    subset_key, vector_key = jax.random.split(key)
    if n > max_examples:
        subset = jax.random.choice(subset_key, n, (max_examples,), replace=False)
        data = jax.tree.map(lambda x: jnp.take(x, subset, axis=0), data)
        n = max_examples
    chunk_size = min(chunk_size, n)
    check_loss_fn(loss_fn, params, data, chunk_size)
    eigenvalue = _power_iteration(
        params,
        data,
        vector_key,
        loss_fn=loss_fn,
        num_iterations=num_iterations,
        chunk_size=chunk_size,
    )
    return float(eigenvalue)


def step_size_for(
    sampler_name: str,
    max_curvature: float,
    *,
    safety_factor: float = DEFAULT_SAFETY_FACTOR,
    stability: float = 0.1,
    friction: float = 0.1,
) -> float:
    """The step size of ``sampler_name`` equivalent to SGLD's ``safety_factor / max_curvature``."""
    if max_curvature <= 0 or not math.isfinite(max_curvature):
        raise ValueError(f"max_curvature must be finite and > 0, got {max_curvature}")
    base = safety_factor / max_curvature
    if sampler_name == "sgld":
        return base
    if sampler_name in ("rmsprop_sgld", "adam_sgld"):
        return base * stability
    if sampler_name == "sghmc":
        return base * friction / 2.0
    if sampler_name == "sgnht":
        return math.sqrt(base)
    raise ValueError(
        f"no step-size rule for sampler {sampler_name!r}; expected one of sgld, rmsprop_sgld, "
        "adam_sgld, sghmc, sgnht (or pass step_size= yourself)"
    )


def calibrate_step_size(
    loss_fn: Callable,
    params: PyTree,
    data: PyTree,
    *,
    key: jax.Array,
    nbeta: float,
    localization: float,
    sampler_name: str = "sgld",
    safety_factor: float = DEFAULT_SAFETY_FACTOR,
    stability: float = 0.1,
    friction: float = 0.1,
) -> Calibration:
    r"""Choose a step size from :math:`\lambda_{max}(n\beta H + \gamma I)` at ``params``."""
    eigenvalue = top_hessian_eigenvalue(loss_fn, params, data, key=key)
    max_curvature = nbeta * max(eigenvalue, 0.0) + localization
    if max_curvature <= 0:
        raise ValueError(
            "the loss has no positive curvature at params and localization is 0: the localized "
            "posterior is improper; pass localization > 0 or a step_size"
        )
    step_size = step_size_for(
        sampler_name,
        max_curvature,
        safety_factor=safety_factor,
        stability=stability,
        friction=friction,
    )
    return Calibration(
        step_size=step_size,
        sampler=sampler_name,
        max_hessian_eigenvalue=eigenvalue,
        max_curvature=max_curvature,
        stability_bound=4.0 / max_curvature,
        safety_factor=safety_factor,
        nbeta=nbeta,
        localization=localization,
    )
