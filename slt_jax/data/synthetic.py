r"""Synthetic data for the model zoo (nothing is downloaded).

* :func:`make_tms_data` — sparse features for the toy model of superposition (Elhage et al.
  2022): :math:`x_i = s_i u_i` with :math:`s_i \sim \mathrm{Bernoulli}(p)`,
  :math:`u_i \sim U[0, 1]`, independent.
* :func:`make_induction_data` — random tokens in which a random sub-sequence is repeated later
  in the same sequence, so a model that copies "what followed this token last time" (an
  induction head) predicts the repeat.
* :func:`make_icl_tasks`, :func:`make_icl_data` — in-context linear regression
  (arXiv 2501.17745): tasks :math:`t \sim N(0, I_D)`, inputs :math:`x_k \sim N(0, I_D)`,
  :math:`y_k = t^\top x_k + \varepsilon_k`, :math:`\varepsilon_k \sim N(0, \sigma^2)`, with the
  task drawn from a finite set of ``M`` tasks (or fresh from the prior), and the two Bayes
  predictors: :func:`dmmse_predictions` (posterior mean under the uniform prior on the ``M``
  tasks) and :func:`ridge_predictions` (posterior mean under the Gaussian prior).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = [
    "dmmse_predictions",
    "make_icl_data",
    "make_icl_tasks",
    "make_induction_data",
    "make_tms_data",
    "ridge_predictions",
]

ICL_NOISE_VARIANCE = 0.125


def _positive(name, value):
    if int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def make_tms_data(key: jax.Array, num_samples: int, num_features: int = 5,
                  feature_probability: float = 0.1) -> dict:
    r"""Sparse features ``{"x": (n, F)}``: :math:`x_i = s_i u_i`, :math:`s_i\sim\mathrm{Bern}(p)`,
    :math:`u_i \sim U[0,1]` (Elhage et al. 2022). ``feature_probability`` is :math:`p = 1 - S`
    for sparsity :math:`S`."""
    num_samples = _positive("num_samples", num_samples)
    num_features = _positive("num_features", num_features)
    if not 0.0 < feature_probability <= 1.0:
        raise ValueError(f"feature_probability must be in (0, 1], got {feature_probability!r}")
    return {"x": _sparse_features(key, feature_probability, shape=(num_samples, num_features))}


@functools.partial(jax.jit, static_argnames=("shape",))
def _sparse_features(key, probability, *, shape):
    present_key, value_key = jax.random.split(key)
    present = jax.random.bernoulli(present_key, probability, shape)
    return jnp.where(present, jax.random.uniform(value_key, shape), 0.0)


def make_induction_data(key: jax.Array, num_sequences: int, sequence_length: int = 16,
                        vocab_size: int = 16, *, repeat_length: int | None = None) -> dict:
    r"""Random token sequences with one repeated sub-sequence each.

    Every sequence is i.i.d. uniform tokens; then a segment of ``repeat_length`` tokens
    (default ``sequence_length // 2``) starting at ``a`` is copied to start at ``c >= a +
    repeat_length``, ``(a, c)`` uniform over the valid pairs. With the default length the
    sequence is ``(s, s)`` for a random ``s``. Tokens after the first of the copy are
    predictable by induction (look back for the previous occurrence of the current token and
    predict its successor); the rest are not (loss ``log V``).

    Returns:
      ``{"tokens": int32 (n, T), "repeat_start": int32 (n,)}`` (``c``: where the copy starts).
    """
    num_sequences = _positive("num_sequences", num_sequences)
    length = _positive("sequence_length", sequence_length)
    vocab_size = _positive("vocab_size", vocab_size)
    repeat = length // 2 if repeat_length is None else _positive("repeat_length", repeat_length)
    if 2 * repeat > length:
        raise ValueError(
            f"repeat_length={repeat} is too long: two copies need 2*repeat_length <= "
            f"sequence_length={length}"
        )
    return _induction(key, num_sequences, length, vocab_size, repeat)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _induction(key, num_sequences, length, vocab_size, repeat):
    token_key, pair_key = jax.random.split(key)
    tokens = jax.random.randint(token_key, (num_sequences, length), 0, vocab_size, jnp.int32)
    # valid (a, c): 0 <= a, a + repeat <= c, c + repeat <= length; choose a pair uniformly
    slack = length - 2 * repeat
    pairs = [(a, c) for a in range(slack + 1) for c in range(a + repeat, length - repeat + 1)]
    choice = jax.random.randint(pair_key, (num_sequences,), 0, len(pairs))
    starts, copies = jnp.asarray(pairs, jnp.int32).T
    source, target = starts[choice], copies[choice]
    positions = jnp.arange(length, dtype=jnp.int32)[None, :]
    offset = positions - target[:, None]
    inside = (offset >= 0) & (offset < repeat)
    source_index = jnp.where(inside, source[:, None] + offset, positions)
    tokens = jnp.take_along_axis(tokens, source_index, axis=1)
    return {"tokens": tokens, "repeat_start": target}


def make_icl_tasks(key: jax.Array, num_tasks: int, task_dim: int = 4) -> jax.Array:
    """``num_tasks`` task vectors ``(M, D)`` drawn i.i.d. from the prior ``N(0, I_D)``."""
    shape = (_positive("num_tasks", num_tasks), _positive("task_dim", task_dim))
    return _normal(key, shape=shape)


@functools.partial(jax.jit, static_argnames=("shape",))
def _normal(key, *, shape):
    return jax.random.normal(key, shape)


def make_icl_data(key: jax.Array, num_sequences: int, tasks: jax.Array | None = None, *,
                  task_dim: int = 4, num_context: int = 16,
                  noise_variance: float = ICL_NOISE_VARIANCE) -> dict:
    r"""In-context regression sequences ``{"x": (n, K, D), "y": (n, K), "task": (n, D)}``.

    Each sequence draws its task uniformly from ``tasks`` ``(M, D)`` (the finite task set of
    arXiv 2501.17745) or, with ``tasks=None``, fresh from :math:`N(0, I_D)` (``M = ∞``); then
    :math:`x_k \sim N(0, I_D)` and :math:`y_k = t^\top x_k + \varepsilon_k`,
    :math:`\varepsilon_k \sim N(0, \sigma^2)` with :math:`\sigma^2` = ``noise_variance``.
    """
    num_sequences = _positive("num_sequences", num_sequences)
    num_context = _positive("num_context", num_context)
    task_dim = _positive("task_dim", task_dim) if tasks is None else jnp.shape(tasks)[1]
    return _icl(key, None if tasks is None else jnp.asarray(tasks), noise_variance,
                num_sequences=num_sequences, num_context=num_context, task_dim=task_dim)


@functools.partial(jax.jit, static_argnames=("num_sequences", "num_context", "task_dim"))
def _icl(key, tasks, noise_variance, *, num_sequences, num_context, task_dim):
    task_key, x_key, noise_key = jax.random.split(key, 3)
    if tasks is None:
        task = jax.random.normal(task_key, (num_sequences, task_dim))
    else:
        task = tasks[jax.random.randint(task_key, (num_sequences,), 0, tasks.shape[0])]
    dim = task_dim
    x = jax.random.normal(x_key, (num_sequences, num_context, dim))
    noise = jnp.sqrt(noise_variance) * jax.random.normal(noise_key, (num_sequences, num_context))
    y = jnp.einsum("nkd,nd->nk", x, task) + noise
    return {"x": x, "y": y, "task": task}


def _prefix_statistics(x, y):
    """For each position k the sums over the *previous* pairs j < k: ``(b, K, D, D)`` Gram
    matrices and ``(b, K, D)`` ``Σ x_j y_j`` (zero at k = 0)."""
    outer = jnp.einsum("bkd,bke->bkde", x, x)
    cross = x * y[..., None]
    gram = jnp.cumsum(outer, axis=1) - outer
    moment = jnp.cumsum(cross, axis=1) - cross
    return gram, moment


@jax.jit
def ridge_predictions(x: jax.Array, y: jax.Array, *, noise_variance: float = ICL_NOISE_VARIANCE,
                      prior_variance: float = 1.0) -> jax.Array:
    r"""The Bayes predictor under the Gaussian task prior :math:`t \sim N(0, s^2 I)`: ridge.

    .. math::

        \hat y_k = x_k^\top \Big(\sum_{j<k} x_j x_j^\top + \tfrac{\sigma^2}{s^2} I\Big)^{-1}
                   \sum_{j<k} x_j y_j

    (the posterior mean of :math:`t` given the first ``k - 1`` pairs; 0 at ``k = 1``).
    ``x``: ``(b, K, D)``, ``y``: ``(b, K)``; returns ``(b, K)``.
    """
    gram, moment = _prefix_statistics(x, y)
    dim = x.shape[-1]
    ridge = (noise_variance / prior_variance) * jnp.eye(dim, dtype=x.dtype)
    mean = jnp.linalg.solve(gram + ridge[None, None], moment[..., None])[..., 0]
    return jnp.sum(mean * x, axis=-1)


@jax.jit
def dmmse_predictions(tasks: jax.Array, x: jax.Array, y: jax.Array, *,
                      noise_variance: float = ICL_NOISE_VARIANCE) -> jax.Array:
    r"""The Bayes predictor under the uniform prior on ``M`` tasks (discrete MMSE, dMMSE).

    .. math::

        \hat y_k = \sum_m \pi_{k,m}\, t_m^\top x_k,\qquad
        \pi_{k,m} \propto \exp\Big(-\tfrac{1}{2\sigma^2}\sum_{j<k}(y_j - t_m^\top x_j)^2\Big)

    ``tasks``: ``(M, D)``; ``x``: ``(b, K, D)``; ``y``: ``(b, K)``; returns ``(b, K)``.
    """
    fits = jnp.einsum("bkd,md->bkm", x, tasks)  # t_m^T x_j
    squared = jnp.square(y[..., None] - fits)
    previous = jnp.cumsum(squared, axis=1) - squared  # sums over j < k
    weights = jax.nn.softmax(-previous / (2.0 * noise_variance), axis=-1)
    return jnp.sum(weights * fits, axis=-1)
