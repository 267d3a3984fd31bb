r"""Small problems whose LLC is known exactly for the data at hand (docs/mathematics.md §7).

Each returns a :class:`ToyProblem` ``(loss_fn, params, data, exact_llc)``: sample at
``params`` (:math:`w^*`) and compare an estimate with ``exact_llc(nbeta, localization)``, the
expectation of :math:`n\beta(L_n(w) - L_n(w^*))` under the localized tempered posterior
:math:`p(w) \propto e^{-n\beta L_n(w) - \frac{\gamma}{2}\lVert w - w^*\rVert^2}` for *this*
dataset (by quadrature or in closed form, not the asymptotic :math:`\lambda`).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from slt_jax import truth

__all__ = [
    "ToyProblem", "linear_regression_problem", "polynomial_problem", "trained_mlp_problem",
]


class ToyProblem(NamedTuple):
    """A problem with an exact finite-nβ LLC for its own data.

    Attributes:
      loss_fn: per-example losses ``loss_fn(params, (x, y)) -> (b,)``.
      params: :math:`w^*`.
      data: ``(x, y)``.
      exact_llc: ``exact_llc(nbeta, localization=1.0) -> float``.
      description: one line.
    """

    loss_fn: Callable[[Any, Any], jax.Array]
    params: Any
    data: tuple
    exact_llc: Callable[..., float]
    description: str


def polynomial_problem(
    key: jax.Array,
    num_samples: int = 1000,
    noise: float = 0.5,
    powers: Sequence[int] = (1, 2),
) -> ToyProblem:
    r"""Fit :math:`f(x; w) = x\prod_i w_i^{k_i}` to pure noise at :math:`w^* = 0`.

    Data: :math:`x \sim N(0, 1)`, :math:`y = \sigma\,\xi` with :math:`\xi \sim N(0, 1)`; loss
    :math:`\ell = (y - f(x; w))^2 / (2\sigma^2)`. With :math:`u = \prod_i w_i^{k_i}`,
    :math:`L_n(w) - L_n(0) = (S_{xx} u^2 - 2 S_{xy} u)/(2\sigma^2 n)`, so the posterior depends
    on :math:`w` only through :math:`u` and the prior; ``exact_llc`` integrates it on a grid
    (two weights: a 2-D grid). The normal-crossing truth (docs/mathematics.md §7) is
    :math:`\lambda = 1/(2\max k_i)` as :math:`n\beta \to \infty`; at finite :math:`n\beta` the
    exact value is lower (Lau et al. 2023's ``w1 w2²`` example: 0.086 at :math:`n = 1000`).

    Args:
      key: PRNG key for the data.
      num_samples: :math:`n`.
      noise: :math:`\sigma`.
      powers: :math:`k_i` (two weights).

    Returns:
      a :class:`ToyProblem` with ``params = zeros(len(powers))``.
    """
    powers = tuple(int(k) for k in powers)
    if len(powers) != 2 or min(powers) < 1:
        raise ValueError(f"powers must be two positive integers, got {powers}")
    x_key, y_key = jax.random.split(key)
    x = jax.random.normal(x_key, (num_samples,))
    y = noise * jax.random.normal(y_key, (num_samples,))
    def loss_fn(params, batch):
        inputs, targets = batch
        # integer powers (lax.integer_pow): a float power has a NaN second derivative at 0
        slope = params[0] ** powers[0] * params[1] ** powers[1]
        return (targets - inputs * slope) ** 2 / (2 * noise**2)

    sxx = float(np.sum(np.asarray(x, np.float64) ** 2))
    sxy = float(np.sum(np.asarray(x, np.float64) * np.asarray(y, np.float64)))

    def exact_llc(nbeta, localization=1.0, half_width=None, points=2001):
        """Quadrature of nβ(L_n(w) − L_n(0)) over the localized posterior (2-D grid)."""
        scale = half_width or 8.0 / np.sqrt(max(localization, 1e-3))
        grid = np.linspace(-scale, scale, points)
        w0, w1 = np.meshgrid(grid, grid, indexing="ij")
        slope = w0 ** powers[0] * w1 ** powers[1]
        excess = nbeta * (sxx * slope**2 - 2 * sxy * slope) / (2 * noise**2 * num_samples)
        log_density = -excess - 0.5 * localization * (w0**2 + w1**2)
        weights = np.exp(log_density - log_density.max())
        return float(np.sum(weights * excess) / np.sum(weights))

    return ToyProblem(
        loss_fn, jnp.zeros(2, jnp.float32), (x, y), exact_llc,
        f"x·w0^{powers[0]}·w1^{powers[1]} fit to noise σ={noise}, n={num_samples}",
    )


def linear_regression_problem(
    key: jax.Array,
    num_samples: int = 5000,
    dimension: int = 2,
    noise: float = 0.3,
) -> ToyProblem:
    r"""Linear regression :math:`y = x^\top w_0 + \sigma\xi` at the least-squares :math:`w^*`.

    Loss :math:`\ell = (y - x^\top w)^2/(2\sigma^2)`, :math:`x \sim N(0, I_d)`. At the
    least-squares solution :math:`L_n(w) - L_n(w^*) = \tfrac12 (w-w^*)^\top H (w-w^*)` with
    :math:`H = X^\top X/(n\sigma^2)`, so ``exact_llc`` is the Gaussian formula
    :math:`\tfrac12\sum_i n\beta a_i/(n\beta a_i + \gamma)` over the eigenvalues :math:`a_i` of
    :math:`H` (:func:`slt_jax.truth.gaussian_llc`), close to :math:`d/2`.

    Returns:
      a :class:`ToyProblem`.
    """
    x_key, w_key, y_key = jax.random.split(key, 3)
    x = jax.random.normal(x_key, (num_samples, dimension))
    true_weights = jax.random.normal(w_key, (dimension,))
    y = x @ true_weights + noise * jax.random.normal(y_key, (num_samples,))
    x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
    w_star = np.linalg.lstsq(x64, y64, rcond=None)[0]
    curvatures = np.linalg.eigvalsh(x64.T @ x64 / (num_samples * noise**2))

    def loss_fn(params, batch):
        inputs, targets = batch
        return (targets - inputs @ params) ** 2 / (2 * noise**2)

    def exact_llc(nbeta, localization=1.0):
        return float(truth.gaussian_llc(curvatures, nbeta, localization))

    return ToyProblem(
        loss_fn, jnp.asarray(w_star, jnp.float32), (x, y), exact_llc,
        f"linear regression d={dimension}, σ={noise}, n={num_samples}",
    )


def trained_mlp_problem(
    key: jax.Array,
    num_samples: int = 1000,
    widths: Sequence[int] = (2, 8, 1),
    noise: float = 0.1,
    num_steps: int = 2000,
    learning_rate: float = 1e-2,
) -> tuple[Callable[[Any, Any], jax.Array], Any, tuple]:
    r"""A tanh MLP trained with full-batch Adam on a noisy teacher of the same shape.

    :math:`x \sim N(0, I)`, :math:`y = f_{\text{teacher}}(x) + \text{noise}\cdot\xi`; the
    student starts from its own LeCun-normal initialization and takes ``num_steps`` Adam steps
    in one ``lax.scan``: near, not exactly at, a minimum (no closed-form LLC; used to check
    that error bars match the spread of reruns).

    Returns:
      ``(loss_fn, params, (x, y))`` with ``loss_fn`` the per-example ``½‖f(x) − y‖²``.
    """
    import optax

    from slt_jax.models import mlp_apply, mlp_init, mlp_loss

    keys = jax.random.split(key, 4)
    x = jax.random.normal(keys[0], (num_samples, widths[0]))
    teacher = mlp_init(keys[1], list(widths), initialization="lecun")
    y = mlp_apply(teacher, x, activation=jnp.tanh)
    y = y + noise * jax.random.normal(keys[2], (num_samples, widths[-1]))
    loss_fn = jax.tree_util.Partial(mlp_loss, activation=jnp.tanh)
    optimizer = optax.adam(learning_rate)

    def step(carry, _):
        params, state = carry
        grads = jax.grad(lambda p: jnp.mean(loss_fn(p, (x, y))))(params)
        updates, state = optimizer.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    params = mlp_init(keys[3], list(widths), initialization="lecun")
    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), None, length=num_steps)
    return loss_fn, params, (x, y)
