r"""``estimate_compressibility``: how far a model compresses within a loss tolerance, beside its
LLC (arXiv 2510.12077; docs/mathematics.md §6).

.. math::

    \Delta L(c_\ell) = L_n(c_\ell(w^*)) - L_n(w^*),\qquad
    \ell_c(\varepsilon) = \min\{\ell : \Delta L(c_\ell) \le \varepsilon\},\qquad
    \operatorname{Vol}\{L - L^* < \varepsilon\} \propto \varepsilon^{\lambda}(\log 1/\varepsilon)^{m-1}
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np

import slt_jax.compression as compression
from slt_jax.estimators.llc import LLCResult

PyTree = Any

__all__ = ["CompressibilityResult", "estimate_compressibility"]

METHODS = ("quantize", "low_rank")
#: default absolute tolerances on :math:`\Delta L` (in the units of ``loss_fn``)
DEFAULT_TOLERANCES = (1e-3, 1e-2, 1e-1)
#: default bits tried by ``method="quantize"``
DEFAULT_BITS = tuple(range(1, 17))


class CompressibilityResult(NamedTuple):
    """What :func:`estimate_compressibility` returns.

    Attributes:
      method: ``"quantize"`` (levels are bits per weight) or ``"low_rank"`` (ranks).
      levels: ``(L,)`` the levels tried, ascending (lower = more aggressive).
      loss_increases: ``(L,)`` :math:`\\Delta L` at each level (the mean over the dither offsets
        with ``dither=True``).
      loss_increase_mcse: ``(L,)`` the standard error of that mean over offsets (zeros without
        dithering: the increases are then exact).
      tolerances: ``(T,)`` the tolerances :math:`\\varepsilon`.
      critical_levels: ``(T,)`` the most aggressive level with :math:`\\Delta L \\le \\varepsilon`
        (``nan`` where no level meets it).
      description_length_bits: ``(T,)`` bits of the compressed coordinates at the critical
        level (:func:`slt_jax.compression.description_length`; ``nan`` where it is ``nan``).
      init_loss: :math:`L_n(w^*)`.
      llc: the :class:`slt_jax.LLCResult` of :func:`slt_jax.estimate_llc` at the same
        :math:`w^*` (its defaults; ``None`` with ``compute_llc=False``).
      hyperparameters: every choice: method, levels, tolerances, granularity, dither and
        offsets, ``bits_per_float``, the LLC options (the LLC's own choices are in
        ``llc.hyperparameters``), wall times.
    """

    method: str
    levels: np.ndarray
    loss_increases: np.ndarray
    loss_increase_mcse: np.ndarray
    tolerances: np.ndarray
    critical_levels: np.ndarray
    description_length_bits: np.ndarray
    init_loss: float
    llc: LLCResult | None
    hyperparameters: dict

    def summary(self) -> str:
        """One line per tolerance, and the LLC."""
        unit = "bits" if self.method == "quantize" else "rank"
        rows = [
            f"ΔL ≤ {eps:.3g}: {unit} {level:g}, {length:.4g} bits"
            for eps, level, length in zip(self.tolerances, self.critical_levels,
                                          self.description_length_bits)
        ]
        if self.llc is not None:
            rows.append(f"LLC = {self.llc.mean:.4g} ± {self.llc.mcse:.2g}")
        return "; ".join(rows)


def _check_tolerances(tolerances) -> np.ndarray:
    values = np.asarray(tolerances, np.float64).reshape(-1)
    if values.size == 0 or not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError(f"tolerances must be finite numbers >= 0 (at least one), got {tolerances!r}")
    return values


def _default_levels(method, params, selector) -> list[int]:
    if method == "quantize":
        return list(DEFAULT_BITS)
    matrices = compression._selected_matrices(params, selector)
    largest = min(min(np.shape(leaf)) for leaf, chosen
                  in zip(jax.tree.leaves(params), matrices) if chosen)
    return list(range(1, largest + 1))


def _check_arguments(method, params, levels, mask, selector, granularity, num_offsets):
    """Validate before anything is evaluated; returns the sorted levels."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "quantize" and selector is not None:
        raise TypeError("selector= chooses matrices for method='low_rank'; use mask= to choose "
                        "what method='quantize' compresses")
    if method == "low_rank" and mask is not None:
        raise TypeError("mask= chooses coordinates for method='quantize'; use selector= to "
                        "choose the matrices method='low_rank' truncates")
    if granularity not in compression.GRANULARITIES:
        raise ValueError(f"granularity must be one of {compression.GRANULARITIES}, "
                         f"got {granularity!r}")
    if isinstance(num_offsets, bool) or not isinstance(num_offsets, (int, np.integer)) \
            or num_offsets < 2:
        raise ValueError(f"num_offsets must be an int >= 2, got {num_offsets!r}")
    levels = _default_levels(method, params, selector) if levels is None else list(levels)
    if not levels:
        raise ValueError("levels must hold at least one level")
    if method == "quantize":
        compression._selected_elements(params, mask)  # a mismatched mask fails here
        levels = [compression._check_bits(level) for level in levels]
    else:
        matrices = compression._selected_matrices(params, selector)
        levels = [compression._check_rank(level, params, matrices) for level in levels]
    return sorted(set(levels))


def _increases(loss_fn, params, data, method, levels, options, init_loss, key):
    """``(ΔL, its standard error)`` per level; dithered: the mean over ``num_offsets`` offsets."""
    if method == "low_rank":
        compress = lambda p, rank: compression.low_rank(p, rank, options["selector"])  # noqa: E731
        values = compression.loss_increase(loss_fn, params, data, compress, levels,
                                           init_loss=init_loss)
        return values, np.zeros_like(values)

    def quantizer(offset_key):
        return lambda p, bits: compression.quantize(  # noqa: E731
            p, bits, granularity=options["granularity"], dither_key=offset_key,
            mask=options["mask"])

    if not options["dither"]:
        values = compression.loss_increase(loss_fn, params, data, quantizer(None), levels,
                                           init_loss=init_loss)
        return values, np.zeros_like(values)
    runs = np.stack([
        compression.loss_increase(loss_fn, params, data, quantizer(offset_key), levels,
                                  init_loss=init_loss)
        for offset_key in jax.random.split(key, options["num_offsets"])
    ])
    return runs.mean(axis=0), runs.std(axis=0, ddof=1) / np.sqrt(runs.shape[0])


def estimate_compressibility(
    loss_fn: Callable[[PyTree, PyTree], jax.Array],
    params: PyTree,
    data: PyTree,
    *,
    key: jax.Array,
    method: str = "quantize",
    tolerances: Sequence[float] = DEFAULT_TOLERANCES,
    levels: Sequence[int] | None = None,
    granularity: str = "tensor",
    mask: PyTree | None = None,
    selector=None,
    dither: bool = False,
    num_offsets: int = 8,
    bits_per_float: int = 32,
    compute_llc: bool = True,
    llc_options: dict | None = None,
) -> CompressibilityResult:
    r"""Critical compression levels and description lengths of ``params``, with its LLC.

    For each level :math:`\ell` of the compression (``method="quantize"``: ``b`` bits per
    weight, :func:`slt_jax.compression.quantize`; ``"low_rank"``: rank ``k`` of every selected
    matrix, :func:`slt_jax.compression.low_rank`) the loss increase
    :math:`\Delta L(c_\ell) = L_n(c_\ell(w^*)) - L_n(w^*)` on all of ``data``; for each tolerance
    :math:`\varepsilon` the critical level
    :math:`\ell_c(\varepsilon) = \min\{\ell : \Delta L(c_\ell) \le \varepsilon\}` and its
    description length (:math:`\sum \text{size}\times b` for quantization,
    :math:`\sum k(r + c)\times\text{bits\_per\_float}` for low rank). Beside them, the LLC of
    the same :math:`w^*` from :func:`slt_jax.estimate_llc` with its defaults (the one
    calibrated-run policy): Urdshals et al. (arXiv 2510.12077) find the critical level and the
    LLC closely correlated, as the volume scaling
    :math:`\operatorname{Vol}\{L - L^* < \varepsilon\} \propto \varepsilon^\lambda
    (\log 1/\varepsilon)^{m-1}` predicts: a more degenerate point (smaller :math:`\lambda`)
    sits in a larger sublevel set and needs fewer bits.

    Args:
      loss_fn, params, data: as for :func:`slt_jax.estimate_llc`.
      key: a ``jax.random.key``: split for the LLC and the dither offsets.
      method: ``"quantize"`` or ``"low_rank"``.
      tolerances: absolute tolerances :math:`\varepsilon` on :math:`\Delta L`, in the units of
        ``loss_fn`` (default ``(1e-3, 1e-2, 1e-1)``).
      levels: the levels to try; default bits ``1..16``, or ranks ``1..min(shape)`` (the
        smallest over the selected matrices).
      granularity: ``"tensor"`` or ``"channel"`` scales for quantization.
      mask: (quantize) the coordinates to compress, a :mod:`slt_jax.masks` pytree; the LLC is
        then the weight-refined LLC of the same coordinates.
      selector: (low rank) the matrices to truncate (:func:`slt_jax.masks.select` syntax); the
        LLC is then refined to the selected leaves.
      dither: quantize with random offsets (subtractive dithered rounding); :math:`\Delta L` is
        then the mean over ``num_offsets`` offsets, with its standard error.
      bits_per_float: bits per stored number of a low-rank factor (default 32).
      compute_llc: ``False`` to skip the LLC (``result.llc`` is ``None``).
      llc_options: keyword arguments passed to :func:`slt_jax.estimate_llc` (e.g.
        ``{"num_draws": 1000}``, ``{"sampler": "sgld"}``).

    Returns:
      a :class:`CompressibilityResult`.

    Example (a few seconds, so not a doctest; ``tests/test_compression.py`` runs it)::

        teacher = slt.data.make_dln_teacher(jax.random.key(0), [8, 4, 8], minimal_rank=True)
        data = slt.data.make_dln_data(jax.random.key(1), teacher, 500)
        res = slt.estimate_compressibility(slt.models.dln_loss, teacher.params, data,
                                           method="low_rank", key=jax.random.key(2))
        res.critical_levels, res.llc.mean   # the teacher's rank; Aoyagi's λ
    """
    start = time.perf_counter()
    from slt_jax.adapters import as_params
    from slt_jax.estimators.estimate import _warnings_at_caller, estimate_llc
    from slt_jax.masks import select
    from slt_jax.sampling import checked_loss_at_center

    params = as_params(loss_fn, params)
    levels = _check_arguments(method, params, levels, mask, selector, granularity, num_offsets)
    tolerances = _check_tolerances(tolerances)
    llc_key, offsets_key = jax.random.split(key)
    init_loss = checked_loss_at_center(loss_fn, params, data)
    options = dict(granularity=granularity, mask=mask, selector=selector, dither=bool(dither),
                   num_offsets=int(num_offsets))
    increases, errors = _increases(loss_fn, params, data, method, levels, options, init_loss,
                                   offsets_key)
    critical = np.asarray([
        np.nan if (level := compression.critical_level(levels, increases, eps)) is None
        else level for eps in tolerances], np.float64)
    lengths = np.asarray([
        np.nan if np.isnan(level) else compression.description_length(
            params, method, int(level), mask=mask, selector=selector,
            bits_per_float=bits_per_float)
        for level in critical], np.float64)
    compressed_in = time.perf_counter() - start
    llc_result, llc_arguments = None, dict(llc_options or {})
    if compute_llc:
        refined = mask if method == "quantize" else (
            None if selector is None else select(params, selector))
        llc_arguments.setdefault("init_loss", init_loss)
        if refined is not None:
            llc_arguments.setdefault("mask", refined)
        llc_result = _warnings_at_caller(estimate_llc, loss_fn, params, data, key=llc_key,
                                         stacklevel=3, **llc_arguments)
    hyperparameters = dict(
        method=method, levels=tuple(levels), tolerances=tuple(tolerances.tolist()),
        scheme="symmetric", granularity=granularity, dither=bool(dither),
        num_offsets=int(num_offsets) if dither else None, bits_per_float=int(bits_per_float),
        mask=mask, selector=selector, compute_llc=bool(compute_llc),
        llc_options={k: v for k, v in llc_arguments.items() if k not in ("init_loss", "mask")},
        compression_seconds=compressed_in, wall_time_seconds=time.perf_counter() - start,
    )
    return CompressibilityResult(
        method, np.asarray(levels), increases, errors, tolerances, critical, lengths,
        float(init_loss), llc_result, hyperparameters)
