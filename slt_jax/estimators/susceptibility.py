r"""Susceptibilities, response matrices and their PCA (docs/mathematics.md §5).

**Definition** (arXiv 2504.18274, "structural inference"). Shift the data distribution towards
a probe distribution, :math:`q_h = (1-h)\,q + h\,q'`, in the localized tempered posterior
:math:`p_h(w) \propto \exp(-n\beta L_{q_h}(w) - \tfrac\gamma2\lVert w - w^*\rVert^2)`. The
susceptibility of an observable :math:`\phi` is its linear response in units of :math:`n\beta`:

.. math::

    \chi = \frac{1}{n\beta}\,\frac{\partial\,\mathbb E_h[\phi]}{\partial h}\Big|_{h=0}
         = -\operatorname{Cov}_p\big(\phi,\ \Delta L\big), \qquad
    \Delta L(w) = L_{q'}(w) - L_q(w).

:math:`\chi > 0`: moving the data towards :math:`q'` raises :math:`\phi`. The :math:`1/n\beta`
is part of the definition, so no :math:`n\beta` (nor :math:`\beta`) enters the estimator: the
covariance of the draws *is* :math:`\chi`. Per token (:math:`q'` one token :math:`xy`),
:math:`\chi_{xy} = -\operatorname{Cov}_p(\phi, \ell_{xy} - L_q)`; covariance is bilinear, so the
mean of the per-token values over a set of tokens is the susceptibility of that set, exactly,
on the same draws. A *component observable* samples only the weights of a component :math:`C`
(weight restriction) and takes :math:`\phi_C(w) = L_q(w) - L_q(w^*)` on a fixed base set.

**Centring and scaling (ours).** :math:`\Delta L` is formed per draw, ``probe - base`` (the
base loss :math:`L_q` is one scalar per draw: the mean of the base set's losses), and the
covariance is taken within the one posterior that was sampled: draws of all chains pooled
around the global mean (``center="global"``, as :func:`slt_jax.bif`; ``"chain"``: each chain
around its own mean), ``ddof=1``. Adding a constant to :math:`\phi` or to :math:`\Delta L`
changes nothing.

**devinterp 2.x** (``compute_susceptibilities``) computes instead

.. math::

    \chi^{\mathrm{dvi}} = \mathbb E_C[\phi\,(L_q - \ell)] - \mathbb E_C[\phi]\;
        \mathbb E_{\mathrm{full}}[L_q - \ell]
      = -\mathbb E_C[\phi\,\Delta L] + \mathbb E_C[\phi]\,\bar\delta,
    \qquad \bar\delta = \mathbb E_{\mathrm{full}}[\ell - L_q],

with the second mean :math:`\bar\delta` from the *unrestricted* run, :math:`\phi = L_q -`
(the full run's initial loss), plain means (``ddof=0``) and no :math:`n\beta`. Pass
``delta_mean=`` :math:`\bar\delta` (the full run's mean of ``probe - base``, per token) to
:func:`susceptibility` to get that number from the same arrays. It differs from the
``ddof=0`` covariance by :math:`-\mathbb E_C[\phi]\,(\mathbb E_C[\Delta L] - \bar\delta)`,
which depends on the offset of :math:`\phi` and can flip the sign; with
:math:`\bar\delta = \mathbb E_C[\Delta L]` it is :math:`\tfrac{N-1}{N}` times ours.

**Error bars.** ``return_mcse=True`` gives the batch-means Monte Carlo standard error of every
entry, by the same machinery as ``slt.bif(return_mcse=True)``
(:func:`slt_jax.accumulators.covariance_mcse_of_draws` for arrays,
:func:`slt_jax.accumulators.batch_means` streamed); the streaming and array forms agree.

**Response matrices.** Rows are tokens (or probes), columns components;
:func:`response_pca` centres each column and takes an SVD.
"""

from __future__ import annotations

import warnings
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from slt_jax._checks import check_draws_for_covariance
from slt_jax.accumulators import (
    DEFAULT_BATCH_SIZE,
    Accumulator,
    _ddof_scale,
    batch_means,
    batch_means_mcse,
    covariance_mcse_of_draws,
    cross_covariance,
    cross_covariance_of_draws,
)

__all__ = [
    "ResponseMatrix",
    "ResponsePCA",
    "SusceptibilityAccumulatorState",
    "SusceptibilityResult",
    "response_matrix",
    "response_pca",
    "susceptibility",
    "susceptibility_accumulator",
]

_CENTERS = ("global", "chain")
#: the ``ddof`` of the covariance (unbiased for independent draws)
DDOF = 1
#: internal stream names of :func:`susceptibility_accumulator`'s inner accumulators
_OBSERVABLE, _SHIFT = "observable", "shift"


class SusceptibilityResult(NamedTuple):
    """Susceptibilities of several components to several probes, from one program's draws.

    Attributes:
      chi: ``{component: {probe: (q[, T]) array}}``: :math:`\\chi_{C,xy} =
        -\\operatorname{Cov}_{p_C}(\\phi_C, \\ell_{xy} - L_q)` per probe token.
      mcse: the Monte Carlo standard error of every entry, same structure and shapes.
      llc: ``{component: LLCResult}``, the weight-refined LLC of each component from the same
        draws.
      components: component labels, in order.
      probes: probe labels, in order.
      hyperparameters: what produced the run (sampler, nβ, γ, draws, centring, ...).
      trace: optionally, the run's trace (or traces), for diagnostics.
    """

    chi: dict
    mcse: dict
    llc: dict
    components: tuple
    probes: tuple
    hyperparameters: dict
    trace: Any = None


class ResponseMatrix(NamedTuple):
    """A response matrix: rows are probe tokens (or probes), columns components.

    Attributes:
      values: ``(rows, components)`` susceptibilities.
      row_labels: one tuple per row, ``(probe, *index)`` (``index`` the token's position in
        the probe's ``(q[, T])`` array; empty for one row per probe).
      column_labels: the component labels.
      mcse: ``(rows, components)`` Monte Carlo standard errors (``nan`` where unknown).
    """

    values: np.ndarray
    row_labels: tuple
    column_labels: tuple
    mcse: np.ndarray


class ResponsePCA(NamedTuple):
    """Principal components of a response matrix (:func:`response_pca`).

    Attributes:
      scores: ``(rows, k)`` coordinates of each row (token) on the principal components.
      loadings: ``(components, k)`` unit vectors: the weight of each component (column) in each
        principal component; the largest-|loading| entry of each is positive.
      explained_variance: ``(k,)`` variance of the scores, :math:`s_i^2/(\\text{rows} - 1)`.
      explained_variance_ratio: ``(k,)`` its share of the total variance of the (centred,
        standardized) matrix, decreasing.
      mean: ``(components,)`` the column means that were subtracted.
      row_labels, column_labels: those of the matrix.
      scale: ``(components,)`` the column divisors (standard deviations with
        ``standardize=True``, else ones).
    """

    scores: np.ndarray
    loadings: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    mean: np.ndarray
    row_labels: tuple
    column_labels: tuple
    scale: np.ndarray | None = None


class SusceptibilityAccumulatorState(NamedTuple):
    """State of :func:`susceptibility_accumulator`.

    Attributes:
      cross: the :func:`slt_jax.accumulators.cross_covariance` state of the per-draw scalar
        observable and the per-draw shifts :math:`\\ell - L_q` (``O(chains * q)``).
      batch_means: ``()``, or with ``return_mcse=True`` a 1-tuple holding the
        :func:`slt_jax.accumulators.batch_means` state of the same pair.
    """

    cross: Any
    batch_means: tuple = ()


# ----------------------------------------------------------------------------------------------
# validation


def _check_center(center: str) -> None:
    if center not in _CENTERS:
        raise ValueError(f"center must be one of {_CENTERS}, got {center!r}")


def _check_arrays(observable_shape, probe_shape, base_shape) -> None:
    """``(C, D)``, ``(C, D, q[, T])``, ``(C, D)`` with a common ``(C, D)``."""
    expected = ("expected observable (num_chains, num_draws), probe_losses (num_chains, "
                "num_draws, q) or (num_chains, num_draws, q, T) and base_loss (num_chains, "
                "num_draws)")
    shapes = (f"got observable {tuple(observable_shape)}, probe_losses {tuple(probe_shape)}, "
              f"base_loss {tuple(base_shape)}")
    if len(observable_shape) != 2 or len(base_shape) != 2 or len(probe_shape) not in (3, 4):
        raise ValueError(f"susceptibility: {expected}; {shapes}")
    if not (tuple(observable_shape) == tuple(base_shape) == tuple(probe_shape[:2])):
        raise ValueError(f"susceptibility: the three arrays must come from the same draws "
                         f"(same num_chains, num_draws); {expected}; {shapes}")
    check_draws_for_covariance("probe_losses", tuple(probe_shape))


def _shift_of(probe: jax.Array, base: jax.Array) -> jax.Array:
    r""":math:`\ell - L_q` per draw: ``probe`` ``(C, D, *event)`` minus ``base`` ``(C, D)``."""
    return probe - base.reshape(base.shape + (1,) * (probe.ndim - base.ndim))


def _shifted(draws: jax.Array) -> jax.Array:
    """``draws`` minus its first draw (covariances are shift invariant; a constant stream
    becomes exactly 0)."""
    return draws - draws[:1, :1]


def _warn_nonfinite(values, what: str = "susceptibility"):
    """Return ``values``; first warn when some entries are nan/inf."""
    if isinstance(values, jax.core.Tracer):
        return values
    bad = int(jnp.sum(~jnp.isfinite(values)))
    if bad:
        warnings.warn(
            f"the {what} has {bad} non-finite entries (nan/inf) of {int(np.size(values))}: "
            "the observable or the losses were nan or inf at some draws, or there were too "
            "few draws for a covariance", RuntimeWarning, stacklevel=3)
    return values


# ----------------------------------------------------------------------------------------------
# array form


def susceptibility(
    observable,
    probe_losses,
    base_loss,
    *,
    center: str = "global",
    delta_mean=None,
    return_mcse: bool = False,
    batch_size: int | None = None,
):
    r"""Susceptibility of an observable to probe tokens, from stored draws (arXiv 2504.18274).

    .. math::

        \chi = \frac{1}{n\beta}\frac{\partial\,\mathbb E_h[\phi]}{\partial h}\Big|_0
             = -\operatorname{Cov}_p\big(\phi,\ \ell_{\text{probe}} - L_{\text{base}}\big)

    per probe entry (example or token). Draws of all chains are pooled around the global mean
    (``center="global"``; ``"chain"``: within-chain), ``ddof=1``; no :math:`n\beta` factor
    (:math:`\chi` as defined is already per :math:`n\beta`). See the module docstring.

    With ``delta_mean=`` :math:`\bar\delta` it returns devinterp 2.x's number instead,

    .. math::

        \chi^{\mathrm{dvi}} = \mathbb E[\phi\,(L_{\text{base}} - \ell_{\text{probe}})]
            + \mathbb E[\phi]\;\bar\delta

    (plain means over all chains and draws, ``ddof=0``), where devinterp's
    :math:`-\mathbb E_{\mathrm{full}}[L - \ell]` is :math:`\bar\delta = \mathbb E_{\mathrm{full}}
    [\ell_{\text{probe}} - L_{\text{base}}]` measured on the unrestricted run; pass their
    :math:`\phi` (base loss minus the full run's initial loss) as ``observable``.

    Args:
      observable: ``(num_chains, num_draws)`` :math:`\phi` at each draw.
      probe_losses: ``(num_chains, num_draws, q)`` per-example or ``(num_chains, num_draws, q,
        T)`` per-token probe losses :math:`\ell` at the same draws.
      base_loss: ``(num_chains, num_draws)`` base loss :math:`L_q` (the mean over the base set)
        at the same draws.
      center: ``"global"`` or ``"chain"`` (not used with ``delta_mean``).
      delta_mean: ``None``, or devinterp's centring: a scalar or ``(q[, T])`` array, the mean of
        ``probe - base`` on the unrestricted run.
      return_mcse: also return the batch-means Monte Carlo standard error of every entry
        (as ``slt.bif(return_mcse=True)``; not with ``delta_mean``).
      batch_size: draws per batch and chain for the MCSE (default
        :data:`slt_jax.accumulators.DEFAULT_BATCH_SIZE`).

    Returns:
      ``(q[, T])`` values; with ``return_mcse=True`` a pair ``(values, mcse)``.

    Example:
      >>> import jax, slt_jax as slt
      >>> keys = jax.random.split(jax.random.key(0), 2)
      >>> base = jax.random.normal(keys[0], (2, 100))
      >>> probe = jax.random.normal(keys[1], (2, 100, 5))
      >>> slt.susceptibility(base, probe, base).shape
      (5,)
    """
    _check_center(center)
    _check_arrays(jnp.shape(observable), jnp.shape(probe_losses), jnp.shape(base_loss))
    observable, probe_losses, base_loss = (
        jnp.asarray(x) for x in (observable, probe_losses, base_loss))
    shift = _shift_of(probe_losses, base_loss)
    if delta_mean is not None:
        if return_mcse:
            raise ValueError("return_mcse=True is not available with delta_mean= (devinterp's "
                             "estimator has no error bar here); drop one of them")
        return _warn_nonfinite(_devinterp_susceptibility(observable, shift, delta_mean))
    values = _warn_nonfinite(_susceptibility(observable, shift, center=center))
    if not return_mcse:
        return values
    mcse = covariance_mcse_of_draws(_shifted(observable), _shifted(shift), center=center,
                                    ddof=DDOF, batch_size=batch_size)
    return values, mcse


@partial(jax.jit, static_argnames=("center",))
def _susceptibility(observable, shift, *, center: str) -> jax.Array:
    return -cross_covariance_of_draws(_shifted(observable), _shifted(shift), center=center,
                                      ddof=DDOF)


def _devinterp_susceptibility(observable, shift, delta_mean) -> jax.Array:
    r""":math:`-\mathbb E[\phi\,\Delta] + \mathbb E[\phi]\,\bar\delta`, computed as
    :math:`-\operatorname{Cov}_0(\phi, \Delta) + \mathbb E[\phi]\,(\bar\delta - \mathbb E
    [\Delta])` (the same number, without the cancellation of the raw second moment)."""
    event = shift.shape[2:]
    delta_mean = jnp.asarray(delta_mean, shift.dtype)
    if delta_mean.ndim and tuple(delta_mean.shape) != tuple(event):
        raise ValueError(f"delta_mean must be a scalar or have the probe's shape {tuple(event)} "
                         f"(q[, T]), got {tuple(delta_mean.shape)}")
    return _devinterp(observable, shift, jnp.broadcast_to(delta_mean, event))


@jax.jit
def _devinterp(observable, shift, delta_mean) -> jax.Array:
    covariance = cross_covariance_of_draws(_shifted(observable), _shifted(shift), ddof=0)
    mean_observable = jnp.mean(observable)
    mean_shift = jnp.mean(shift, axis=(0, 1))
    return -covariance + mean_observable * (delta_mean - mean_shift)


# ----------------------------------------------------------------------------------------------
# streaming form


def _scalar_per_draw(values: jax.Array) -> jax.Array:
    """``(C, L, *event)`` -> ``(C, L)``: the mean over the event axes (a base set's losses)."""
    return values.reshape(values.shape[0], values.shape[1], -1).mean(axis=2)


def _inner_shapes(shapes, observable: str, probe: str, base: str) -> dict:
    """The shapes of the inner streams: a scalar observable and the ``(q[, T])`` shifts."""
    for name, role in ((observable, "observable"), (probe, "probe"), (base, "base")):
        if name not in shapes:
            raise ValueError(f"susceptibility_accumulator: the {role} stream {name!r} is not "
                             f"among the streams {sorted(shapes)}")
    probe_shape = tuple(shapes[probe].shape)
    chains = {tuple(shapes[name].shape)[:1] for name in (observable, probe, base)}
    if len(probe_shape) not in (2, 3) or len(chains) != 1:
        raise ValueError(
            "susceptibility_accumulator: expected streams of shapes observable (num_chains, "
            "...), probe (num_chains, q) or (num_chains, q, T), base (num_chains, ...) with one "
            f"num_chains; got observable {tuple(shapes[observable].shape)}, probe "
            f"{probe_shape}, base {tuple(shapes[base].shape)}")
    dtype = jnp.promote_types(jnp.promote_types(shapes[observable].dtype, shapes[probe].dtype),
                              shapes[base].dtype)
    return {_OBSERVABLE: jax.ShapeDtypeStruct(probe_shape[:1], dtype),
            _SHIFT: jax.ShapeDtypeStruct(probe_shape, dtype)}


def susceptibility_accumulator(
    observable: str = "phi",
    probe: str = "probe",
    base: str = "base",
    *,
    center: str = "global",
    return_mcse: bool = False,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
) -> Accumulator:
    r"""Streaming :func:`susceptibility`, for ``slt.sample(accumulators=...)``.

    .. math::

        \chi = -\operatorname{Cov}_p\big(\bar\phi,\ \ell_{\text{probe}} - \bar L_{\text{base}}\big)

    (arXiv 2504.18274; ``ddof=1``, no :math:`n\beta`). Each draw, the ``observable`` and
    ``base`` streams are averaged over their event axes to one scalar each (e.g. a query set of
    base examples ``(n_base,)`` gives :math:`L_q`; they may name the same stream, as for
    :math:`\phi_C = L_q - L_q(w^*)`, the constant dropping out of the covariance), and the
    shift :math:`\ell - L_q` of every probe entry is folded into a
    :func:`slt_jax.accumulators.cross_covariance` state: ``O(chains * q)`` memory whatever the
    number of draws. ``finalize`` gives ``(q[, T])`` values equal to :func:`susceptibility` of
    the same draws; with ``return_mcse=True`` ``(values, mcse)``, the batch-means MCSE of
    :func:`slt_jax.accumulators.batch_means` (batches of ``batch_size`` draws continued across
    blocks, so it equals ``susceptibility(..., return_mcse=True, batch_size=batch_size)``,
    default 128 draws as the array form; ``None``: one batch per block and chain).

    Args:
      observable: stream of :math:`\phi` (``(chains, ...)``, averaged per draw).
      probe: stream of probe losses, ``(chains, q)`` or ``(chains, q, T)``.
      base: stream of base losses (``(chains, ...)``, averaged per draw).
      center: ``"global"`` or ``"chain"``.
      return_mcse: finalize to ``(values, mcse)``.
      batch_size: draws per batch and chain for the MCSE (default 128, as the array form).

    Example:
      >>> import slt_jax as slt
      >>> slt.susceptibility_accumulator("base", "probe", "base").streams
      ('base', 'probe')
    """
    _check_center(center)
    cross = cross_covariance(_OBSERVABLE, _SHIFT, center=center, ddof=DDOF)
    errors = (batch_means(_OBSERVABLE, _SHIFT, batch_size=batch_size),) if return_mcse else ()

    def inner_block(block):
        shift = _shift_of(jnp.asarray(block[probe]), _scalar_per_draw(jnp.asarray(block[base])))
        return {_OBSERVABLE: _scalar_per_draw(jnp.asarray(block[observable])), _SHIFT: shift}

    def init(shapes):
        inner = _inner_shapes(shapes, observable, probe, base)
        return SusceptibilityAccumulatorState(cross.init(inner),
                                              tuple(e.init(inner) for e in errors))

    def update(state, block, weights):
        inner = inner_block(block)
        return SusceptibilityAccumulatorState(
            cross.update(state.cross, inner, weights),
            tuple(e.update(s, inner, weights) for e, s in zip(errors, state.batch_means)))

    def finalize(state):
        result = _finalize_susceptibility(state, center=center, return_mcse=bool(return_mcse))
        if isinstance(result, tuple):
            return _warn_nonfinite(result[0]), result[1]
        return _warn_nonfinite(result)

    return Accumulator(tuple(dict.fromkeys((observable, probe, base))), init, update, finalize)


@partial(jax.jit, static_argnames=("center", "return_mcse"))
def _finalize_susceptibility(state: SusceptibilityAccumulatorState, *, center: str,
                             return_mcse: bool):
    """One compiled program per shape (finalization runs on the host after sampling)."""
    covariance = cross_covariance(_OBSERVABLE, _SHIFT, center=center, ddof=DDOF).finalize(
        state.cross).covariance
    values = -covariance
    if not return_mcse:
        return values
    errors = state.batch_means[0]
    mean_product = cross_covariance(_OBSERVABLE, _SHIFT, center="global", ddof=0).finalize(
        state.cross).covariance.reshape(1, -1)
    count = state.cross.count
    scale = _ddof_scale(jnp.sum(count), jnp.sum(count > 0), center, DDOF)
    mcse = batch_means_mcse(errors, mean_product, scale=scale)
    return values, mcse.reshape(values.shape)


# ----------------------------------------------------------------------------------------------
# response matrices


def _is_result(value) -> bool:
    return all(hasattr(value, name) for name in ("chi", "mcse", "components", "probes"))


def _probe_rows(result, probe, per_token: bool):
    """``(values (rows, components), mcse (rows, components), labels)`` of one probe."""
    values, errors, shape = [], [], None
    for component in result.components:
        chi = np.asarray(result.chi[component][probe], np.float64)
        mcse = np.asarray(result.mcse[component][probe], np.float64)
        if shape is None:
            shape = chi.shape
        if chi.shape != shape or mcse.shape != shape:
            raise ValueError(
                f"response_matrix: probe {probe!r} has shape {shape} for component "
                f"{result.components[0]!r} but chi {chi.shape} / mcse {mcse.shape} for "
                f"{component!r}; expected the same (q[, T]) shape for every component")
        if per_token:
            values.append(chi.reshape(-1))
            errors.append(mcse.reshape(-1))
        else:  # by bilinearity the probe set's χ; its MCSE at most the mean of the MCSEs
            values.append(np.mean(chi).reshape(1))
            errors.append(np.mean(mcse).reshape(1))
    labels = (tuple((probe, *index) for index in np.ndindex(*shape)) if per_token
              else ((probe,),))
    return np.stack(values, axis=1), np.stack(errors, axis=1), labels


def response_matrix(result, *, per_token: bool = True) -> ResponseMatrix:
    r"""The response matrix of a :class:`SusceptibilityResult`: probe tokens x components.

    .. math::

        X_{xy,\,C} = \chi_{C,xy} = -\operatorname{Cov}_{p_C}(\phi_C,\ \ell_{xy} - L_q)

    (arXiv 2504.18274). With ``per_token=True`` every entry of every probe is a row (a
    ``(q, T)`` probe gives ``q * T`` rows, labelled ``(probe, i, t)``, in the probes' order,
    row-major); with ``per_token=False`` each probe is one row, its mean :math:`\chi` (by
    bilinearity the susceptibility of the probe set's mean loss), whose MCSE is given as the
    mean of its entries' MCSEs (an upper bound). A plain ``(rows, components)`` array is
    accepted too (labels ``(i,)`` and ``0..k-1``, MCSE ``nan``).

    Args:
      result: a :class:`SusceptibilityResult` (or anything with ``chi``, ``mcse``,
        ``components``, ``probes``), or a 2-D array.
      per_token: one row per token (default) or per probe.

    Returns:
      A :class:`ResponseMatrix`.

    Example:
      >>> import numpy as np, slt_jax as slt
      >>> chi = {"head0": {"copy": np.ones((2, 3))}, "head1": {"copy": np.zeros((2, 3))}}
      >>> res = slt.SusceptibilityResult(chi, chi, {}, ("head0", "head1"), ("copy",), {})
      >>> X = slt.response_matrix(res)
      >>> X.values.shape, X.row_labels[1]
      ((6, 2), ('copy', 0, 1))
    """
    if isinstance(result, ResponseMatrix):
        return result
    if not _is_result(result):
        values = np.asarray(result, np.float64)
        if values.ndim != 2:
            raise ValueError("response_matrix expects a SusceptibilityResult or a (rows, "
                             f"components) array, got an array of shape {values.shape}")
        return ResponseMatrix(values, tuple((i,) for i in range(values.shape[0])),
                              tuple(range(values.shape[1])), np.full_like(values, np.nan))
    if not result.components or not result.probes:
        raise ValueError("response_matrix: the result has no components or no probes")
    blocks = [_probe_rows(result, probe, bool(per_token)) for probe in result.probes]
    return ResponseMatrix(np.concatenate([b[0] for b in blocks]),
                          tuple(label for b in blocks for label in b[2]),
                          tuple(result.components), np.concatenate([b[1] for b in blocks]))


def _principal_axes(centred: np.ndarray, num_components: int):
    """``(loadings (cols, k), singular values (all))`` with the sign convention applied."""
    _, singular, right = np.linalg.svd(centred, full_matrices=False)
    loadings = right[:num_components].T
    largest = np.argmax(np.abs(loadings), axis=0)
    signs = np.sign(loadings[largest, np.arange(num_components)])
    return loadings * np.where(signs == 0, 1.0, signs)[None, :], singular


def response_pca(matrix, num_components: int = 3, standardize: bool = False) -> ResponsePCA:
    r"""Principal components of a response matrix (rows tokens, columns components).

    Each column is centred on its mean (and with ``standardize=True`` divided by its standard
    deviation, ``ddof=1``; a constant column is left undivided); with the SVD
    :math:`X_c = U S V^\top`,

    .. math::

        \text{loadings} = V_{:, :k}, \quad \text{scores} = X_c V_{:, :k} = U_{:, :k} S_{:k},
        \quad \text{explained variance} = \frac{s_i^2}{\text{rows} - 1}, \quad
        \text{ratio} = \frac{s_i^2}{\sum_j s_j^2}.

    Sign convention (docs/mathematics.md §5): the entry of largest absolute loading of each
    principal component is positive (scores flip with it). As in arXiv 2504.18274, the top
    components of the per-token response matrix separate kinds of components (e.g. induction
    heads from the others).

    Args:
      matrix: a :class:`ResponseMatrix`, a :class:`SusceptibilityResult` (per-token rows) or a
        ``(rows, components)`` array.
      num_components: ``k``, at most ``min(rows, components)``.
      standardize: divide each centred column by its standard deviation.

    Returns:
      A :class:`ResponsePCA`.

    Example:
      >>> import numpy as np, slt_jax as slt
      >>> X = np.outer(np.arange(5.0), [1.0, -2.0, 0.5])
      >>> pca = slt.response_pca(X, num_components=1)
      >>> np.round(pca.loadings[:, 0], 3).tolist(), np.round(pca.explained_variance_ratio, 6)
      ([-0.436, 0.873, -0.218], array([1.]))
    """
    matrix = response_matrix(matrix)
    values = np.asarray(matrix.values, np.float64)
    rows, columns = values.shape
    if isinstance(num_components, bool) or int(num_components) != num_components or not (
            1 <= int(num_components) <= min(rows, columns)):
        raise ValueError(f"num_components must be an integer in [1, min(rows, components)] = "
                         f"[1, {min(rows, columns)}] for a {values.shape} matrix, got "
                         f"{num_components!r}")
    if rows < 2 or not np.all(np.isfinite(values)):
        raise ValueError(f"response_pca needs at least 2 rows of finite values, got a "
                         f"{values.shape} matrix with {int(np.sum(~np.isfinite(values)))} "
                         "non-finite entries")
    k = int(num_components)
    mean = values.mean(axis=0)
    centred = values - mean[None, :]
    scale = np.ones(columns)
    if standardize:
        spread = centred.std(axis=0, ddof=1)
        scale = np.where(spread > 0, spread, 1.0)
        centred = centred / scale[None, :]
    loadings, singular = _principal_axes(centred, k)
    squares = singular**2
    total = float(np.sum(squares))
    ratio = squares[:k] / total if total > 0 else np.zeros(k)
    return ResponsePCA(centred @ loadings, loadings, squares[:k] / (rows - 1), ratio, mean,
                       tuple(matrix.row_labels), tuple(matrix.column_labels), scale)

