r"""Compress a parameter pytree and measure what it costs in loss (arXiv 2510.12077).

Compressibility as a measure of complexity (Urdshals, Lau, Hoogland, van Wingerden, Murfet,
arXiv 2510.12077; docs/mathematics.md §6): for a compression :math:`c` at level :math:`\ell`
(bits per weight, the rank of each matrix) the **loss increase** at the trained point is

.. math::

    \Delta L(c) = L_n(c(w^*)) - L_n(w^*),

and the **critical level** for a tolerance :math:`\varepsilon` is the most aggressive level
(fewest bits, lowest rank) with :math:`\Delta L \le \varepsilon`. Its description length is
:math:`\sum \text{size} \times \text{bits}`. Singular learning theory says how many such codes
there are: the volume of the :math:`\varepsilon`-sublevel set scales as

.. math::

    \operatorname{Vol}\{w : L(w) - L(w^*) < \varepsilon\} \propto
    \varepsilon^{\lambda} (\log 1/\varepsilon)^{m-1},

so a point with a smaller learning coefficient :math:`\lambda` (more degenerate) sits in a
larger sublevel set and needs fewer bits to pin down: degeneracy, not curvature, sets the
price of compression. The two compressions here:

* :func:`quantize`: ``b``-bit symmetric rounding, :math:`2^b` levels spanning
  :math:`[-\max|w|, \max|w|]` with step :math:`\Delta = 2\max|w|/(2^b - 1)` per tensor (or per
  output channel). With a random offset (subtractive dithered rounding) the rounding error is
  uniform on :math:`[-\Delta/2, \Delta/2]` and independent across coordinates, so on a
  quadratic :math:`E[\Delta L] = \Delta^2 \operatorname{tr}(H)/24`.
* :func:`low_rank`: rank-``k`` SVD truncation of matrices; for a linear layer with whitened
  inputs (:math:`\Sigma_{xx} = I`) at its least-squares fit,
  :math:`\Delta L = \tfrac12 \sum_{i>k} \sigma_i^2`.

:func:`loss_increase` evaluates :math:`\Delta L` over levels (with :func:`slt_jax.evaluate_loss`),
:func:`critical_level` reads the critical level off it, and
:func:`slt_jax.estimate_compressibility` does both beside the LLC of the same model.
:func:`hessian_trace` gives the curvature baseline :math:`\operatorname{tr} H`.

Example:
  >>> import jax.numpy as jnp, slt_jax as slt
  >>> params = {"w": jnp.array([-1.0, -0.2, 0.3, 1.0]), "step": jnp.array(3)}
  >>> [round(v, 4) for v in slt.compression.quantize(params, bits=2)["w"].tolist()]
  [-1.0, -0.3333, 0.3333, 1.0]
  >>> int(slt.compression.quantize(params, bits=2)["step"])     # non-float leaves untouched
  3
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from slt_jax._frozen import Frozen

PyTree = Any

__all__ = [
    "critical_level",
    "description_length",
    "hessian_trace",
    "loss_increase",
    "low_rank",
    "quantize",
]

#: ``granularity=`` values of :func:`quantize`
GRANULARITIES = ("tensor", "channel")
#: ``scheme=`` values of :func:`quantize`
SCHEMES = ("symmetric",)


# --------------------------------------------------------------------------------------------
# Which leaves (elements) are compressed
# --------------------------------------------------------------------------------------------


def _is_float(leaf) -> bool:
    return jnp.issubdtype(jnp.result_type(leaf), jnp.floating)


def _frozen_flags(params: PyTree) -> list[bool]:
    """One flag per array leaf of ``params``: whether it sits inside a :class:`Frozen` node."""
    is_frozen = lambda x: isinstance(x, Frozen)  # noqa: E731
    nodes = jax.tree.leaves(params, is_leaf=is_frozen)
    return [is_frozen(node) for node in nodes for _ in jax.tree.leaves(node)]


def _paths(params: PyTree) -> list[str]:
    from slt_jax.masks import path_string

    return [path_string(path) or "<root>" for path, _ in jax.tree_util.tree_leaves_with_path(params)]


def _selected_elements(params: PyTree, mask: PyTree | None) -> list:
    """Per leaf: ``False`` (untouched), ``True`` (the whole leaf) or a boolean element mask.

    Non-float leaves and leaves inside :class:`Frozen` are never compressed.
    """
    leaves = jax.tree.leaves(params)
    if mask is None:
        chosen = [True] * len(leaves)
    else:
        if jax.tree.structure(mask) != jax.tree.structure(params):
            raise ValueError(
                "mask must have the tree structure of params (one boolean per leaf, or a boolean "
                "array of the leaf's shape; build it with slt.masks.select(params, ...)); got "
                f"{jax.tree.structure(mask)} for params {jax.tree.structure(params)}"
            )
        chosen = []
        for path, leaf, value in zip(_paths(params), leaves, jax.tree.leaves(mask)):
            value = np.asarray(value)
            if value.dtype != np.bool_ or value.shape not in ((), np.shape(leaf)):
                raise ValueError(
                    f"the mask leaf at {path} must be a bool or a boolean array of shape "
                    f"{np.shape(leaf)}, got {value.dtype} of shape {value.shape}"
                )
            chosen.append(bool(value) if value.ndim == 0 else value)
    frozen = _frozen_flags(params)
    return [
        False if (isinstance(c, bool) and not c) or fz or not _is_float(leaf) else c
        for c, fz, leaf in zip(chosen, frozen, leaves)
    ]


def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise TypeError(f"bits must be an int >= 1 (bits per weight), got {bits!r}")
    if bits < 1:
        raise ValueError(f"bits must be an int >= 1 (bits per weight), got {bits!r}")
    return int(bits)


# --------------------------------------------------------------------------------------------
# Quantization
# --------------------------------------------------------------------------------------------


def _max_magnitude(values, selected, granularity, channel_axis):
    """``max |w|`` over the selected elements, per tensor or per output channel (keepdims)."""
    magnitude = jnp.abs(values)
    if selected is not True:
        magnitude = jnp.where(jnp.asarray(selected), magnitude, jnp.zeros_like(magnitude))
    if granularity == "channel" and values.ndim >= 2:
        channel = channel_axis % values.ndim
        axes = tuple(axis for axis in range(values.ndim) if axis != channel)
        return jnp.max(magnitude, axis=axes, keepdims=True)
    return jnp.max(magnitude, keepdims=True) if values.ndim else jnp.max(magnitude)


def _quantize_leaf(leaf, selected, bits, granularity, channel_axis, offset_key):
    values = jnp.asarray(leaf)
    top = 2.0 ** bits - 1.0  # the largest level index: 2^b levels 0 .. 2^b - 1
    largest = _max_magnitude(values, selected, granularity, channel_axis)
    step = 2.0 * largest / top
    origin = -largest  # level j sits at -max|w| + j Δ (+ the offset)
    if offset_key is not None:
        offset = jax.random.uniform(offset_key, values.shape, values.dtype, -0.5, 0.5)
        origin = origin + offset * step
    safe_step = jnp.where(step > 0, step, jnp.ones_like(step))
    index = jnp.clip(jnp.round((values - origin) / safe_step), 0.0, top)
    rounded = jnp.where(step > 0, origin + index * step, values)  # all zero: exact already
    if selected is not True:
        rounded = jnp.where(jnp.asarray(selected), rounded, values)
    return rounded.astype(values.dtype)


def quantize(
    params: PyTree,
    bits: int,
    scheme: str = "symmetric",
    granularity: str = "tensor",
    dither_key: jax.Array | None = None,
    mask: PyTree | None = None,
    *,
    channel_axis: int = -1,
) -> PyTree:
    r"""``b``-bit symmetric quantization of every float leaf of ``params`` (arXiv 2510.12077).

    Each tensor (``granularity="tensor"``) or each output channel (``"channel"``: the slices
    along ``channel_axis``, the last axis of an ``(in, out)`` kernel; leaves with fewer than 2
    axes keep one scale) is rounded to the :math:`2^b` levels

    .. math::

        q_j = -m + j\,\Delta,\quad j = 0, \dots, 2^b - 1,\qquad
        \Delta = \frac{2m}{2^b - 1},\quad m = \max|w|,

    which span :math:`[-m, m]` (so :math:`\pm m` are exact and, for every ``b``, 0 is not a
    level). With ``dither_key`` the grid of each coordinate is shifted by its own uniform offset
    :math:`u \sim U[-\Delta/2, \Delta/2)` (subtractive dithered rounding; a decoder that knows
    the key's offsets reads the same :math:`2^b` levels): the error :math:`q(w) - w` is then
    uniform on :math:`[-\Delta/2, \Delta/2]` and independent of :math:`w` and across
    coordinates, so on a quadratic :math:`L = L^* + \tfrac12 (w - w^*)^\top H (w - w^*)`

    .. math::

        E_u[\Delta L] = \frac{\Delta^2}{24} \operatorname{tr}(H)

    (a sum over tensors of :math:`\Delta_t^2 \operatorname{tr}(H_t)/24` when each has its
    own step). Without an offset (deterministic rounding) the same holds approximately once
    :math:`\Delta` is small against the spread of the weights (Bennett's high-resolution
    approximation), so :math:`\Delta L \propto \Delta^2 \propto 4^{-b}`.

    Args:
      params: a pytree; only float leaves are quantized. Integer/bool leaves and leaves inside
        :class:`slt_jax.adapters.Frozen` (BatchNorm statistics, ...) are returned untouched.
      bits: bits per weight, an int ``>= 1``.
      scheme: ``"symmetric"`` (the only one for now).
      granularity: ``"tensor"`` or ``"channel"``.
      dither_key: a ``jax.random.key`` for the offsets (``None``: plain rounding). The function
        is traceable in ``params`` and ``dither_key``, so ``jax.vmap`` over keys works.
      mask: which coordinates to compress (the others stay at ``params``): a boolean pytree
        of ``params``' structure, one bool per leaf or a boolean array of the leaf's shape
        (:mod:`slt_jax.masks` builds them). :math:`m` is taken over the selected elements.
      channel_axis: the output-channel axis for ``granularity="channel"``.

    Returns:
      the same pytree with the selected float leaves quantized (same dtypes).

    Raises:
      ValueError / TypeError: ``bits < 1`` or not an int, an unknown ``scheme`` or
      ``granularity``, or a ``mask`` whose structure or leaf shapes do not match ``params``.
    """
    bits = _check_bits(bits)
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    selected = _selected_elements(params, mask)
    leaves, structure = jax.tree.flatten(params)
    out = []
    for index, (leaf, chosen) in enumerate(zip(leaves, selected)):
        if chosen is False:
            out.append(leaf)
            continue
        key = None if dither_key is None else jax.random.fold_in(dither_key, index)
        out.append(_quantize_leaf(leaf, chosen, bits, granularity, channel_axis, key))
    return jax.tree.unflatten(structure, out)


# --------------------------------------------------------------------------------------------
# Low rank
# --------------------------------------------------------------------------------------------


def _selected_matrices(params: PyTree, selector) -> list[bool]:
    """Per leaf: whether :func:`low_rank` truncates it (a selected, non-frozen 2-D float leaf)."""
    from slt_jax.masks import select

    leaves = jax.tree.leaves(params)
    if selector is None:
        chosen = [True] * len(leaves)
    else:
        chosen = [bool(flag) for flag in jax.tree.leaves(select(params, selector))]
    frozen = _frozen_flags(params)
    matrices = [
        c and not fz and np.ndim(leaf) == 2 and _is_float(leaf)
        for c, fz, leaf in zip(chosen, frozen, leaves)
    ]
    if not any(matrices):
        shapes = ", ".join(f"{p} {tuple(np.shape(x))}" for p, x in zip(_paths(params), leaves))
        raise ValueError(
            f"low_rank: the selector {selector!r} selects no 2-D float leaf (a matrix to "
            f"truncate); leaves: {shapes}"
        )
    return matrices


def _check_rank(rank, params, matrices) -> int:
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise TypeError(f"rank must be an int >= 1, got {rank!r}")
    for path, leaf, chosen in zip(_paths(params), jax.tree.leaves(params), matrices):
        if chosen and not 1 <= rank <= min(np.shape(leaf)):
            raise ValueError(
                f"rank must be in [1, min(shape)] for every selected matrix; got rank={rank} "
                f"for the leaf at {path} of shape {tuple(np.shape(leaf))}"
            )
    return int(rank)


def _truncate(matrix, rank):
    left, singular, right = jnp.linalg.svd(matrix, full_matrices=False)
    return ((left[:, :rank] * singular[None, :rank]) @ right[:rank]).astype(matrix.dtype)


def low_rank(params: PyTree, rank: int, selector=None) -> PyTree:
    r"""Rank-``k`` truncation of the selected matrices of ``params`` (arXiv 2510.12077).

    Each selected 2-D float leaf :math:`W = \sum_i \sigma_i u_i v_i^\top` becomes
    :math:`W_k = \sum_{i \le k} \sigma_i u_i v_i^\top` (Eckart–Young: the closest rank-``k``
    matrix in Frobenius norm, :math:`\lVert W - W_k\rVert_F^2 = \sum_{i>k}\sigma_i^2`). For a
    linear layer :math:`f(x) = x W` with squared loss :math:`\ell = \tfrac12\lVert xW - y\rVert^2`,
    whitened inputs (:math:`\Sigma_{xx} = \frac1n X^\top X = I`) and :math:`W` the least-squares
    fit, the loss increase is exactly

    .. math::

        \Delta L = \tfrac12 \sum_{i>k} \sigma_i^2 .

    Stored as two factors a rank-``k`` matrix of shape ``(r, c)`` costs :math:`k(r + c)`
    numbers (:func:`description_length`).

    Args:
      params: a pytree; leaves that are not 2-D floats or sit inside
        :class:`slt_jax.adapters.Frozen` are returned untouched.
      rank: the rank ``k``, an int in ``[1, min(shape)]`` for every selected matrix.
      selector: which leaves, as :func:`slt_jax.masks.select` reads it (a glob such as
        ``"layers/*/kernel"``, a regular expression, a callable ``(path, leaf) -> bool`` or a
        list of these; a glob selecting a subtree selects the matrices in it); ``None``: every
        2-D float leaf.

    Raises:
      ValueError / TypeError: ``rank`` not an int, below 1 or above ``min(shape)`` of a
      selected matrix; a selector that matches nothing or no 2-D float leaf.

    Example:
      >>> import jax.numpy as jnp, slt_jax as slt
      >>> w = jnp.diag(jnp.array([3.0, 2.0, 1.0]))
      >>> jnp.diag(slt.compression.low_rank({"w": w, "b": jnp.ones(3)}, 2)["w"]).tolist()
      [3.0, 2.0, 0.0]
    """
    matrices = _selected_matrices(params, selector)
    rank = _check_rank(rank, params, matrices)
    leaves, structure = jax.tree.flatten(params)
    out = [_truncate(jnp.asarray(leaf), rank) if chosen else leaf
           for leaf, chosen in zip(leaves, matrices)]
    return jax.tree.unflatten(structure, out)


# --------------------------------------------------------------------------------------------
# Loss increase, critical level, description length
# --------------------------------------------------------------------------------------------


def loss_increase(
    loss_fn: Callable[[PyTree, PyTree], jax.Array],
    params: PyTree,
    data: PyTree,
    compress: Callable[[PyTree, Any], PyTree],
    levels: Sequence,
    *,
    init_loss: float | None = None,
    chunk_size: int = 4096,
) -> np.ndarray:
    r"""The loss increase :math:`\Delta L(c_\ell) = L_n(c_\ell(w^*)) - L_n(w^*)` at each level.

    (arXiv 2510.12077.) Both losses are :func:`slt_jax.evaluate_loss` over all of ``data`` (in
    chunks); the compressed parameters have the shapes of ``params``, so every level reuses one
    compiled loss.

    Args:
      loss_fn: ``loss_fn(params, batch)`` per-example (per-token) losses.
      params: :math:`w^*`.
      data: the data of :math:`L_n`.
      compress: ``compress(params, level) -> params``, e.g.
        ``lambda p, b: slt.compression.quantize(p, b)``.
      levels: the levels to evaluate (e.g. bits ``range(1, 17)`` or ranks).
      init_loss: :math:`L_n(w^*)` if known (computed otherwise).

    Returns:
      ``(len(levels),)`` float64 array of :math:`\Delta L`.
    """
    from slt_jax.adapters import as_params
    from slt_jax.sampling import evaluate_loss

    params = as_params(loss_fn, params)
    levels = list(levels)
    if not levels:
        raise ValueError("levels must hold at least one level")
    base = (float(evaluate_loss(loss_fn, params, data, chunk_size=chunk_size))
            if init_loss is None else float(init_loss))
    return np.asarray([
        float(evaluate_loss(loss_fn, compress(params, level), data, chunk_size=chunk_size)) - base
        for level in levels
    ], np.float64)


def critical_level(levels: Sequence, increases: Sequence, tolerance: float):
    r"""The most aggressive level whose loss increase is within ``tolerance`` (arXiv 2510.12077).

    .. math::

        \ell_c(\varepsilon) = \min\{\ell : \Delta L(c_{\ell'}) \le \varepsilon
        \ \text{for every level}\ \ell' \ge \ell\}

    *Aggressive* means a **lower** level: fewer bits, lower rank. For a scheme where a higher
    number compresses more (a pruned fraction), pass the negated levels. Levels whose increase
    is NaN never qualify. Every milder level must qualify too, so a lucky aggressive level (a
    3-bit rounding that happens to land near w* while 4 bits does not) is not taken: in
    ``[2, 3, 4, 8]`` with increases ``[0.01, 1.0, 0.02, 0]`` and tolerance 0.05 the answer is
    4, not 2.

    Returns:
      the level (as given), or ``None`` when no level meets the tolerance.

    Example:
      >>> critical_level([2, 4, 8], [0.5, 0.01, 1e-4], tolerance=0.05)
      4
    """
    levels = list(levels)
    increases = np.asarray(increases, np.float64).reshape(-1)
    if len(levels) != increases.size or not levels:
        raise ValueError(
            f"levels and increases must have the same positive length, got {len(levels)} "
            f"levels and {increases.size} increases"
        )
    tolerance = float(tolerance)
    if not np.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    values = np.asarray(levels, np.float64)
    order = np.argsort(-values, kind="stable")          # mildest level first
    passing = np.cumprod(increases[order] <= tolerance)  # NaN compares False
    if not passing[0]:
        return None
    best = levels[int(order[int(np.sum(passing)) - 1])]
    return best.item() if isinstance(best, np.generic) else best


def description_length(
    params: PyTree,
    method: str,
    level: int,
    *,
    mask: PyTree | None = None,
    selector=None,
    bits_per_float: int = 32,
) -> int:
    r"""Bits to store the compressed coordinates of ``params`` at ``level`` (arXiv 2510.12077).

    .. math::

        \text{quantize: } \sum_{\text{compressed leaves}} \text{size} \times b,\qquad
        \text{low rank: } \sum_{\text{truncated matrices}} k\,(r + c) \times
        \text{bits\_per\_float},

    over the coordinates :func:`quantize` (``mask``) or :func:`low_rank` (``selector``) would
    compress. The coordinates left as they are (and the per-tensor scales) cost the same at
    every level, so they are left out: compare description lengths of one architecture.
    """
    if method == "quantize":
        bits = _check_bits(level)
        selected = _selected_elements(params, mask)
        sizes = [np.size(leaf) if chosen is True else int(np.sum(chosen)) if chosen is not False
                 else 0 for leaf, chosen in zip(jax.tree.leaves(params), selected)]
        return int(sum(sizes)) * bits
    if method == "low_rank":
        matrices = _selected_matrices(params, selector)
        rank = _check_rank(level, params, matrices)
        return int(sum(rank * sum(np.shape(leaf)) for leaf, chosen
                       in zip(jax.tree.leaves(params), matrices) if chosen)) * int(bits_per_float)
    raise ValueError(f"method must be 'quantize' or 'low_rank', got {method!r}")


# --------------------------------------------------------------------------------------------
# Curvature baseline
# --------------------------------------------------------------------------------------------


def hessian_trace(
    loss_fn: Callable[[PyTree, PyTree], jax.Array],
    params: PyTree,
    data: PyTree,
    *,
    key: jax.Array | None = None,
    num_probes: int = 100,
) -> tuple[float, float]:
    r""":math:`\operatorname{tr} H` of :math:`L_n` at ``params``: the curvature baseline.

    .. math::

        \operatorname{tr} H = \sum_i e_i^\top H e_i
        \quad(\text{exact}),\qquad
        \operatorname{tr} H = E_z[z^\top H z],\ z_i = \pm 1
        \quad(\text{Hutchinson 1989})

    with Hessian-vector products (forward over reverse mode) of the mean loss over all of
    ``data`` (one batch: the data must fit in memory; every leaf of ``params`` a float).
    ``key=None``: exact, one product per coordinate (small models); with a key:
    ``num_probes`` Rademacher probes. One compiled program per loss and parameter shapes.
    On a quadratic the dithered quantization of :func:`quantize` costs
    :math:`\Delta^2\operatorname{tr} H/24` (arXiv 2510.12077), the curvature prediction that
    the LLC is compared with.

    Returns:
      ``(trace, standard_error)``; the standard error is 0 for the exact trace.
    """
    from slt_jax._structural import StructuralKey

    size = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(params))
    if key is None:
        forms = _quadratic_forms(params, data, None, loss_fn=StructuralKey(loss_fn), size=size)
        return float(jnp.sum(forms)), 0.0
    if isinstance(num_probes, bool) or not isinstance(num_probes, (int, np.integer)) \
            or num_probes < 2:
        raise ValueError(f"num_probes must be an int >= 2, got {num_probes!r}")
    dtype = jnp.result_type(*jax.tree.leaves(params))
    probes = jax.random.rademacher(key, (int(num_probes), size), dtype)
    values = np.asarray(
        _quadratic_forms(params, data, probes, loss_fn=StructuralKey(loss_fn), size=size),
        np.float64)
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(values.size))


@functools.partial(jax.jit, static_argnames=("loss_fn", "size"))
def _quadratic_forms(params, data, directions, *, loss_fn, size):
    r""":math:`v^\top H v` for each row of ``directions`` (``None``: the unit vectors)."""
    from jax.flatten_util import ravel_pytree

    flat, unravel = ravel_pytree(params)

    def mean_loss(vector):
        return jnp.mean(loss_fn.value(unravel(vector), data))

    def quadratic_form(direction):
        product = jax.jvp(jax.grad(mean_loss), (flat,), (direction,))[1]
        return jnp.vdot(direction, product)

    if directions is None:
        directions = jnp.eye(size, dtype=flat.dtype)
    return jax.lax.map(quadratic_form, directions)
