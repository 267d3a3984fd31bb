r"""The local learning coefficient (Lau et al. 2023, arXiv 2308.12108; docs/mathematics.md §2).

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
      mcse: Monte Carlo standard error of ``mean``: the larger of the one from the effective
        sample size of the pooled draws :math:`n\beta(L_t - L_n(w^*))` and the between-chain
        standard error ``std / sqrt(chains)`` (which also sees slow components that the
        autocorrelation misses).
      rhat: split-R̂ across the non-diverged chains (``nan`` if undefined).
      ess: effective sample size of the pooled draws.
      init_loss: :math:`L_n(w^*)`: the value the plain estimator subtracts; for the paired
        estimator (which subtracts each draw's minibatch loss at :math:`w^*` instead) the
        ``init_loss`` passed in when it agrees with those minibatch losses, else their mean.
      nbeta: :math:`n\beta` used.
      diverged_chains: indices of the chains excluded because their loss became non-finite.
      draws: ``(num_chains, num_draws)`` array of per-draw estimates
        :math:`n\beta(L_{B_t}(w_t) - L_{B_t}(w^*))` (paired) or :math:`n\beta(L_t - L_n(w^*))`.
      hyperparameters: what produced the trace (filled by :func:`slt_jax.estimate_llc`;
        ``"gradient_noise_bias"`` is the relative overestimate that minibatch gradient noise
        predicts where the chains ended, left in the estimate and shown by :meth:`summary`).
      runaway_chains: indices of the chains excluded because they ran away (grew by orders of
        magnitude) while staying finite.
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
    runaway_chains: tuple = ()

    def summary(self) -> str:
        text = f"LLC = {self.mean:.4g} ± {self.mcse:.2g} (MCSE), std over chains {self.std:.3g}"
        text += f", R̂ = {self.rhat:.3f}, ESS = {self.ess:.0f}"
        if self.diverged_chains:
            text += f"; diverged chains excluded: {list(self.diverged_chains)}"
        if self.runaway_chains:
            text += f"; runaway chains excluded: {list(self.runaway_chains)}"
        noise = (self.hyperparameters or {}).get("gradient_noise_bias")
        if noise is not None and noise > 0:
            size = f"+{noise:.1%}" if np.isfinite(noise) else "more than the estimate"
            text += (f"; minibatch gradient noise: predicted bias up to {size} (included, not "
                     "subtracted)")
        return text


RHAT_WARNING = 1.05
#: a chain whose last quarter of draws averages more than this many times the typical size of
#: all chains' first-quarter draws is a runaway (an unstable chain that stayed finite)
RUNAWAY_FACTOR = 100.0


def llc(
    trace: Any,
    *,
    nbeta: float | None = None,
    init_loss: float | None = None,
    loss: str = "loss",
    paired: bool | None = None,
) -> LLCResult:
    r"""Estimate the LLC from a :class:`slt_jax.Trace` (or a ``(chains, draws)`` loss array).

    .. math::

        \hat\lambda_c = \frac{n\beta}{T}\sum_{t} \big(L_{B_t}(w^{(c)}_t) - L_{B_t}(w^*)\big)
        \quad\text{(paired)},\qquad
        \hat\lambda_c = n\beta\,\Big(\tfrac{1}{T}\sum_{t} L^{(c)}_t - L_n(w^*)\Big)
        \quad\text{(plain)},\qquad
        \hat\lambda = \operatorname{mean}_c \hat\lambda_c

    (Lau et al. 2023, arXiv 2308.12108; docs/mathematics.md §2.) The **paired** estimator (the default for
    a trace that records ``center_loss``) subtracts the same minibatch's loss at :math:`w^*`
    from each draw. Its expectation is the plain one's — the minibatch :math:`B_t` is drawn
    uniformly, independently of :math:`w_t`, so :math:`\mathbb E[L_{B_t}(w^*)] = L_n(w^*)` —
    but the minibatch-to-minibatch noise, which in the plain estimator is i.i.d. across draws
    and can be many times the spread of :math:`L_n(w_t)`, cancels to first order. That is what
    makes its error bar honest: with the noise gone, the effective sample size measures how
    slowly the chains move instead of how many independent minibatches were drawn.

    Args:
      trace: the output of :func:`slt_jax.sample`, or an array of losses
        ``(num_chains, num_draws)`` (then ``init_loss`` is required).
      nbeta: the :math:`n\beta` the chains were run with; ``None`` reads it from
        ``trace.hyperparameters``. A value that differs from the recorded one raises.
      init_loss: :math:`L_n(w^*)` on the full data (see :func:`slt_jax.evaluate_loss`), never
        a single minibatch's loss; needed only by the plain estimator. The paired estimator
        does not use it: it is checked against the mean of ``trace.center_loss`` (i.i.d.
        minibatch losses at :math:`w^*`) and reported as ``result.init_loss`` when the two
        agree (within 5 standard errors and 0.1%); otherwise a ``RuntimeWarning`` says it was
        not used and the mean is reported.
      loss: ``"loss"`` for the recorded minibatch loss, or the name of a scalar observable
        (e.g. the loss on a fixed evaluation set; plain estimator).
      paired: ``None`` pairs when the trace has ``center_loss``; ``False`` forces the plain
        estimator; ``True`` requires pairing.

    Returns:
      an :class:`LLCResult`.

    Chains with a non-finite loss (``diverged_chains``) and chains that ran away while staying
    finite (``runaway_chains``: the mean of the last quarter of the draws exceeds
    ``RUNAWAY_FACTOR`` times the typical size of all chains' first-quarter draws) are
    excluded and reported with a ``RuntimeWarning``; a negative estimate warns that
    :math:`w^*` is not a local minimum; a split-:math:`\hat R` above ``RHAT_WARNING`` (1.05)
    warns that the trace is still drifting.

    Examples:
      A regular model with ``d = 2`` parameters (linear regression at its minimum) has
      :math:`\lambda = d/2 = 1`:

      >>> import jax, jax.numpy as jnp, slt_jax as slt
      >>> def loss_fn(params, batch):                  # per-example losses, shape (b,)
      ...     x, y = batch
      ...     return 0.5 * (x @ params["w"] - y) ** 2
      >>> data = (jax.random.normal(jax.random.key(0), (1000, 2)), jnp.zeros(1000))
      >>> params, nbeta = {"w": jnp.zeros(2)}, slt.default_nbeta(1000)
      >>> sampler = slt.samplers.sgld(step_size=1e-3, nbeta=nbeta, localization=0.0)
      >>> trace = slt.sample(loss_fn, params, data, sampler, key=jax.random.key(1),
      ...                    num_chains=4, num_draws=1000, num_burnin=200, batch_size=100)
      >>> trace.loss.shape
      (4, 1000)
      >>> result = slt.llc(trace, nbeta=nbeta, init_loss=0.0)
      >>> bool(0.8 < result.mean < 1.25), bool(result.mcse < 0.15)
      (True, True)
    """
    nbeta = _nbeta_of(trace, nbeta)
    draws, init_loss = _draws(trace, nbeta, init_loss, loss, paired)
    first_nonfinite = getattr(trace, "first_nonfinite_step", None)
    if first_nonfinite is not None:
        first_nonfinite = np.asarray(first_nonfinite)
    diverged = ~np.all(np.isfinite(draws), axis=1)
    if first_nonfinite is not None:
        diverged |= first_nonfinite >= 0
    diagnostics.warn_divergence(diverged, first_nonfinite)
    runaway = runaway_chains(draws) & ~diverged
    _warn_runaway(runaway, draws)
    excluded = diverged | runaway
    per_chain = np.where(excluded, np.nan, np.where(excluded[:, None], 0.0, draws).mean(axis=1))
    summary = _summarize(draws[~excluded], per_chain[~excluded])
    return LLCResult(
        **summary,
        per_chain=per_chain,
        init_loss=init_loss,
        nbeta=nbeta,
        diverged_chains=tuple(np.flatnonzero(diverged).tolist()),
        draws=draws,
        hyperparameters={},
        runaway_chains=tuple(np.flatnonzero(runaway).tolist()),
    )


def _nbeta_of(trace, nbeta) -> float:
    """nβ: the given value, checked against the one the trace recorded."""
    recorded = getattr(trace, "hyperparameters", {}).get("nbeta")
    if nbeta is None:
        if recorded is None:
            raise ValueError(
                "nbeta is required: this trace does not record the nβ it was sampled with"
            )
        nbeta = recorded
    nbeta = float(nbeta)
    if not np.isfinite(nbeta) or nbeta <= 0:
        raise ValueError(f"nbeta must be finite and > 0, got {nbeta!r}")
    if recorded is not None and not np.isclose(nbeta, recorded, rtol=1e-5):
        raise ValueError(
            f"nbeta={nbeta:g} differs from the nβ={recorded:g} the chains were sampled with "
            "(trace.hyperparameters['nbeta']); the LLC would be off by their ratio. Pass "
            "nbeta=None to use the recorded one"
        )
    return nbeta


def _draws(trace, nbeta, init_loss, loss, paired):
    """``(draws nβ(L_t − L*) (chains, draws) float64, the L_n(w*) reported)``."""
    center = getattr(trace, "center_loss", None) if loss == "loss" else None
    if paired and center is None:
        raise ValueError(
            "paired=True needs a trace with center_loss (slt_jax.sample records it with the "
            "'loss' stream); observables and loss arrays use the plain estimator"
        )
    if hasattr(trace, "loss"):
        losses = trace.loss if loss == "loss" else trace.observables[loss]
    else:
        losses = trace
    losses = np.asarray(losses, dtype=np.float64)
    if losses.ndim != 2:
        raise ValueError(
            f"losses must have shape (num_chains, num_draws), got {losses.shape}; "
            "an observable used as the loss must be a scalar per draw"
        )
    if losses.shape[0] < 1 or losses.shape[1] < 2:
        raise ValueError(
            f"losses have shape {losses.shape}; the LLC needs at least one chain and two draws "
            "per chain (num_chains, num_draws): one draw has no error bar"
        )
    if init_loss is not None:
        init_loss = float(init_loss)
        if not np.isfinite(init_loss):
            raise ValueError(f"init_loss must be finite, got {init_loss!r}")
    if center is not None and paired is not False:
        center = np.asarray(center, dtype=np.float64)
        return nbeta * (losses - center), _paired_init_loss(center, init_loss)
    if init_loss is None:
        raise ValueError(
            "init_loss (L_n(w*) on the full data, slt_jax.evaluate_loss) is required by the "
            "plain estimator"
        )
    return nbeta * (losses - init_loss), init_loss


def _paired_init_loss(center, init_loss) -> float:
    """The :math:`L_n(w^*)` a paired result reports: ``init_loss`` if it agrees with the
    recorded minibatch losses at w* (i.i.d. draws of a mean whose expectation is
    :math:`L_n(w^*)`), else their mean, with a warning that ``init_loss`` was not used."""
    finite = center[np.isfinite(center)]
    mean = float(np.mean(finite)) if finite.size else float("nan")
    if init_loss is None or not finite.size:
        return mean if init_loss is None else init_loss
    error = float(np.std(finite, ddof=1) / np.sqrt(finite.size)) if finite.size > 1 else 0.0
    if abs(init_loss - mean) <= 5 * error + 1e-3 * max(abs(mean), abs(init_loss)) + 1e-12:
        return init_loss
    warnings.warn(
        f"init_loss={init_loss:.6g} is not used by the paired estimator (it subtracts each "
        "draw's minibatch loss at w*, trace.center_loss), and it disagrees with the mean of "
        f"those losses, {mean:.6g} ± {error:.2g}: is it L_n(w*) on the full data? "
        "result.init_loss reports the mean. Pass paired=False to subtract init_loss instead "
        "(the plain estimator), or leave init_loss out",
        RuntimeWarning,
        stacklevel=4,
    )
    return mean


def runaway_chains(draws) -> np.ndarray:
    r"""``(num_chains,)`` bool: chains whose LLC draws ran away while staying finite.

    A chain runs away when its last quarter of draws averages more than ``RUNAWAY_FACTOR``
    times the typical size of the first-quarter draws (the lower quartile over chains of each
    chain's median :math:`|\text{draw}|`, floored at the same quartile of their spread). A stationary chain
    fluctuates around :math:`\lambda`; an SGLD chain just above its stability bound grows
    geometrically, e.g. :math:`1.006^t`, and would otherwise be averaged in.
    """
    draws = np.asarray(draws, dtype=np.float64)
    num_draws = draws.shape[1]
    if num_draws < 8:
        return np.zeros(draws.shape[0], bool)
    quarter = num_draws // 4
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices of diverged chains
        first = draws[:, :quarter]
        # the lower quartile over chains: robust while fewer than 3/4 of the chains run away
        typical = np.nanquantile(np.nanmedian(np.abs(first), axis=1), 0.25)
        spread = np.nanquantile(np.nanstd(first, axis=1), 0.25)
        scale = max(float(typical), float(spread), np.finfo(np.float32).tiny)
        last = np.nanmean(draws[:, -quarter:], axis=1)
    return np.isfinite(last) & (np.abs(last) > RUNAWAY_FACTOR * scale)


def _warn_runaway(runaway, draws) -> None:
    if not runaway.any():
        return
    chains = np.flatnonzero(runaway).tolist()
    quarter = draws.shape[1] // 4
    growth = ", ".join(
        f"{np.mean(draws[c, :quarter]):.3g} → {np.mean(draws[c, -quarter:]):.3g}" for c in chains
    )
    warnings.warn(
        f"{len(chains)} of {draws.shape[0]} chains ran away without becoming non-finite: "
        f"chain(s) {chains} (mean LLC draw, first → last quarter: {growth}); they are excluded "
        "from the estimate. The step size is above the chain's stability bound (4/λ_max for "
        "SGLD): lower it, or use slt_jax.estimate_llc, which calibrates it",
        RuntimeWarning,
        stacklevel=3,
    )


def _summarize(kept, per_chain_kept) -> dict:
    """mean, std, mcse, rhat, ess of the kept chains (with the R̂ and negative-LLC warnings)."""
    if kept.shape[0] == 0:
        nan = float("nan")
        return dict(mean=nan, std=nan, mcse=nan, rhat=nan, ess=nan)
    mean = float(per_chain_kept.mean())
    std = float(per_chain_kept.std(ddof=1)) if per_chain_kept.size > 1 else 0.0
    ess = diagnostics.effective_sample_size(kept)
    mcse = diagnostics.monte_carlo_standard_error(kept)
    if per_chain_kept.size > 1:
        # the between-chain standard error sees slow components (rare excursions along flat
        # directions) that the pooled autocorrelation misses: on x·w0·w1² the spread of 24
        # reruns was 1.42x the ESS-based MCSE and 1.07x this one (benchmarks/error_bars.py)
        mcse = max(mcse, std / np.sqrt(per_chain_kept.size))
    rhat = diagnostics.split_rhat(kept) if kept.shape[0] > 1 else float("nan")
    if np.isfinite(rhat) and rhat > RHAT_WARNING:
        warnings.warn(
            f"split R-hat {rhat:.3f} > {RHAT_WARNING}: the loss trace is not stationary "
            "(its halves disagree), so the LLC estimate still depends on the run length; "
            "run longer (more draws or burn-in) and check that the estimate settles",
            RuntimeWarning,
            stacklevel=4,
        )
    if mean < 0:
        warnings.warn(
            f"negative LLC estimate {mean:.4g}: the chains found lower loss than w*, so w* "
            "is not a local minimum (or the step size is too large)",
            RuntimeWarning,
            stacklevel=4,
        )
    return dict(mean=mean, std=std, mcse=mcse, rhat=rhat, ess=ess)
