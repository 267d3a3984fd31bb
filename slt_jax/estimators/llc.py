r"""The local learning coefficient (Lau et al. 2023, arXiv 2308.12108; MATH.md §2).

.. math::

    \hat\lambda(w^*) = n\beta\,\big(\mathbb E_{p}[L_n(w)] - L_n(w^*)\big)

with the expectation over the localized tempered posterior, estimated per chain by the mean
of the recorded (post burn-in) losses.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import numpy as np

from slt_jax import diagnostics


class LLCResult(NamedTuple):
    """An LLC estimate with its uncertainty.

    Attributes:
      mean: mean of the per-chain estimates over the chains that did not diverge.
      std: standard deviation of the per-chain estimates (ddof=1; 0 with one chain).
      per_chain: ``(num_chains,)`` per-chain estimates (``nan`` for diverged chains).
      mcse: Monte Carlo standard error of ``mean`` from the effective sample size of the pooled
        draws :math:`n\beta(L_t - L_n(w^*))`.
      rhat: split-R̂ across the non-diverged chains (``nan`` if undefined).
      ess: effective sample size of the pooled draws.
      init_loss: :math:`L_n(w^*)` used.
      nbeta: :math:`n\beta` used.
      diverged_chains: indices of the chains excluded because their loss became non-finite.
      draws: ``(num_chains, num_draws)`` array :math:`n\beta(L_t - L_n(w^*))`.
      hyperparameters: what produced the trace (filled by :func:`slt_jax.estimate_llc`).
    """

    mean: float
    std: float
    per_chain: np.ndarray
    mcse: float
    rhat: float
    ess: float
    init_loss: float
    nbeta: float
    diverged_chains: tuple
    draws: np.ndarray
    hyperparameters: dict

    def summary(self) -> str:
        text = f"LLC = {self.mean:.4g} ± {self.mcse:.2g} (MCSE), std over chains {self.std:.3g}"
        text += f", R̂ = {self.rhat:.3f}, ESS = {self.ess:.0f}"
        if self.diverged_chains:
            text += f"; diverged chains excluded: {list(self.diverged_chains)}"
        return text


RHAT_WARNING = 1.05


def llc(trace: Any, *, nbeta: float, init_loss: float, loss: str = "loss") -> LLCResult:
    r"""Estimate the LLC from a :class:`slt_jax.Trace` (or a ``(chains, draws)`` loss array).

    .. math::

        \hat\lambda_c = n\beta\,\Big(\tfrac{1}{T}\sum_{t} L^{(c)}_t - L_n(w^*)\Big),\qquad
        \hat\lambda = \operatorname{mean}_c \hat\lambda_c

    Args:
      trace: the output of :func:`slt_jax.sample`, or an array of losses
        ``(num_chains, num_draws)``.
      nbeta: the :math:`n\beta` the chains were run with.
      init_loss: :math:`L_n(w^*)` on the full data (see :func:`slt_jax.evaluate_loss`); never
        a single minibatch's loss.
      loss: ``"loss"`` for the recorded minibatch loss, or the name of a scalar observable
        (e.g. the loss on a fixed evaluation set).

    Chains with a non-finite loss are excluded and reported with a ``RuntimeWarning``; a
    negative estimate warns that :math:`w^*` is not a local minimum; a split-:math:`\hat R`
    above ``RHAT_WARNING`` (1.05) warns that the loss trace is still drifting (the two halves
    of the chains disagree), so the estimate depends on the run length.
    """
    nbeta = float(nbeta)
    if not np.isfinite(nbeta) or nbeta <= 0:
        raise ValueError(f"nbeta must be finite and > 0, got {nbeta!r}")
    init_loss = float(init_loss)
    if not np.isfinite(init_loss):
        raise ValueError(f"init_loss must be finite, got {init_loss!r}")

    first_nonfinite = None
    if hasattr(trace, "loss"):
        losses = trace.loss if loss == "loss" else trace.observables[loss]
        first_nonfinite = np.asarray(trace.first_nonfinite_step)
    else:
        losses = trace
    losses = np.asarray(losses, dtype=np.float64)
    if losses.ndim != 2:
        raise ValueError(
            f"losses must have shape (num_chains, num_draws), got {losses.shape}; "
            "an observable used as the loss must be a scalar per draw"
        )

    draws = nbeta * (losses - init_loss)
    diverged = ~np.all(np.isfinite(draws), axis=1)
    if first_nonfinite is not None:
        diverged |= first_nonfinite >= 0
    diagnostics.warn_divergence(diverged, first_nonfinite)
    per_chain = np.where(diverged, np.nan, draws.mean(axis=1))
    kept = draws[~diverged]

    if kept.shape[0] == 0:
        mean = std = mcse = rhat = ess = float("nan")
    else:
        per_chain_kept = per_chain[~diverged]
        mean = float(per_chain_kept.mean())
        std = float(per_chain_kept.std(ddof=1)) if per_chain_kept.size > 1 else 0.0
        ess = diagnostics.effective_sample_size(kept)
        mcse = diagnostics.monte_carlo_standard_error(kept)
        rhat = diagnostics.split_rhat(kept) if kept.shape[0] > 1 else float("nan")
        if np.isfinite(rhat) and rhat > RHAT_WARNING:
            warnings.warn(
                f"split R-hat {rhat:.3f} > {RHAT_WARNING}: the loss trace is not stationary "
                "(its halves disagree), so the LLC estimate still depends on the run length; "
                "run longer (more draws or burn-in) and check that the estimate settles",
                RuntimeWarning,
                stacklevel=2,
            )
        if mean < 0:
            warnings.warn(
                f"negative LLC estimate {mean:.4g}: the chains found lower loss than w*, so w* "
                "is not a local minimum (or the step size is too large)",
                RuntimeWarning,
                stacklevel=2,
            )
    return LLCResult(
        mean=mean,
        std=std,
        per_chain=per_chain,
        mcse=mcse,
        rhat=rhat,
        ess=ess,
        init_loss=init_loss,
        nbeta=nbeta,
        diverged_chains=tuple(np.flatnonzero(diverged).tolist()),
        draws=draws,
        hyperparameters={},
    )
