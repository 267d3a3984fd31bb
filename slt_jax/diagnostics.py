r"""Chain diagnostics: effective sample size, split-R̂, Monte Carlo standard error, divergence.

ESS and split-R̂ come from :mod:`numpyro.diagnostics` (Gelman et al., BDA3 §11.4-11.5).
The MCSE of a chain-pooled mean is :math:`\mathrm{sd}/\sqrt{\mathrm{ESS}}`.
"""

from __future__ import annotations

import warnings

import numpy as np


def _numpyro_diagnostics():
    # imported on first use: numpyro costs ~0.3 s of import time
    from numpyro import diagnostics

    return diagnostics


def effective_sample_size(draws) -> float:
    """ESS of ``draws`` with shape ``(num_chains, num_draws)`` (numpyro's estimator)."""
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
    """Split-R̂ of ``draws`` with shape ``(num_chains, num_draws)`` (nan if undefined)."""
    draws = np.asarray(draws, dtype=np.float64)
    if draws.ndim != 2 or draws.shape[1] < 4 or not np.all(np.isfinite(draws)):
        return float("nan")
    if np.all(draws == draws.flat[0]):
        return float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(_numpyro_diagnostics().split_gelman_rubin(draws))


def monte_carlo_standard_error(draws) -> float:
    r"""MCSE of the pooled mean: :math:`\mathrm{sd}(draws)/\sqrt{\mathrm{ESS}}`."""
    draws = np.asarray(draws, dtype=np.float64)
    ess = effective_sample_size(draws)
    if not np.isfinite(ess) or ess <= 0:
        return float("nan")
    return float(np.std(draws, ddof=1) / np.sqrt(ess))


def sgld_stability_bound(max_curvature) -> float:
    r"""Largest stable SGLD step size on a quadratic: :math:`\epsilon < 4/\lambda_{max}(A)`.

    ``max_curvature`` is the top eigenvalue of :math:`A = n\beta H + \gamma I` (MATH.md §1).
    """
    max_curvature = float(max_curvature)
    if max_curvature <= 0:
        return float("inf")
    return 4.0 / max_curvature


def divergence_report(diverged, first_nonfinite_step=None) -> str:
    """A human-readable sentence about diverged chains ('' if none)."""
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
    message = divergence_report(diverged, first_nonfinite_step)
    if message:
        warnings.warn(message, RuntimeWarning, stacklevel=3)
