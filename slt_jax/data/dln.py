"""Deep linear network teachers and data: the DLN benchmark protocol of docs/mathematics.md §7.

Protocol (Furman & Lau, arXiv 2402.03698): the teacher's layers are Xavier-normal; each layer,
with probability ½, has its trailing rows zeroed so that it has a random lower rank; ``r`` is the
rank of the teacher's end-to-end product; inputs ``x ~ U[−10, 10]^{H_0}`` and targets
``y = teacher(x)`` without noise, so ``L_n(w*) = 0`` at the teacher. The true learning
coefficient then follows from Aoyagi's formula (``slt_jax.truth.deep_linear_network``).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from slt_jax.models.dln import _validate_dln_params, _validate_widths, dln_apply, dln_init, dln_loss

__all__ = [
    "DLNTeacher",
    "dln_problem",
    "make_dln_data",
    "make_dln_teacher",
    "random_dln_widths",
]


class DLNTeacher(NamedTuple):
    """A deep linear network teacher.

    Attributes:
      params: the teacher's weight matrices, ``params[i].shape == (widths[i], widths[i+1])``.
      widths: ``(H_0, ..., H_L)`` as a tuple of ints.
      rank: numerical rank of the end-to-end product ``W_0 ... W_{L-1}``
        (``numpy.linalg.matrix_rank`` of the product computed in float64).
      true_lambda: the learning coefficient at the teacher, ``deep_linear_network(widths, rank)``
        from :mod:`slt_jax.truth` (Aoyagi 2024), or ``None`` where that module is unavailable.
    """

    params: list[jax.Array]
    widths: tuple[int, ...]
    rank: int
    true_lambda: Fraction | None


def _numpy_generator(key: jax.Array) -> np.random.Generator:
    """A NumPy generator seeded deterministically from a JAX key (for host-side structure draws)."""
    seed = np.asarray(jax.random.bits(key, (4,), dtype=jnp.uint32))
    return np.random.default_rng(seed)


def _product_rank(params: Sequence[Any]) -> int:
    """Numerical rank of the end-to-end product, computed in float64 with NumPy's default tolerance."""
    product = np.asarray(params[0], dtype=np.float64)
    for weight in params[1:]:
        product = product @ np.asarray(weight, dtype=np.float64)
    return int(np.linalg.matrix_rank(product))


def _true_lambda(widths: tuple[int, ...], rank: int) -> Fraction | None:
    """Aoyagi's DLN learning coefficient from ``slt_jax.truth``, or ``None`` if it is unavailable."""
    try:
        from slt_jax.truth import deep_linear_network
    except ImportError:
        return None
    return deep_linear_network(widths, rank)


def minimal_rank_factorization(params: Sequence[Any], key: jax.Array) -> list[jax.Array]:
    r"""The same end-to-end map, refactored so that every layer has rank ``r = rank(product)``.

    With :math:`T = W_0\cdots W_{L-1} = U S V^\top` (rank :math:`r`) and random orthonormal
    frames :math:`O_i \in \mathbb R^{H_i \times r}` for the hidden layers, the layers
    :math:`U S^{1/L} O_1^\top,\ O_1 S^{1/L} O_2^\top,\ \dots,\ O_{L-1} S^{1/L} V^\top`
    multiply to :math:`T` and each has rank exactly :math:`r`.

    Why: Aoyagi's :math:`\lambda` is the *global* learning coefficient, the minimum of the local
    one over the set of true parameters, attained at these most singular points. At a teacher
    whose layers have rank above :math:`r` the local learning coefficient can be larger:
    for widths ``[15, 4, 26]`` with layer ranks ``[4, 1]`` it is
    :math:`HN/2 + (M - H)/2 = 57.5` (regular in :math:`W_2` given a full-rank :math:`W_1`,
    plus the codimension of :math:`\{u \in \mathrm{col}(W_1)\}` in the Grassmannian), while
    Aoyagi's :math:`\lambda = 41`; SGLD measures 57.6-58.7 there and 42.1 at this
    refactorization.
    """
    matrices = [np.asarray(w, dtype=np.float64) for w in params]
    product = matrices[0]
    for weight in matrices[1:]:
        product = product @ weight
    rank = int(np.linalg.matrix_rank(product))
    left, singular, right = np.linalg.svd(product)
    left, singular, right = left[:, :rank], singular[:rank], right[:rank].T
    root = np.diag(singular ** (1.0 / len(matrices)))
    generator = _numpy_generator(key)
    frames = [left]
    for weight in matrices[1:]:
        gaussian = generator.standard_normal((weight.shape[0], max(rank, 1)))
        frames.append(np.linalg.qr(gaussian)[0][:, :rank])
    frames.append(right)
    dtype = jnp.result_type(params[0])
    refactored = []
    for index in range(len(matrices)):
        layer = frames[index] @ root @ frames[index + 1].T
        refactored.append(jnp.asarray(layer, dtype=dtype))
    return refactored


def make_dln_teacher(
    key: jax.Array,
    widths: Sequence[int],
    rank_deficiency_probability: float = 0.5,
    minimal_rank: bool = False,
) -> DLNTeacher:
    """Draw a DLN teacher following the Furman & Lau protocol (arXiv 2402.03698, docs/mathematics.md §7).

    1. Every layer ``W_i`` (shape ``(H_i, H_{i+1})``) is Xavier-normal (:func:`dln_init`).
    2. Independently for each layer, with probability ``rank_deficiency_probability``, a rank
       ``k`` is drawn uniformly from ``{1, ..., min(H_i, H_{i+1}) − 1}`` and rows ``k, k+1, ...``
       of ``W_i`` are set to zero, so ``rank(W_i) = k < min(H_i, H_{i+1})`` almost surely.
       **(ours)** ``k ≥ 1`` so that no layer (hence the product) is identically zero; a layer
       with ``min(H_i, H_{i+1}) = 1`` therefore cannot be made deficient and stays full rank
       (its coin is still drawn, so the draws of the other layers do not depend on it).
    3. ``rank`` is the numerical rank of the product ``W_0 ⋯ W_{L−1}`` (float64 NumPy).
    4. With ``minimal_rank=True`` **(ours)** the layers are then refactored with the same
       product so that every layer has rank ``rank`` (:func:`minimal_rank_factorization`):
       only there does the local learning coefficient at the teacher equal Aoyagi's global
       ``true_lambda``.

    Args:
      key: a JAX PRNG key.
      widths: ``(H_0, ..., H_L)``, at least two positive integers.
      rank_deficiency_probability: probability in ``[0, 1]`` that a layer is made rank deficient.
      minimal_rank: refactor to a teacher whose local learning coefficient is ``true_lambda``.

    Returns:
      A :class:`DLNTeacher` with ``true_lambda`` from ``slt_jax.truth.deep_linear_network`` when
      that module is importable, else ``None``.
    """
    widths = _validate_widths(widths)
    if not (
        isinstance(rank_deficiency_probability, numbers.Real)
        and 0.0 <= float(rank_deficiency_probability) <= 1.0
    ):
        raise ValueError(
            "rank_deficiency_probability must be a number in [0, 1], "
            f"got {rank_deficiency_probability!r}."
        )
    weight_key, structure_key = jax.random.split(key)
    params = dln_init(weight_key, widths)
    generator = _numpy_generator(structure_key)
    number_of_layers = len(widths) - 1
    coins = generator.random(number_of_layers) < float(rank_deficiency_probability)
    uniforms = generator.random(number_of_layers)
    for index, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        full_rank = min(fan_in, fan_out)
        if coins[index] and full_rank > 1:
            reduced_rank = 1 + int(uniforms[index] * (full_rank - 1))  # uniform on 1..full_rank-1
            # Multiply by a 0/1 column (not `.at[k:].set`) so one program serves every k.
            row_mask = (np.arange(fan_in) < reduced_rank).reshape(fan_in, 1)
            params[index] = params[index] * jnp.asarray(row_mask, dtype=params[index].dtype)
    rank = _product_rank(params)
    if minimal_rank:
        params = minimal_rank_factorization(params, jax.random.fold_in(structure_key, 1))
    return DLNTeacher(
        params=params, widths=widths, rank=rank, true_lambda=_true_lambda(widths, rank)
    )


def make_dln_data(
    key: jax.Array,
    teacher_params: Sequence[jax.Array] | DLNTeacher,
    num_samples: int,
    input_range: float = 10.0,
) -> tuple[jax.Array, jax.Array]:
    """Noise-free teacher data: ``x ~ U[−input_range, input_range)^{H_0}``, ``y = teacher(x)``.

    Args:
      key: a JAX PRNG key.
      teacher_params: the teacher's weight matrices (or a :class:`DLNTeacher`).
      num_samples: number of examples ``n``.
      input_range: half-width of the input cube (10 in arXiv 2402.03698).

    Returns:
      ``(x, y)`` with ``x.shape == (n, H_0)`` and ``y = dln_apply(teacher_params, x)`` of shape
      ``(n, H_L)``, both in the teacher's dtype.
    """
    if isinstance(teacher_params, DLNTeacher):
        teacher_params = teacher_params.params
    teacher_params = _validate_dln_params(teacher_params)
    if isinstance(num_samples, bool) or not isinstance(num_samples, numbers.Integral) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}.")
    if not (isinstance(input_range, numbers.Real) and input_range > 0):
        raise ValueError(f"input_range must be a positive number, got {input_range!r}.")
    dtype = jnp.result_type(teacher_params[0])
    x = jax.random.uniform(
        key,
        (int(num_samples), teacher_params[0].shape[0]),
        dtype=dtype,
        minval=-float(input_range),
        maxval=float(input_range),
    )
    y = dln_apply(teacher_params, x)
    return x, y


def random_dln_widths(
    key: jax.Array,
    num_layers_range: tuple[int, int] = (2, 6),
    width_range: tuple[int, int] = (5, 50),
    parameter_count_range: tuple[int, int] | None = None,
    max_attempts: int = 10_000,
) -> tuple[int, ...]:
    """Draw a random DLN architecture for a benchmark suite.

    The number of weight matrices ``L`` is uniform on ``num_layers_range`` and each of the
    ``L + 1`` widths is uniform on ``width_range`` (both ranges inclusive). If
    ``parameter_count_range = (low, high)`` is given, architectures are redrawn until the
    parameter count ``sum_i H_i H_{i+1}`` lies in ``[low, high]`` (rejection sampling, at most
    ``max_attempts`` draws). The result is a deterministic function of ``key``.

    Args:
      key: a JAX PRNG key.
      num_layers_range: inclusive ``(min, max)`` number of weight matrices, ``min ≥ 1``.
      width_range: inclusive ``(min, max)`` layer width, ``min ≥ 1``.
      parameter_count_range: optional inclusive ``(low, high)`` target parameter count.
      max_attempts: number of draws before giving up with a ``ValueError``.

    Returns:
      ``(H_0, ..., H_L)`` as a tuple of ints.
    """
    def _check_range(value: Any, name: str, minimum: int) -> tuple[int, int]:
        if (
            not isinstance(value, (tuple, list))
            or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in value)
            or not (minimum <= value[0] <= value[1])
        ):
            raise ValueError(
                f"{name} must be a pair of integers (low, high) with {minimum} <= low <= high, "
                f"got {value!r}."
            )
        return int(value[0]), int(value[1])

    low_layers, high_layers = _check_range(num_layers_range, "num_layers_range", 1)
    low_width, high_width = _check_range(width_range, "width_range", 1)
    if parameter_count_range is not None:
        low_count, high_count = _check_range(parameter_count_range, "parameter_count_range", 1)
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, numbers.Integral) or max_attempts < 1:
        raise ValueError(f"max_attempts must be a positive integer, got {max_attempts!r}.")
    generator = _numpy_generator(key)
    for _ in range(int(max_attempts)):
        number_of_layers = int(generator.integers(low_layers, high_layers, endpoint=True))
        widths = tuple(
            int(w) for w in generator.integers(low_width, high_width, size=number_of_layers + 1, endpoint=True)
        )
        if parameter_count_range is None:
            return widths
        count = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
        if low_count <= count <= high_count:
            return widths
    raise ValueError(
        f"no architecture with {low_layers}..{high_layers} layers and widths {low_width}..{high_width} "
        f"had a parameter count in {parameter_count_range} after {max_attempts} attempts; widen the "
        "ranges or make them consistent."
    )


def dln_problem(
    key: jax.Array,
    widths: Sequence[int],
    num_samples: int = 10_000,
    input_range: float = 10.0,
    rank_deficiency_probability: float = 0.5,
) -> tuple[DLNTeacher, tuple[jax.Array, jax.Array], Callable[..., jax.Array]]:
    """A complete DLN benchmark problem (docs/mathematics.md §7): teacher, noise-free data and loss.

    Args:
      key: a JAX PRNG key (split into a teacher key and a data key).
      widths: ``(H_0, ..., H_L)``.
      num_samples: dataset size ``n``.
      input_range: half-width of the input cube.
      rank_deficiency_probability: see :func:`make_dln_teacher`.

    Returns:
      ``(teacher, (x, y), loss_fn)`` with ``loss_fn = dln_loss`` (per-example ``½‖f(x)−y‖²``),
      so ``loss_fn(teacher.params, (x, y))`` is zero; sample at ``w* = teacher.params``.
    """
    teacher_key, data_key = jax.random.split(key)
    teacher = make_dln_teacher(teacher_key, widths, rank_deficiency_probability)
    data = make_dln_data(data_key, teacher.params, num_samples, input_range)
    return teacher, data, dln_loss
