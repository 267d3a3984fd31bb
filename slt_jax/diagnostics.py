r"""Chain diagnostics: effective sample size, split-R̂, Monte Carlo standard error, divergence.

ESS and split-R̂ come from :mod:`numpyro.diagnostics` (Gelman et al., BDA3 §11.4-11.5).
The MCSE of a chain-pooled mean is :math:`\mathrm{sd}/\sqrt{\mathrm{ESS}}`.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = [
    "divergence_report",
    "effective_sample_size",
    "monte_carlo_standard_error",
    "sgld_stability_bound",
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

    ``max_curvature`` is the top eigenvalue of :math:`A = n\beta H + \gamma I` (MATH.md §1).

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
