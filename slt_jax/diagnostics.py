r"""Chain diagnostics: effective sample size, split-R̂, Monte Carlo standard error, divergence.

ESS and split-R̂ come from :mod:`numpyro.diagnostics` (Gelman et al., BDA3 §11.4-11.5).
The MCSE of a chain-pooled mean is :math:`\mathrm{sd}/\sqrt{\mathrm{ESS}}`.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np

__all__ = [
    "DRIFT_WARNING_FRACTION",
    "SharedDriftReport",
    "divergence_report",
    "effective_sample_size",
    "monte_carlo_standard_error",
    "sgld_stability_bound",
    "shared_drift",
    "split_rhat",
    "warn_divergence",
]


def _numpyro_diagnostics():
    # imported on first use: numpyro costs ~0.3 s of import time
    from numpyro import diagnostics

    return diagnostics


def effective_sample_size(draws) -> float:
    """ESS of ``draws`` with shape ``(num_chains, num_draws)`` (numpyro's estimator).

    Args:
      draws: ``(num_chains, num_draws)`` array of one scalar quantity.

    Returns:
      the effective sample size as a float: ``nan`` with fewer than 4 draws or a non-finite
      draw, ``num_chains * num_draws`` when every draw is equal.

    Examples:
      >>> import numpy as np
      >>> from slt_jax import diagnostics
      >>> draws = np.random.default_rng(0).normal(size=(4, 1000))  # independent draws
      >>> 3000 < diagnostics.effective_sample_size(draws) < 5000
      True
    """
    draws = np.asarray(draws, dtype=np.float64)
    if draws.ndim != 2:
        raise ValueError(f"draws must have shape (num_chains, num_draws), got {draws.shape}")
    if draws.shape[1] < 4 or not np.all(np.isfinite(draws)):
        return float("nan")
    if np.all(draws == draws.flat[0]):
        return float(draws.size)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(_numpyro_diagnostics().effective_sample_size(draws))


def split_rhat(draws) -> float:
    """Split-R̂ of ``draws`` with shape ``(num_chains, num_draws)`` (nan if undefined).

    Each chain is split in halves; R̂ compares the between-half and within-half variances
    (Gelman et al., BDA3 §11.4). Values above about 1.05 mean the chains have not mixed or
    the trace still drifts.

    Args:
      draws: ``(num_chains, num_draws)`` array of one scalar quantity.

    Returns:
      split-R̂ as a float (``nan`` with fewer than 4 draws, non-finite or constant draws).

    Examples:
      >>> import numpy as np
      >>> from slt_jax import diagnostics
      >>> rng = np.random.default_rng(0)
      >>> round(diagnostics.split_rhat(rng.normal(size=(4, 1000))), 2)
      1.0
      >>> drifting = rng.normal(size=(4, 1000)) + np.linspace(0, 5, 1000)
      >>> diagnostics.split_rhat(drifting) > 1.05
      True
    """
    draws = np.asarray(draws, dtype=np.float64)
    if draws.ndim != 2 or draws.shape[1] < 4 or not np.all(np.isfinite(draws)):
        return float("nan")
    if np.all(draws == draws.flat[0]):
        return float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(_numpyro_diagnostics().split_gelman_rubin(draws))


def monte_carlo_standard_error(draws) -> float:
    r"""MCSE of the pooled mean: :math:`\mathrm{sd}(draws)/\sqrt{\mathrm{ESS}}`.

    Args:
      draws: ``(num_chains, num_draws)`` array of one scalar quantity.

    Returns:
      the Monte Carlo standard error of ``draws.mean()`` (``nan`` where the ESS is undefined).

    Examples:
      >>> import numpy as np
      >>> from slt_jax import diagnostics
      >>> draws = np.random.default_rng(0).normal(size=(4, 2500))   # sd 1, ESS ~ 10,000
      >>> round(diagnostics.monte_carlo_standard_error(draws), 2)
      0.01
    """
    draws = np.asarray(draws, dtype=np.float64)
    ess = effective_sample_size(draws)
    if not np.isfinite(ess) or ess <= 0:
        return float("nan")
    return float(np.std(draws, ddof=1) / np.sqrt(ess))


def sgld_stability_bound(max_curvature) -> float:
    r"""Largest stable SGLD step size on a quadratic: :math:`\epsilon < 4/\lambda_{max}(A)`.

    ``max_curvature`` is the top eigenvalue of :math:`A = n\beta H + \gamma I` (docs/mathematics.md §1).

    Args:
      max_curvature: :math:`\lambda_{max}(A)`.

    Returns:
      :math:`4/\lambda_{max}(A)` (``inf`` when it is not positive).

    Examples:
      >>> from slt_jax import diagnostics
      >>> diagnostics.sgld_stability_bound(200.0)
      0.02
    """
    max_curvature = float(max_curvature)
    if max_curvature <= 0:
        return float("inf")
    return 4.0 / max_curvature


def divergence_report(diverged, first_nonfinite_step=None) -> str:
    """A human-readable sentence about diverged chains ('' if none).

    Args:
      diverged: ``(num_chains,)`` booleans, e.g. ``trace.diverged``.
      first_nonfinite_step: optional ``(num_chains,)`` steps of the first non-finite loss.

    Returns:
      the sentence, or ``""`` when no chain diverged.

    Examples:
      >>> from slt_jax import diagnostics
      >>> diagnostics.divergence_report([False, True], [-1, 17])[:63]
      '1 of 2 chains diverged: chain(s) [1] (first non-finite loss at '
    """
    diverged = np.asarray(diverged, dtype=bool)
    if not diverged.any():
        return ""
    indices = np.flatnonzero(diverged).tolist()
    where = ""
    if first_nonfinite_step is not None:
        steps = np.asarray(first_nonfinite_step)[diverged].tolist()
        where = " (first non-finite loss at step " + ", ".join(map(str, steps)) + ")"
    return (
        f"{len(indices)} of {diverged.size} chains diverged: chain(s) {indices}{where}; they are "
        "excluded from the estimate. Lower the step size (or use slt_jax.estimate_llc, which "
        "calibrates it)."
    )


def warn_divergence(diverged, first_nonfinite_step=None) -> None:
    """Issue :func:`divergence_report`'s sentence as a ``RuntimeWarning`` if a chain diverged.

    Args:
      diverged: ``(num_chains,)`` booleans, e.g. ``trace.diverged``.
      first_nonfinite_step: optional ``(num_chains,)`` steps of the first non-finite loss.

    Returns:
      ``None``; the warning points at the caller's caller.
    """
    message = divergence_report(diverged, first_nonfinite_step)
    if message:
        warnings.warn(message, RuntimeWarning, stacklevel=3)


# ----------------------------------------------------------------------------------------------
# drift that all chains share (loss kernel, BIF)


class SharedDriftReport(NamedTuple):
    r"""What :func:`shared_drift` found, per element of the stream (flattened).

    Attributes:
      change: the fitted change of each element's chain-pooled mean between the centres of the
        first and second half of the run, in posterior SDs (:math:`\sqrt3\,d`, with
        :math:`d` the trend's SD over the run in posterior SDs): comparable with a split-half
        change of the means.
      z: the fitted slope over its batch-means standard error (``nan`` with too few batches).
      effective_sample_size: of each element's mean, from batch means.
      dominated_fraction: the fraction of kernel/BIF entries ``(x, y)`` whose drift
        contribution :math:`d_x d_y \sigma_x \sigma_y` exceeds their Monte Carlo error
        (:math:`\approx \sigma_x\sigma_y (\mathrm{ESS}_x \mathrm{ESS}_y)^{-1/4}`) while both
        slopes are significant (:math:`|z| > 2`).
      message: the warning's text ("" when ``dominated_fraction`` is at most the threshold).
    """

    change: np.ndarray
    z: np.ndarray
    effective_sample_size: np.ndarray
    dominated_fraction: float
    message: str


#: fraction of entries dominated by drift above which :func:`shared_drift` warns
DRIFT_WARNING_FRACTION = 0.01


def _trend_statistics(state):
    """``(d, z, ess)`` per element from a :class:`slt_jax.accumulators.LinearTrendState`."""
    import slt_jax.accumulators as accumulators  # jax-based: imported on first use

    state = accumulators.close_linear_trend(state)  # a raw streaming state's open batches
    time = np.asarray(state.time, np.float64)
    first = np.asarray(state.first, np.float64)
    second = np.asarray(state.second, np.float64)
    batches = float(state.num_batches)
    total, time_sum, time_square = time[0], time[1], time[2]
    squared = time[3:]  # Σm²τ^k, k = 0..4
    nan = np.full(first.shape[1], np.nan)
    if total <= 0 or batches < 3:
        return nan, nan, nan
    time_mean = time_sum / total
    time_spread = time_square - total * time_mean**2  # Σ m (τ - τ̄)²
    mean = first[0] / total
    variance = np.maximum(first[2] / total - mean**2, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = (first[1] - time_mean * first[0]) / time_spread
        # Σ m² (τ - τ̄)^j u^l from the sums of powers of τ (binomial expansion)
        def centred(j, l):
            sums = second[:4] if l == 1 else (second[4:] if l == 2 else squared[:, None])
            return sum(math.comb(j, i) * (-time_mean) ** (j - i) * sums[i] for i in range(j + 1))

        # cluster-robust Σ m² δ² e², e = u - ū - βδ, δ = τ - τ̄
        residual = (centred(2, 2) - 2 * (mean * centred(2, 1) + slope * centred(3, 1))
                    + mean**2 * centred(2, 0) + 2 * mean * slope * centred(3, 0)
                    + slope**2 * centred(4, 0))
        slope_error = np.sqrt(batches / (batches - 2) * np.maximum(residual, 0)) / time_spread
        mean_spread = centred(0, 2) - 2 * mean * centred(0, 1) + mean**2 * centred(0, 0)
        mean_error_squared = batches / (batches - 1) * np.maximum(mean_spread, 0) / total**2
        ess = np.where(mean_error_squared > 0, variance / mean_error_squared, np.inf)
        drift = np.where(variance > 0, slope * np.sqrt(time_spread / total / variance), 0.0)
        z = np.where(slope_error > 0, slope / slope_error, 0.0)
    return drift, z, ess


def shared_drift(losses, other=None, *, batch_size=None, warn: bool = True,
                 threshold: float = DRIFT_WARNING_FRACTION) -> SharedDriftReport:
    r"""Drift of the per-example mean losses that all chains share, and whether it dominates
    the loss kernel / BIF entries.

    All chains start at :math:`w^*`; if the posterior has slow directions, their per-probe
    means move together during the run, and the pooled covariance counts that movement as
    covariance: a trend :math:`m_x(t)` adds :math:`\operatorname{Cov}_t(m_x, m_y)` to
    :math:`K(x, y)`, a bias that reruns from :math:`w^*` repeat. Per element :math:`x` of the
    losses (chains pooled, batches of ``batch_size`` draws per chain, times counted from each
    chain's first draw) this fits :math:`u_b \approx \bar u + \beta_x(\tau_b - \bar\tau)` by
    weighted least squares and reports

    .. math::

        d_x = \beta_x\,\mathrm{sd}(\tau)/\sigma_x, \qquad z_x = \beta_x/\mathrm{se}(\beta_x),
        \qquad \text{change}_x = \sqrt3\,d_x

    (:math:`\sigma_x` the posterior SD, :math:`\mathrm{se}` the batch-means, cluster-robust
    standard error, change = the trend's change between the centres of the two halves). The
    trend adds :math:`d_x d_y \sigma_x\sigma_y` to :math:`K(x, y)`, against a Monte Carlo error
    of about :math:`\sigma_x\sigma_y(\mathrm{ESS}_x\mathrm{ESS}_y)^{-1/4}`: an entry is
    *dominated* when :math:`|d_x d_y|(\mathrm{ESS}_x\mathrm{ESS}_y)^{1/4} > 1` and both slopes
    are significant (:math:`|z| > 2`). When more than ``threshold`` of the entries are, it warns
    (``RuntimeWarning``). Without drift :math:`d \approx z/\sqrt{\mathrm{ESS}}`, so this needs
    :math:`|z_x z_y| \gtrsim \sqrt{\mathrm{ESS}}`: noise alone almost never triggers it.

    Args:
      losses: ``(num_chains, num_draws, q[, T])`` per-example losses, or the
        :class:`slt_jax.accumulators.LinearTrendState` of
        ``slt_jax.accumulators.linear_trend(stream)`` (the streaming form inside
        :func:`slt_jax.sample`, e.g. next to a :func:`slt_jax.bif_accumulator`).
      other: for a BIF, the second stream (the query losses, or their trend state); entries
        are then the ``(q, q')`` pairs. Default: the kernel of ``losses`` with itself.
      batch_size: draws per batch and chain for arrays (default
        :data:`slt_jax.accumulators.DEFAULT_BATCH_SIZE`).
      warn: issue the ``RuntimeWarning`` (else only return the report).
      threshold: the fraction of dominated entries above which to warn.

    Returns:
      :class:`SharedDriftReport` of ``losses`` (elements flattened).

    Examples:
      >>> import numpy as np
      >>> from slt_jax import diagnostics
      >>> rng = np.random.default_rng(0)
      >>> still = rng.normal(size=(4, 1024, 6))                   # stationary, independent
      >>> diagnostics.shared_drift(still).dominated_fraction
      0.0
      >>> moving = still + np.linspace(0, 1.5, 1024)[None, :, None]   # all chains drift
      >>> report = diagnostics.shared_drift(moving, warn=False)
      >>> report.dominated_fraction, bool(np.all(report.change > 0.5))
      (1.0, True)
    """
    first = _trend_state(losses, batch_size)
    second = first if other is None else _trend_state(other, batch_size)
    drift_a, z_a, ess_a = _trend_statistics(first)
    drift_b, z_b, ess_b = (drift_a, z_a, ess_a) if other is None else _trend_statistics(second)

    def level(drift, z, ess):
        with np.errstate(invalid="ignore"):
            return np.where(np.abs(z) > 2, np.abs(drift) * np.power(ess, 0.25), 0.0)

    level_a, level_b = level(drift_a, z_a, ess_a), level(drift_b, z_b, ess_b)
    level_a, level_b = np.nan_to_num(level_a), np.nan_to_num(level_b)
    dominated = float(np.mean(level_a[:, None] * level_b[None, :] > 1))
    message = ""
    if dominated > threshold:
        change = np.sqrt(3) * np.concatenate([drift_a, drift_b])
        largest = float(np.nanmax(np.abs(change)))
        message = (
            f"shared drift: the per-example mean losses moved during the run (up to "
            f"{largest:.2f} posterior SDs between the two halves, the same in all chains); "
            f"in {dominated:.0%} of the kernel/BIF entries this drift contributes more "
            "covariance than their Monte Carlo error, so those entries (and their error bars) "
            "are not trustworthy. The chains have not reached the posterior's slow directions: "
            "increase num_burnin (and num_draws), or the localization, and check that the "
            "warning goes away; comparing center='chain' with center='global' does not remove it."
        )
        if warn:
            warnings.warn(message, RuntimeWarning, stacklevel=2)
    return SharedDriftReport(np.sqrt(3) * drift_a, z_a, ess_a, dominated, message)


def _trend_state(losses, batch_size):
    import slt_jax.accumulators as accumulators  # jax-based: imported on first use

    if isinstance(losses, accumulators.LinearTrendState):
        return losses
    losses = np.asarray(losses)
    if losses.ndim < 3:
        raise ValueError("losses must have shape (num_chains, num_draws, q) or (num_chains, "
                         f"num_draws, q, T), got {losses.shape}")
    return accumulators.linear_trend_of_draws(losses, batch_size=batch_size)
