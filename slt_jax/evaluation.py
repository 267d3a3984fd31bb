r"""Judging data attributions by retraining: the linear datamodeling score and its baselines.

An *attribution score* ``scores[i, k]`` says how training example :math:`z_i` moves the loss
:math:`\phi_k(w) = \ell(w; x_k)` of query example :math:`k`. Every score in slt_jax is an
**influence on the query loss, negative = helpful**: upweighting a helpful example lowers the
query loss. This is the sign of the BIF (:func:`slt_jax.bif`, docs/mathematics.md §4) and of the classical
influence function.

Influence functions (Koh & Liang 2017, "Understanding black-box predictions via influence
functions"). Let :math:`w^*` minimize the mean training loss :math:`L(w) = \frac1n\sum_j
\ell_j(w)` (any regularizer folded into :math:`\ell_j`) and :math:`H = \nabla^2 L(w^*)`.
Upweighting example :math:`i` by :math:`\epsilon` in :math:`\frac1n\sum_j (1+\epsilon_j)
\ell_j` moves the minimizer by :math:`-\frac1n H^{-1}\nabla\ell_i\,\epsilon` and the query loss by

.. math::

    \frac{d\phi_k}{d\epsilon_i} = -\frac1n \nabla\phi_k^\top (H + \delta I)^{-1} \nabla\ell_i
    \quad(\delta = 0\text{ exactly; } \delta > 0 \text{ the damped IF}).

**This module returns the per-example form without the** :math:`1/n`:
``scores[i, k] = -∇φ_kᵀ (H + δI)⁻¹ ∇ℓ_i`` (:func:`exact_influence`,
:func:`conjugate_gradient_influence`). The BIF with :math:`n\beta = n` tends to the
:math:`1/n` form (Laplace limit), a constant positive factor that no rank correlation sees.

Grad-dot (TracIn at one checkpoint with unit learning rate; Pruthi et al. 2020, "Estimating
training data influence by tracing gradient descent"): ``scores[i, k] = -∇φ_kᵀ∇ℓ_i``.

Linear datamodeling score (Park et al. 2023, "TRAK: attributing model behavior at scale").
Draw :math:`M` random training subsets :math:`S_j` (indicator rows ``subsets[j]``), retrain on
each, and measure the query losses ``actual[j, k]``. To first order in the upweighting,
training on :math:`S_j` (weights :math:`1+\epsilon_i = (n/|S_j|)\,[i \in S_j]` in the mean loss)
gives

.. math::

    \phi_k(S_j) \approx \text{const} + c \sum_{i \in S_j} \text{scores}[i, k],\quad c > 0,

so the predicted query loss is ``subsets @ scores`` up to a constant and a positive factor
(exactly so when all subsets have one size, as :func:`random_subsets` draws them), and

.. math::

    \mathrm{LDS} = \frac1q\sum_k \rho_{\mathrm{Spearman}}\big(
        \text{actual}[:, k],\ \text{subsets} \cdot \text{scores}[:, k]\big).

1 means the scores rank the subsets' retrained query losses perfectly; a score with the
opposite sign convention (positive = helpful) gives a negative LDS.

:func:`retrain_on_subsets` retrains one model per subset, all of them in one compiled
program (``vmap`` over subsets of an optax loop in ``lax.scan``).
"""

from __future__ import annotations

import warnings
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from slt_jax._checks import check_int, check_key, check_loss_fn, check_params, num_examples
from slt_jax._chunking import mean_loss_in_chunks
from slt_jax._structural import StructuralKey

PyTree = Any

__all__ = [
    "RetrainResult",
    "conjugate_gradient_influence",
    "exact_influence",
    "grad_dot",
    "lds",
    "lds_per_query",
    "random_scores",
    "random_subsets",
    "retrain_on_subsets",
]

DEFAULT_MAX_PARAMETERS = 5000
DEFAULT_CHUNK_SIZE = 256


# ---------------------------------------------------------------------------------------------
# Linear datamodeling score


def _checked_lds_inputs(scores, subsets, actual) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    subsets = np.asarray(subsets)
    actual = np.asarray(actual, dtype=np.float64)
    if scores.ndim != 2 or subsets.ndim != 2 or actual.ndim != 2:
        raise ValueError(
            "expected scores (n, q), subsets (M, n) and actual (M, q); got shapes "
            f"{scores.shape}, {subsets.shape}, {actual.shape}"
        )
    (n, q), (num_subsets, subset_n) = scores.shape, subsets.shape
    if subset_n != n or actual.shape != (num_subsets, q):
        raise ValueError(
            f"shapes do not match: scores {scores.shape} is (n, q), so subsets must be (M, {n}) "
            f"and actual (M, {q}); got subsets {subsets.shape} and actual {actual.shape}"
        )
    if subsets.dtype != bool and not np.isin(subsets, (0, 1)).all():
        raise ValueError("subsets must be boolean (or 0/1) membership indicators")
    if num_subsets < 3:
        raise ValueError(f"a rank correlation needs at least 3 subsets, got M = {num_subsets}")
    for name, array in (("scores", scores), ("actual", actual)):
        if not np.isfinite(array).all():
            raise ValueError(f"{name} has non-finite entries (a diverged run?)")
    return scores, subsets.astype(np.float64), actual


def _spearman_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rho of each column pair: Pearson's r of the average ranks (ties share the
    mean of their ranks); ``nan`` where a column is constant."""
    import scipy.stats  # imported when used: it costs a third of `import slt_jax` otherwise

    ranks_a = scipy.stats.rankdata(a, method="average", axis=0)
    ranks_b = scipy.stats.rankdata(b, method="average", axis=0)
    ranks_a = ranks_a - ranks_a.mean(axis=0, keepdims=True)
    ranks_b = ranks_b - ranks_b.mean(axis=0, keepdims=True)
    denominator = np.sqrt((ranks_a**2).sum(axis=0) * (ranks_b**2).sum(axis=0))
    numerator = (ranks_a * ranks_b).sum(axis=0)
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, numerator / safe, np.nan)


def lds_per_query(scores, subsets, actual) -> np.ndarray:
    r"""The linear datamodeling score of each query (Park et al. 2023), ``(q,)``.

    ``rho_k = Spearman(actual[:, k], subsets @ scores[:, k])``, with average ranks for ties and
    ``nan`` where either column is constant. See the module docstring for the sign convention:
    ``scores`` are influences on the query loss, negative = helpful, so a good attribution has
    ``rho_k`` near +1.

    Args:
      scores: ``(n, q)`` attribution scores (train × query).
      subsets: ``(M, n)`` boolean membership of each retraining subset.
      actual: ``(M, q)`` query losses of the model retrained on each subset.

    Returns:
      ``(q,)`` float64 numpy array.
    """
    scores, subsets, actual = _checked_lds_inputs(scores, subsets, actual)
    return _spearman_columns(subsets @ scores, actual)


def lds(scores, subsets, actual) -> float:
    r"""The linear datamodeling score: the mean over queries of :func:`lds_per_query`.

    .. math::

        \mathrm{LDS} = \frac1q\sum_k \rho_{\mathrm{Spearman}}\big(\text{actual}[:, k],\
            \textstyle\sum_{i \in S_j}\text{scores}[i, k]\big)

    Queries whose correlation is undefined (a constant column) are skipped with a warning;
    if all are, the result is ``nan`` (with a warning).

    Example:
      >>> import numpy as np
      >>> rng = np.random.default_rng(0)
      >>> scores = rng.normal(size=(20, 3)); subsets = rng.random((50, 20)) < 0.5
      >>> round(lds(scores, subsets, subsets @ scores + 1.0), 6)
      1.0
    """
    per_query = lds_per_query(scores, subsets, actual)
    undefined = int(np.isnan(per_query).sum())
    if undefined == per_query.size:
        warnings.warn(
            "LDS undefined for every query (constant predictions or actual losses); returning nan",
            RuntimeWarning, stacklevel=2,
        )
        return float("nan")
    if undefined:
        warnings.warn(
            f"LDS undefined for {undefined} of {per_query.size} queries (a constant column); "
            "they are left out of the mean", RuntimeWarning, stacklevel=2,
        )
    return float(np.nanmean(per_query))


def random_subsets(key, num_subsets: int, n: int, fraction: float = 0.5) -> jax.Array:
    """``(num_subsets, n)`` boolean rows, each a uniformly random subset of exactly
    ``round(fraction * n)`` (at least 1) of the ``n`` training examples.

    One size for every subset makes ``subsets @ scores`` predict the retrained loss up to a
    single constant (see the module docstring).
    """
    check_key(key)
    num_subsets, n = check_int("num_subsets", num_subsets, 1), check_int("n", n, 1)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    size = max(1, int(round(fraction * n)))
    # the `size` smallest of n i.i.d. uniforms per row: a uniformly random subset of that size
    uniforms = np.asarray(jax.random.uniform(key, (num_subsets, n)))
    ranks = np.argsort(np.argsort(uniforms, axis=1, kind="stable"), axis=1, kind="stable")
    return jnp.asarray(ranks < size)


def random_scores(key, n: int, q: int) -> jax.Array:
    """The random baseline: ``(n, q)`` independent standard normal scores (LDS ≈ 0)."""
    check_key(key)
    return jax.random.normal(key, (check_int("n", n, 1), check_int("q", q, 1)))


# ---------------------------------------------------------------------------------------------
# Retraining harness


class RetrainResult(NamedTuple):
    """What :func:`retrain_on_subsets` returns.

    Attributes:
      params: the trained parameters, the params pytree with a leading ``M`` axis.
      query_losses: ``(M, q)`` per-example query losses of each trained model (token axes
        averaged), or ``None`` without ``query_data``; the ``actual`` of :func:`lds`.
      objective: ``(M,)`` the final training objective of each model.
      gradient_norm: ``(M,)`` the final gradient norm of the objective (a convergence check).
    """

    params: PyTree
    query_losses: jax.Array | None
    objective: jax.Array
    gradient_norm: jax.Array


class _RetrainProgram(NamedTuple):
    loss_fn: StructuralKey
    optimizer: StructuralKey
    num_steps: int
    batched_init: bool
    subset_chunk_size: int | None


def _per_example(losses: jax.Array) -> jax.Array:
    """``(b,)`` or ``(b, T)`` losses -> ``(b,)``, averaging token axes."""
    return jnp.mean(jnp.reshape(losses, (losses.shape[0], -1)), axis=1)


def _squared_norm(tree: PyTree) -> jax.Array:
    return sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(tree))


def _subset_objective(params, weights, train_data, regularization, loss_fn):
    losses = _per_example(loss_fn(params, train_data))
    weights = weights.astype(losses.dtype)
    data_term = jnp.sum(weights * losses) / jnp.sum(weights)
    return data_term + 0.5 * regularization * _squared_norm(params)


def _train_one(program: _RetrainProgram, init_params, weights, train_data, regularization):
    optimizer = optax.with_extra_args_support(program.optimizer.value)
    objective = partial(
        _subset_objective, weights=weights, train_data=train_data,
        regularization=regularization, loss_fn=program.loss_fn.value,
    )
    value_and_grad = jax.value_and_grad(objective)

    def step(carry, _):
        params, state = carry
        value, grads = value_and_grad(params)
        updates, state = optimizer.update(
            grads, state, params, value=value, grad=grads, value_fn=objective
        )
        return (optax.apply_updates(params, updates), state), None

    initial = (init_params, optimizer.init(init_params))
    (params, _), _ = jax.lax.scan(step, initial, None, length=program.num_steps)
    value, grads = value_and_grad(params)
    return params, value, jnp.sqrt(_squared_norm(grads))


@partial(jax.jit, static_argnames=("program",))
def _retrain(init_params, train_data, subsets, regularization, query_data, *, program):
    if program.batched_init:
        inputs = (subsets, init_params)
        train = lambda pair: _train_one(program, pair[1], pair[0], train_data, regularization)
    else:
        inputs = subsets
        train = lambda weights: _train_one(program, init_params, weights, train_data,
                                           regularization)
    if program.subset_chunk_size is None:
        params, objective, gradient_norm = jax.vmap(train)(inputs)
    else:
        params, objective, gradient_norm = jax.lax.map(
            train, inputs, batch_size=program.subset_chunk_size
        )
    query_losses = None
    if query_data is not None:
        loss_fn = program.loss_fn.value
        query_losses = jax.vmap(lambda p: _per_example(loss_fn(p, query_data)))(params)
    return RetrainResult(params, query_losses, objective, gradient_norm)


def _checked_subsets(subsets, n: int) -> jax.Array:
    array = np.asarray(subsets)
    if array.ndim != 2 or array.shape[1] != n:
        raise ValueError(f"subsets must be (M, n) = (M, {n}) booleans, got shape {array.shape}")
    if array.dtype != bool and not np.isin(array, (0, 1)).all():
        raise ValueError("subsets must be boolean (or 0/1) membership indicators")
    empty = np.flatnonzero(array.sum(axis=1) == 0)
    if empty.size:
        raise ValueError(f"subsets {empty[:5].tolist()} are empty: nothing to train on")
    return jnp.asarray(array, dtype=bool)


def _check_batched_init(init_params, num_subsets: int) -> None:
    leaves = jax.tree.leaves(init_params)
    sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in leaves}
    if sizes != {num_subsets}:
        raise ValueError(
            f"batched_init=True needs every init_params leaf to have a leading axis of "
            f"M = {num_subsets} (one start per subset); got leading sizes {sizes}"
        )


def retrain_on_subsets(
    loss_fn: Callable[[PyTree, PyTree], jax.Array],
    init_params: PyTree,
    train_data: PyTree,
    subsets,
    *,
    optimizer: optax.GradientTransformation,
    num_steps: int,
    regularization: float = 0.0,
    query_data: PyTree | None = None,
    batched_init: bool = False,
    subset_chunk_size: int | None = None,
) -> RetrainResult:
    r"""Train one model per subset, all ``M`` of them in one compiled program.

    Model :math:`j` minimizes, with full-batch gradients, the subset-weighted mean loss

    .. math::

        J_j(w) = \frac{\sum_i s_{ji}\,\ell_i(w)}{\sum_i s_{ji}} + \frac{\lambda}{2}\lVert w\rVert^2

    (:math:`s_j` = ``subsets[j]``, :math:`\lambda` = ``regularization`` on every parameter
    leaf, token axes of :math:`\ell_i` averaged) by ``num_steps`` steps of ``optimizer``, an
    optax loop in ``lax.scan`` that is ``vmap``-ed over subsets. Extra-args optimizers such as
    ``optax.lbfgs()`` get ``value``, ``grad`` and ``value_fn``. Subsets, data, initial
    parameters and ``regularization`` are arguments of the program, so new values of the same
    shapes reuse it; ``loss_fn`` and ``optimizer`` are compared by code and closure
    (an optimizer rebuilt with the same learning rate is the same program).

    Warm start: pass the full-data minimizer as ``init_params``; every subset model then starts
    near its own minimizer, which makes small convex problems converge in few steps.

    Args:
      loss_fn: ``loss_fn(params, batch) -> (b,)`` or ``(b, T)`` per-example losses.
      init_params: starting parameters, shared by all subsets (or with a leading ``M`` axis,
        one start per subset, with ``batched_init=True``).
      train_data: pytree of arrays with leading axis ``n``.
      subsets: ``(M, n)`` booleans, e.g. from :func:`random_subsets`.
      optimizer: an optax gradient transformation.
      num_steps: optimizer steps per model.
      regularization: :math:`\lambda \ge 0`.
      query_data: optional pytree with leading axis ``q``; its per-example losses under each
        trained model are returned as ``query_losses`` ``(M, q)``.
      batched_init: see ``init_params``.
      subset_chunk_size: train this many subsets at a time (``lax.map``) to bound memory;
        ``None`` (default) trains all ``M`` at once.

    Returns:
      a :class:`RetrainResult`.
    """
    check_params(init_params)
    n = num_examples(train_data)
    subsets = _checked_subsets(subsets, n)
    if batched_init:
        _check_batched_init(init_params, subsets.shape[0])
    single_params = jax.tree.map(lambda leaf: leaf[0], init_params) if batched_init else init_params
    check_loss_fn(loss_fn, single_params, train_data, n)
    if query_data is not None:
        check_loss_fn(loss_fn, single_params, query_data, num_examples(query_data))
    if not np.isfinite(regularization) or regularization < 0:
        raise ValueError(f"regularization must be a finite number >= 0, got {regularization!r}")
    program = _RetrainProgram(
        loss_fn=StructuralKey(loss_fn), optimizer=StructuralKey(optimizer),
        num_steps=check_int("num_steps", num_steps, 1), batched_init=bool(batched_init),
        subset_chunk_size=None if subset_chunk_size is None
        else check_int("subset_chunk_size", subset_chunk_size, 1),
    )
    dtype = jnp.result_type(jax.tree.leaves(init_params)[0])
    return _retrain(init_params, train_data, subsets, jnp.asarray(regularization, dtype),
                    query_data, program=program)


# ---------------------------------------------------------------------------------------------
# Baselines: influence functions and grad-dot


def _example_loss(loss_fn, params, example) -> jax.Array:
    """The loss of one example (no leading axis), token axes averaged."""
    batch = jax.tree.map(lambda leaf: jnp.expand_dims(leaf, 0), example)
    return jnp.mean(loss_fn(params, batch))


def _flat_example_gradients(loss_fn, params, data, chunk_size) -> jax.Array:
    """``(m, d)``: the flattened gradient of each example's loss."""
    flat, unravel = ravel_pytree(params)
    gradient = jax.grad(lambda f, example: _example_loss(loss_fn, unravel(f), example))
    return jax.lax.map(lambda example: gradient(flat, example), data, batch_size=chunk_size)


def _scores_against(loss_fn, params, train_data, directions, chunk_size) -> jax.Array:
    """``(n, q)``: ``-directions[k] · ∇ℓ_i``, the per-example gradients never all in memory."""
    flat, unravel = ravel_pytree(params)
    gradient = jax.grad(lambda f, example: _example_loss(loss_fn, unravel(f), example))

    def one(example):
        return -jnp.matmul(directions, gradient(flat, example))

    return jax.lax.map(one, train_data, batch_size=chunk_size)


def _check_influence_inputs(loss_fn, params, train_data, query_data, damping) -> None:
    check_params(params)
    for name, data in (("train_data", train_data), ("query_data", query_data)):
        try:
            size = num_examples(data)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
        check_loss_fn(loss_fn, params, data, size)
    if not np.isfinite(damping) or damping < 0:
        raise ValueError(f"damping must be a finite number >= 0, got {damping!r}")


@partial(jax.jit, static_argnames=("loss_fn", "chunk_size"))
def _exact_influence(params, train_data, query_data, damping, *, loss_fn, chunk_size):
    loss_fn = loss_fn.value
    flat, unravel = ravel_pytree(params)
    hessian = jax.hessian(
        lambda f: mean_loss_in_chunks(loss_fn, unravel(f), train_data, chunk_size)
    )(flat)
    hessian = 0.5 * (hessian + hessian.T)
    eigenvalues, eigenvectors = jnp.linalg.eigh(hessian)
    damped = eigenvalues + damping
    query_gradients = _flat_example_gradients(loss_fn, params, query_data, chunk_size)
    coordinates = jnp.matmul(query_gradients, eigenvectors) / damped[None, :]
    directions = jnp.matmul(coordinates, eigenvectors.T)  # (q, d): (H + δI)⁻¹ ∇φ_k
    return _scores_against(loss_fn, params, train_data, directions, chunk_size), damped


def exact_influence(
    loss_fn, params, train_data, query_data, *, damping: float = 0.0,
    max_parameters: int = DEFAULT_MAX_PARAMETERS, chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> jax.Array:
    r"""The (damped) classical influence function with the exact Hessian (Koh & Liang 2017).

    .. math::

        \text{scores}[i, k] = -\nabla\phi_k^\top (H + \delta I)^{-1} \nabla\ell_i,\qquad
        H = \nabla^2 \tfrac1n\textstyle\sum_j \ell_j(w)

    at ``params`` (meant to be a minimizer of the mean training loss), with ``jax.hessian`` on
    the flattened parameters and an eigendecomposition, so only for small models. Per-example
    form, without the :math:`1/n` of :math:`d\phi_k/d\epsilon_i`; negative = helpful.

    Ridge (or any L2 penalty): pass the penalty as ``damping=λ`` with an unregularized
    ``loss_fn``. The scores are then the derivatives of the query loss for upweighting
    :math:`\ell_i` in :math:`\frac1n\sum_j(1+\epsilon_j)\ell_j + \frac\lambda2\lVert w
    \rVert^2`, the objective of :func:`retrain_on_subsets` with ``regularization=λ``. Folding
    :math:`\frac\lambda2\lVert w\rVert^2` into ``loss_fn`` instead gives the same :math:`H`
    but attributes a different quantity: every query "loss" then includes the penalty too (and
    :math:`\nabla\ell_i` gains :math:`\lambda w`, a constant per query).

    Args:
      loss_fn: ``loss_fn(params, batch) -> (b,)`` or ``(b, T)`` (token axes averaged).
      params: the trained parameters :math:`w^*`.
      train_data, query_data: pytrees with leading axes ``n`` and ``q``.
      damping: :math:`\delta \ge 0`.
      max_parameters: refuse larger models (use :func:`conjugate_gradient_influence`).
      chunk_size: examples per vectorized chunk of per-example gradients.

    Returns:
      ``(n, q)`` scores. Raises ``ValueError`` if :math:`H + \delta I` is singular; warns if it
      is not positive definite (``params`` not a minimum).
    """
    _check_influence_inputs(loss_fn, params, train_data, query_data, damping)
    size = ravel_pytree(params)[0].size
    if size > max_parameters:
        raise ValueError(
            f"exact_influence forms the dense {size} x {size} Hessian; the model has {size} > "
            f"max_parameters = {max_parameters} parameters. Use conjugate_gradient_influence "
            "(Hessian-vector products) or raise max_parameters."
        )
    scores, damped = _exact_influence(
        params, train_data, query_data, jnp.asarray(damping, ravel_pytree(params)[0].dtype),
        loss_fn=StructuralKey(loss_fn), chunk_size=check_int("chunk_size", chunk_size, 1),
    )
    _check_spectrum(np.asarray(damped, dtype=np.float64))
    return scores


def _check_spectrum(damped: np.ndarray) -> None:
    largest = np.abs(damped).max()
    if not np.isfinite(damped).all() or np.abs(damped).min() <= 1e-6 * largest:
        raise ValueError(
            "the damped Hessian H + damping*I is singular (smallest |eigenvalue| "
            f"{np.abs(damped).min():.3g} vs largest {largest:.3g}); pass damping > 0"
        )
    if damped.min() < 0:
        warnings.warn(
            f"H + damping*I has a negative eigenvalue ({damped.min():.3g}): params is not a "
            "minimum of the training loss; increase damping", RuntimeWarning, stacklevel=3,
        )


@partial(jax.jit, static_argnames=("loss_fn", "chunk_size", "max_iterations"))
def _conjugate_gradient_directions(
    params, train_data, query_data, damping, tolerance, *, loss_fn, chunk_size, max_iterations
):
    loss_fn = loss_fn.value
    flat, unravel = ravel_pytree(params)
    gradient = jax.grad(lambda f: mean_loss_in_chunks(loss_fn, unravel(f), train_data, chunk_size))

    def operator(vector):
        return jax.jvp(gradient, (flat,), (vector,))[1] + damping * vector

    def solve(right_hand_side):
        solution, _ = jax.scipy.sparse.linalg.cg(
            operator, right_hand_side, tol=tolerance, maxiter=max_iterations
        )
        norm = jnp.linalg.norm(right_hand_side)
        residual = jnp.linalg.norm(operator(solution) - right_hand_side)
        return solution, jnp.where(norm > 0, residual / jnp.where(norm > 0, norm, 1.0), 0.0)

    query_gradients = _flat_example_gradients(loss_fn, params, query_data, chunk_size)
    return jax.lax.map(solve, query_gradients, batch_size=chunk_size)


def conjugate_gradient_influence(
    loss_fn, params, train_data, query_data, *, damping: float,
    max_iterations: int = 100, tolerance: float = 1e-5, chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> jax.Array:
    r"""The damped influence function of :func:`exact_influence`, Hessian-free.

    Solves :math:`(H + \delta I)\,v_k = \nabla\phi_k` for each query by conjugate gradients
    (``jax.scipy.sparse.linalg.cg``) on Hessian-vector products (forward-over-reverse) of
    the mean training loss, then ``scores[i, k] = -v_k · ∇ℓ_i``, per-example gradients computed
    ``chunk_size`` at a time. Memory is :math:`O(q d)`, never :math:`O(d^2)` or :math:`O(n d)`.
    CG needs :math:`H + \delta I` positive definite: choose ``damping`` above
    :math:`-\lambda_{\min}(H)` on non-convex models. Warns if a solve's relative residual is
    above ``10 * tolerance`` after ``max_iterations``.

    Returns:
      ``(n, q)`` scores, negative = helpful, per-example form (no :math:`1/n`).
    """
    _check_influence_inputs(loss_fn, params, train_data, query_data, damping)
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance!r}")
    chunk_size = check_int("chunk_size", chunk_size, 1)
    dtype = ravel_pytree(params)[0].dtype
    directions, residuals = _conjugate_gradient_directions(
        params, train_data, query_data, jnp.asarray(damping, dtype), jnp.asarray(tolerance, dtype),
        loss_fn=StructuralKey(loss_fn), chunk_size=chunk_size,
        max_iterations=check_int("max_iterations", max_iterations, 1),
    )
    worst = float(jnp.max(residuals))
    if not worst <= 10 * tolerance:
        warnings.warn(
            f"conjugate gradients did not converge: worst relative residual {worst:.3g} after "
            f"{max_iterations} iterations (tolerance {tolerance}); raise max_iterations or "
            "damping", RuntimeWarning, stacklevel=2,
        )
    return _scores_against_jit(params, train_data, directions, loss_fn=StructuralKey(loss_fn),
                               chunk_size=chunk_size)


@partial(jax.jit, static_argnames=("loss_fn", "chunk_size"))
def _scores_against_jit(params, train_data, directions, *, loss_fn, chunk_size):
    return _scores_against(loss_fn.value, params, train_data, directions, chunk_size)


@partial(jax.jit, static_argnames=("loss_fn", "chunk_size"))
def _grad_dot(params, train_data, query_data, *, loss_fn, chunk_size):
    query_gradients = _flat_example_gradients(loss_fn.value, params, query_data, chunk_size)
    return _scores_against(loss_fn.value, params, train_data, query_gradients, chunk_size)


def grad_dot(
    loss_fn, params, train_data, query_data, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> jax.Array:
    r"""Grad-dot: TracIn at the final checkpoint with unit learning rate (Pruthi et al. 2020).

    .. math::

        \text{scores}[i, k] = -\nabla\phi_k^\top \nabla\ell_i

    (the influence function with :math:`H` replaced by :math:`I`), ``(n, q)``, negative =
    helpful: one gradient step on example :math:`i` with learning rate :math:`\eta` changes the
    query loss by :math:`\eta \cdot` ``scores[i, k]`` to first order.
    """
    _check_influence_inputs(loss_fn, params, train_data, query_data, 0.0)
    return _grad_dot(params, train_data, query_data, loss_fn=StructuralKey(loss_fn),
                     chunk_size=check_int("chunk_size", chunk_size, 1))
