"""``estimate_llc``: one call, calibrated defaults, an LLC with its error bars."""

from __future__ import annotations

import time
import warnings
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from slt_jax.adapters import as_params
from slt_jax._checks import (
    check_key,
    check_mask_samples_something,
    check_mesh,
    check_positive_number,
    check_run_lengths,
)
from slt_jax.calibration import DEFAULT_SAFETY_FACTOR, _split, calibrate_step_size
from slt_jax.diagnostics import monte_carlo_standard_error, split_rhat
from slt_jax.estimators.llc import RHAT_WARNING, LLCResult, llc, runaway_chains
from slt_jax.masks import trainable
from slt_jax.samplers import SAMPLER_FAMILIES, Sampler, default_nbeta, sgld
from slt_jax.sampling import checked_loss_at_center, num_examples, sample

PyTree = Any


DEFAULT_BATCH_SIZE = 500
DEFAULT_SAMPLER = "sghmc"


def batch_chunk_for(batch_size: int | None) -> int | None:
    """The chunk in which ``estimate_llc``'s runs gather a minibatch (``sample(batch_chunk=)``):
    the batch size is then data of the program, so the calibration's pilots, the main run, a
    run at a batch raised against gradient noise (a whole number of chunks) or at the full batch,
    and a second call with another multiple of the chunk all run one compiled program.

    Batches up to :data:`DEFAULT_BATCH_SIZE` are one chunk; multiples of it are chunks of
    :data:`DEFAULT_BATCH_SIZE` (so batch 1000 shares batch 500's program); any other batch is
    one chunk of its own (no padding: a step never costs more than its batch). ``None`` (the
    full batch from the start) is not chunked."""
    if batch_size is None:
        return None
    if batch_size > DEFAULT_BATCH_SIZE and batch_size % DEFAULT_BATCH_SIZE == 0:
        return DEFAULT_BATCH_SIZE
    return int(batch_size)


def estimate_llc(
    loss_fn: Callable[[PyTree, PyTree], jax.Array],
    params: PyTree,
    data: PyTree,
    *,
    key: jax.Array,
    sampler: str | Sampler | None = None,
    nbeta: float | None = None,
    localization: float | None = None,
    step_size: float | None = None,
    sampler_options: dict | None = None,
    num_chains: int = 4,
    num_draws: int | None = None,
    num_burnin: int | None = None,
    steps_per_draw: int = 1,
    batch_size: int | None | str = "auto",
    init_loss: float | None = None,
    safety_factor: float = DEFAULT_SAFETY_FACTOR,
    max_retries: int = 3,
    max_extensions: int = 0,
    progress: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    chain_axis: str | None = "chains",
    data_axis: str | None = None,
    mask: PyTree | None = None,
) -> LLCResult:
    r"""Estimate the local learning coefficient of ``loss_fn`` at ``params`` with defaults.

    .. math::

        \hat\lambda(w^*) = n\beta\,\big(\mathbb E_{p}[L_n(w)] - L_n(w^*)\big),\qquad
        p(w) \propto e^{-n\beta L_n(w) - \frac{\gamma}{2}\lVert w - w^*\rVert^2}

    (Lau et al. 2023, arXiv 2308.12108). Defaults: SGHMC (BAOAB splitting) with friction 0.03
    (raised by the calibration against minibatch gradient noise),
    :math:`n\beta = n/\log n`, :math:`\gamma = 1`, batch size 500 (the full batch when ``n ≤ 500``: a minibatch of ``n``
    drawn with replacement is not the full batch), 4 chains × 4000
    draws after ``num_draws // 2`` burn-in steps, and a step size calibrated from the top Hessian
    eigenvalue at :math:`w^*` and where pilot chains go
    (:func:`slt_jax.calibration.calibrate_step_size`, safety factor 0.1).

    Why SGHMC: at the same learning rate its overdamped dynamics relax ill-conditioned
    directions about :math:`(2-\alpha)/\alpha \approx 2/\alpha` times faster than SGLD, and
    the BAOAB splitting (Leimkuhler & Matthews 2013) has the exact stationary variance on
    quadratics, so the step's first-order bias is gone. On the DLN suite
    (``benchmarks/dln_suite.py``, 16 instances incl. depth 5 and 6) it gives a median
    |relative error| of 0.95% and a maximum of 7.4%, where SGLD at the same bias gives 27% on an
    ill-conditioned depth-4 network (README, ``docs/calibration_findings.md``). If a chain
    diverges with a calibrated step size, the step size is halved and the run repeated
    (``max_retries`` times). The batch size is chosen **before the draws**
    (``batch_size="auto"``, SGLD and SGHMC; :class:`_BurnInThenDraws`): the minibatch
    gradient-noise bias is predicted again where the chains stand after the burn-in
    (``hyperparameters["gradient_noise_bias_after_burnin"]``, relative to the LLC of the
    burn-in's last quarter; the calibration's pilots end closer to :math:`w^*`, where the
    per-example gradients differ less), and where 1.5 times it (:data:`NOISE_GROWTH`: it keeps
    growing during the draws) exceeds 2% the batch is raised and the same chains continue at
    it (no new chains, nothing compiles). After the run the bias is predicted where the chains
    ended (``hyperparameters["gradient_noise_bias_at_end"]``, the reported number): above 3%
    the run is repeated with fresh chains at a larger batch (above 2% when there was no check
    after the burn-in: burn-in under 64 steps) and it warns if it is still above 3%. The
    fresh rerun used to decide alone at 2% (``[15, 4, 26]`` +4.1% → +0.5%, ``[48, 256, 58]``
    +7.9% → +1.4%, at 3–5× the time; 4.2–4.5× the main run on 3 of 5 keys of the demo DLN).
    Now (``benchmarks/results/issue20_batch_before_draws_accuracy.json``):
    ``[15, 4, 26]`` +1.3…+2.3% over 4 keys (rerun: +0.6…+2.3%), ``[48, 256, 58]`` +1.7%
    (batch 3000 chosen after the burn-in), ``[18, 8, 19, 19, 5, 5, 7]`` −1.1% (its end check
    still reruns: 1.2% after the burn-in, 6–7% at the end); the demo DLN's warm calls cost
    1.19–1.38× their main run (``estimate_llc_time_issue20_batch_before_draws.json``). What
    remains (the calibration aims at 1%; about +1% on
    regular models at batch 500) is reported, not subtracted, as
    ``hyperparameters["gradient_noise_bias"]`` and in ``result.summary()``. Where the
    friction alone cannot hold the noise bias at 1%, the calibration raises the batch
    (``batch_size="auto"``; to the full data when that is at most twice the batch it needs)
    instead of cutting the step: a normal crossing at n = 1000, nβ = 1000 had its step cut
    28-88x, its chains barely moved and it read −39…−65%. The draws are checked for drift
    (:func:`drift_statistics`), including a drift that every chain shares (they all start at
    :math:`w^*`), and a drifting run warns. Every choice is recorded in
    ``result.hyperparameters``.

    Args:
      loss_fn: ``loss_fn(params, batch)`` returning the *per-example* losses of a minibatch:
        shape ``(b,)``, or ``(b, T)`` per token, for a batch of ``b`` examples (not their mean;
        the sampler averages them). It must be a pure JAX function of its arguments.
      params: the point :math:`w^*` to localize at: a pytree of float arrays (plain dicts or
        lists, Flax NNX state, Equinox modules' arrays).
      data: a pytree of arrays sharing a leading example axis of length ``n``; minibatches are
        drawn from it uniformly with replacement.
      key: a ``jax.random.key`` (split for the calibration and the run).
      sampler: ``None``/``"sghmc"``, another sampler name (``"sgld"``, ``"rmsprop_sgld"``,
        ``"adam_sgld"``, ``"sgnht"``), or a ready sampler from :mod:`slt_jax.samplers` (then its
        own hyperparameters are used and nothing is calibrated), or ``"refined_llc_paper"``:
        the fixed per-head setting of arXiv 2410.02984 that
        ``llc_over_checkpoints(sampler="refined_llc_paper")`` runs
        (:func:`slt_jax.estimators.refined_llc_sampler`: SGLD, step 1e-3, nβ = 30, γ = 200;
        200 draws after 100, batch 32 unless given; with ``mask``), so one cell of such a sweep
        can be estimated alone. It is not calibrated: ``nbeta``, ``localization``,
        ``step_size`` and ``sampler_options`` raise ``TypeError`` with it.
      nbeta, localization, step_size: override the defaults (nβ = n/log n, γ = 1) / the
        calibration.
      sampler_options: other keyword arguments of the named sampler, e.g.
        ``{"friction": 0.3}`` for SGHMC (the calibration then uses that friction instead of
        choosing one) or ``{"decay": 0.999}`` for RMSProp-SGLD.
      num_chains: independent chains (default 4); their spread gives R̂ and the MCSE.
      num_draws: recorded draws per chain (default 4000, 200 with
        ``sampler="refined_llc_paper"``; at least 2, for an error bar).
      num_burnin: discarded steps before the first draw (default ``num_draws // 2``); never
        averaged into the estimate.
      steps_per_draw: sampler steps between recorded draws (thinning; default 1).
      batch_size: ``"auto"`` for 500 (full batch when ``n ≤ 500``), raised by the calibration where friction 1
        is not enough against the gradient noise, raised (up to 8×, or full batch) after the
        burn-in when 1.5× the gradient noise there predicts more than 2% bias (the chains
        continue at it), and with the run repeated when the prediction where the chains ended
        is still above 3%; ``None`` for full batch, or an int (kept as given; a prediction
        above 3% warns).
      init_loss: :math:`L_n(w^*)`; computed on the full data in chunks if not given.
      safety_factor: :math:`\kappa` of the calibration, the step size is
        :math:`\kappa/\lambda_{max}(n\beta H + \gamma)` (default 0.1, about a 5% variance bias
        for SGLD on a quadratic); smaller is more accurate and mixes slower.
      max_retries: how many times a run whose chains diverged (or ran away) is repeated with
        half the step size (calibrated step sizes only; default 3).
      max_extensions: while the LLC draws are still drifting (:func:`drift_statistics`: the
        halves of the run differ by more than 3 standard errors, or split-R̂ > 1.05), the
        chains are continued for another ``num_draws`` draws and the earlier draws become
        burn-in, at most this many times (``result.hyperparameters["extensions"]`` says how
        many ran). Off by default: on two deep linear networks of the DLN suite the draws kept
        rising over longer runs (+6% → +45%) as the chains reached stiffer regions, so a longer
        run is not always a better one. Whenever the draws drift, a warning says why (the
        gradient at :math:`w^*` against the curvature) and what to try.
      progress: ``True`` for progress bars (or a :class:`~slt_jax.sampling.ProgressMeter`):
        one per calibration step ("calibrating: top Hessian eigenvalue", "calibrating (pilot
        k)", "calibrating: gradient noise") and one for the final run (two: its burn-in and
        its draws), each with a "compiling" phase until its program has compiled.
      mesh, chain_axis, data_axis: shard chains / minibatches over devices (see
        :func:`slt_jax.sample`).
      mask: the weight-refined LLC :math:`\hat\lambda(w^*; V)` (docs/mathematics.md §2, arXiv 2410.02984):
        a boolean pytree (per leaf or per element; build it with :mod:`slt_jax.masks`) of the
        coordinates :math:`V` to sample; the others stay at :math:`w^*`. The calibration then
        measures the curvature and the gradient noise in that subspace only. Leaves of
        ``params`` wrapped in :class:`slt_jax.adapters.Frozen` (BatchNorm statistics from
        :func:`slt_jax.adapters.from_nnx`, ...) are never sampled, with or without a mask.

    The data-refined LLC (docs/mathematics.md §2) replaces :math:`L_n` by :math:`L'_n` on another
    distribution :math:`q'`: pass the :math:`q'` data as ``data``. Both the sampler's gradients
    and :math:`L'_n(w^*)` (``init_loss``, computed on ``data`` unless given) then come from
    :math:`q'`, and :math:`n\beta = n'/\log n'` uses its size. With ``mask`` too, the two
    refinements combine: :math:`\hat\lambda(w^*; V, q')`.

    Returns:
      an :class:`~slt_jax.LLCResult`: ``mean`` (the estimate), ``std`` (over chains),
      ``per_chain``, ``mcse``, ``rhat``, ``ess``, ``init_loss``, ``nbeta``,
      ``diverged_chains`` (excluded and reported), ``draws`` and ``hyperparameters`` (the
      sampler and every value it ran with, the run lengths, the :class:`Calibration` with its
      evidence under ``"calibration"``, the number of step-size halvings and the wall time).

    Example (a deep linear network teacher, whose LLC is Aoyagi's λ; a few seconds, so it is
    not a doctest: ``tests/test_cli.py`` runs the same through ``slt-jax demo``)::

        import jax, slt_jax as slt
        from slt_jax.data import make_dln_data, make_dln_teacher
        from slt_jax.models import dln_loss

        teacher = make_dln_teacher(jax.random.key(0), [5, 4, 6], minimal_rank=True)
        data = make_dln_data(jax.random.key(1), teacher.params, 2000)
        result = slt.estimate_llc(dln_loss, teacher.params, data, key=jax.random.key(2))
        print(result.summary(), "truth:", float(teacher.true_lambda))
    """
    start = time.perf_counter()
    params = as_params(loss_fn, params)  # TrainResult, nnx.State, ... for adapters' loss_fns
    if isinstance(sampler, str) and sampler == PAPER_SAMPLER:
        sampler, num_draws, num_burnin, batch_size = _paper_setting(
            params, mask, num_draws=num_draws, num_burnin=num_burnin,
            batch_size=batch_size, nbeta=nbeta, localization=localization,
            step_size=step_size, sampler_options=sampler_options,
        )
        mask = None  # in the sampler now
    num_draws = DEFAULT_NUM_DRAWS if num_draws is None else num_draws
    localization = 1.0 if localization is None else localization
    if mesh is not None:  # a mesh that cannot hold the chains fails now, not after calibrating
        batch = DEFAULT_BATCH_SIZE if batch_size == "auto" else batch_size
        batch = None if batch is None or batch >= num_examples(data) else batch
        check_mesh(mesh, chain_axis, data_axis, num_chains, batch or num_examples(data))
    setup = _calibrated_setup(
        loss_fn, params, data, key=key, sampler=sampler, nbeta=nbeta, localization=localization,
        step_size=step_size, sampler_options=sampler_options, safety_factor=safety_factor,
        num_chains=num_chains, num_draws=num_draws, num_burnin=num_burnin,
        batch_size=batch_size, init_loss=init_loss, progress=progress, mask=mask,
        steps_per_draw=steps_per_draw,
    )
    run = dict(setup.lengths, steps_per_draw=steps_per_draw, progress=progress, mesh=mesh,
               chain_axis=chain_axis, data_axis=data_axis)
    if mesh is not None and data_axis is not None:  # the minibatch is sharded: one gather
        run["batch_chunk"] = None
    main = _BurnInThenDraws(loss_fn, params, data, setup, run, batch_size == "auto")
    trace, chosen, retries = _sample_with_retries(
        loss_fn, params, data, setup.sampler, setup.sampling_key, run,
        max_retries if setup.calibration else 0, run_once=main if main.checks else None,
    )
    trace, run, noise_at_end, batch_raised_from = _control_noise_at_end(
        loss_fn, params, data, setup, chosen, trace, main.run, auto_batch=batch_size == "auto",
        rerun_above=NOISE_WARNING if main.checks else NOISE_RERUN,
        after_burnin=main.bias_after_burnin, raised_from=main.raised_from,
    )
    batch_raised_from = batch_raised_by(setup, batch_size, batch_raised_from)
    trace, extensions = _extend_while_drifting(
        loss_fn, params, data, chosen, setup.sampling_key, run, trace, max_extensions
    )
    drift = drift_statistics(setup.nbeta * _paired_or_plain(trace, setup.init_loss))
    diagnosis = None
    if drift["drifting"]:
        diagnosis = _drift_diagnosis(loss_fn, params, data, setup, drift, extensions)
    result = _warnings_at_caller(
        llc, trace, nbeta=setup.nbeta, init_loss=setup.init_loss,
        drop="split R-hat" if diagnosis else None,
    )
    if diagnosis:
        warnings.warn(diagnosis, RuntimeWarning, stacklevel=2)
    hyperparameters = run_hyperparameters(
        setup, chosen, retries, start, steps_per_draw=steps_per_draw, extensions=extensions,
        drift_z=drift["z"], drift_shared_t=drift["shared_t"],
        gradient_noise_bias_at_end=noise_at_end,
        gradient_noise_bias=reported_noise_bias(noise_at_end, run["batch_size"], setup),
        gradient_noise_bias_after_burnin=main.bias_after_burnin,
        batch_size=run["batch_size"], batch_size_raised_from=batch_raised_from,
    )
    return result._replace(hyperparameters=hyperparameters)


#: ``sampler=`` for the fixed per-head setting of arXiv 2410.02984
#: (:func:`refined_llc_sampler`), in ``estimate_llc`` and ``llc_over_checkpoints``
PAPER_SAMPLER = "refined_llc_paper"
#: the run lengths arXiv 2410.02984 uses with :func:`refined_llc_sampler` (4 chains)
PAPER_LENGTHS = dict(num_draws=200, num_burnin=100, batch_size=32)
#: ``estimate_llc``'s recorded draws per chain
DEFAULT_NUM_DRAWS = 4000


def refined_llc_sampler() -> Sampler:
    """SGLD with the per-head refined-LLC settings of arXiv 2410.02984: step size 1e-3,
    nβ = 30, γ = 200 (use with 4 chains × 200 draws, batch size 32).

    ``llc_over_checkpoints(..., sampler="refined_llc_paper")`` and ``estimate_llc(...,
    sampler="refined_llc_paper")`` run it with those lengths. Its LLCs are smaller than
    ``estimate_llc``'s defaults' (smaller nβ, tighter localization γ): compare them only with
    each other or with that paper."""
    return sgld(step_size=1e-3, nbeta=30.0, localization=200.0)


def check_paper_arguments(calibration_arguments: dict) -> None:
    """``TypeError`` where ``sampler="refined_llc_paper"`` (a fixed setting) is given
    calibration arguments (``nbeta``, ``localization``, ``step_size``, ``sampler_options``)."""
    given = sorted(name for name, value in calibration_arguments.items() if value is not None)
    if given:
        raise TypeError(
            f"sampler={PAPER_SAMPLER!r} is a fixed setting (SGLD, step 1e-3, nbeta 30, "
            f"localization 200); {given} cannot change it. Pass "
            "sampler=slt.samplers.sgld(...) with your values instead."
        )


def _masked_sampler(sampler, mask):
    """The same sampler (same ``update`` code, so the same compiled program) with ``mask``."""
    if not isinstance(sampler, Sampler):
        raise TypeError(
            "a sweep needs a sampler from slt_jax.samplers (it rebuilds the sampler "
            f"with each component's mask), got {sampler!r}"
        )
    return sampler.factory(**sampler.hyperparameters, **dict(sampler.static), mask=mask)


def _paper_setting(params, mask, *, num_draws, num_burnin, batch_size,
                   **calibration_arguments):
    """``sampler="refined_llc_paper"``: :func:`refined_llc_sampler` with ``mask`` (Frozen
    leaves never sampled) and :data:`PAPER_LENGTHS` where not given (``llc_over_checkpoints``'
    rule, so a cell of a paper-setting sweep and this call run the same settings). Returns
    ``(sampler, num_draws, num_burnin, batch_size)``; ``TypeError`` for calibration
    arguments, which the fixed setting does not take."""
    check_paper_arguments(calibration_arguments)
    sampler = _masked_sampler(refined_llc_sampler(), trainable(params, mask))
    return (sampler,
            PAPER_LENGTHS["num_draws"] if num_draws is None else num_draws,
            PAPER_LENGTHS["num_burnin"] if num_burnin is None else num_burnin,
            PAPER_LENGTHS["batch_size"] if batch_size == "auto" else batch_size)


def batch_raised_by(setup, batch_size, raised_from) -> int | None:
    """``hyperparameters["batch_size_raised_from"]``: the batch a run's checks raised
    (``raised_from``), else :data:`DEFAULT_BATCH_SIZE` where the calibration raised the
    default batch instead of cutting the step, else ``None``."""
    if raised_from is None and getattr(setup.calibration, "batch_size", None) and \
            batch_size == "auto" and setup.num_examples > DEFAULT_BATCH_SIZE and \
            setup.lengths["batch_size"] != DEFAULT_BATCH_SIZE:
        return DEFAULT_BATCH_SIZE  # by the calibration
    return raised_from


def reported_noise_bias(bias_at_end, batch_size, setup) -> float | None:
    """``result.hyperparameters["gradient_noise_bias"]``: the relative LLC overestimate that
    minibatch gradient noise predicts where the chains ended (0 with ``batch_size=None``,
    ``None`` where it is not modelled). It is left in the estimate, not subtracted: the heating model
    is exact on regular (locally quadratic) models, where the defaults read about +1% at
    batch 500, but on singular ones it is an upper bound (1.3-2x the measured excess on the
    DLN suite), so subtracting it would over-correct them. ``LLCResult.summary()`` shows it."""
    if batch_size is None:
        return 0.0
    return None if bias_at_end is None else float(bias_at_end)


#: predicted relative LLC bias from minibatch gradient noise above which ``estimate_llc``
#: raises the batch (``batch_size="auto"``: after the burn-in, :data:`NOISE_GROWTH` times the
#: prediction there; where the chains ended without that check), and above which it warns and,
#: after that check, repeats the run (the calibration keeps the pilots' prediction at 1%)
NOISE_RERUN = 0.02
NOISE_WARNING = 0.03
#: the most the batch is raised by (the rerun costs about that much more per step)
MAX_BATCH_FACTOR = 8


def _noise_bias_at_end(loss_fn, params, data, setup, chosen, trace, batch_size, examples=256):
    r"""The gradient-noise bias predicted where a run's chains ended (``None``: full batch, or a
    sampler whose heating is not modelled).

    The calibration measures :math:`\operatorname{tr}V` where its 500-step pilots end, but
    :math:`\operatorname{tr}V` grows with the distance from :math:`w^*` (it is 0 at an
    exact, noiseless teacher): on the DLN ``[15, 4, 26]`` the pilots predicted 1% at friction
    0.031, the main run's endpoints 4.8% (an upper bound), and batch 500 read 3.5% above full
    batch on the same sampler. The bias is relative to the unheated LLC (the draws' mean less
    the predicted heating).
    """
    from slt_jax.calibration import (
        _endpoint_gradient_variance,
        _sampled_coordinates,
        gradient_noise_heating,
    )

    family = SAMPLER_FAMILIES.get(chosen.name)
    if (batch_size is None or family is None
            or family.gradient_noise_heating is None or trace.final_params is None
            or trace.loss is None):
        return None
    draws = setup.nbeta * _paired_or_plain(trace, setup.init_loss)
    kept = ~(np.asarray(trace.diverged) | _runaway(trace)) & np.all(np.isfinite(draws), axis=1)
    if not np.any(kept):
        return None
    estimate = float(np.mean(draws[kept]))
    _, flat_mask = _sampled_coordinates(params, chosen.mask)
    # every endpoint goes in; the chains left out get weight 0 (data: no program per selection)
    variance = _endpoint_gradient_variance(
        loss_fn, trace.final_params, data, np.arange(setup.num_examples),
        jax.random.fold_in(setup.sampling_key, 7), examples, flat_mask, chain_weights=kept,
    )
    hyper = chosen.hyperparameters
    heating = gradient_noise_heating(
        chosen.name, step_size=float(hyper["step_size"]), gradient_variance=variance,
        nbeta=setup.nbeta, batch_size=batch_size, friction=float(hyper.get("friction", 0.0)),
        splitting=dict(chosen.static).get("splitting", "baoab"),
    )
    if heating is None:
        return None
    unheated = estimate - heating  # the draws already contain the heating
    if unheated > 0:
        return heating / unheated
    # the predicted heating is all of the estimate (or the estimate is <= 0): the bias is not
    # a finite fraction of it. It matters unless it is below the estimate's between-chain error.
    per_chain = draws[kept].mean(axis=1)
    floor = float(np.std(per_chain, ddof=1) / np.sqrt(per_chain.size)) if per_chain.size > 1 else 0.0
    return float("inf") if heating > floor else None


def _raised_batch(bias, batch_size, num_examples) -> int | None:
    """The batch that brings a predicted bias to the calibration's 1%: ``batch_size`` times
    ``ceil(bias / 1%)``, at most :data:`MAX_BATCH_FACTOR` times (also for an infinite bias,
    the predicted heating >= the estimate), ``None`` (full batch) from ``num_examples`` on."""
    from slt_jax.calibration import DEFAULT_NOISE_TOLERANCE

    # int(ceil(inf)) would raise (issue 17: 3 of 38 runs on a normal crossing crashed)
    factor = (MAX_BATCH_FACTOR if not np.isfinite(bias)
              else min(MAX_BATCH_FACTOR, int(np.ceil(bias / DEFAULT_NOISE_TOLERANCE))))
    larger = batch_size * factor
    return None if larger >= num_examples else larger


#: ``estimate_llc``'s main run records the last ``num_burnin // BURNIN_TAIL`` burn-in steps
#: to measure the LLC where the draws start (and re-equilibrates as long at a raised batch)
BURNIN_TAIL = 4
#: below this many recorded burn-in steps there is no check before the draws (the end-of-run
#: check alone decides, with a fresh run above :data:`NOISE_RERUN`)
MIN_BURNIN_TAIL = 16
#: how much larger the gradient-noise bias averaged over the draws is than the one predicted
#: after the burn-in: the chains keep spreading along flat directions, where the per-example
#: gradients differ more (DLN ``[15, 4, 26]``, batch 500: 2.4% at the end of the burn-in,
#: 2.7, 2.4, 3.2, 3.5, 3.7, 3.8, 3.5, 4.9% every 500 steps of the 4000 draws, mean 3.5% = 1.4×,
#: while the LLC of each 500 stayed at 41-44; the demo DLN: 1.0-1.3% after the burn-in,
#: 1.4-2.4% at the end); the check after the burn-in acts on ``NOISE_GROWTH`` times it
NOISE_GROWTH = 1.5


#: ``sample`` arguments of a main run that only its draws feed (``estimate_bif``'s streamed
#: BIF and query sets): the burn-in's head run leaves them out, so its recorded tail never
#: enters an estimate; it runs the calibration pilots' program (loss streams only), so it
#: compiles nothing more where there were pilots (one program more with a given step size)
DRAWS_ONLY = ("accumulators", "query_data", "observables", "store")


class _BurnInThenDraws:
    r"""The main run of ``estimate_llc`` and ``estimate_bif``, choosing the batch size
    **before** the draws (``batch_size="auto"``, samplers whose gradient-noise heating is
    modelled: SGLD, SGHMC).

    1. Burn-in: one :func:`sample` call of ``num_burnin − t`` steps and ``t = num_burnin //
       4`` recorded steps (the burn-in's last quarter), without the run's
       :data:`DRAWS_ONLY` arguments (accumulators, query sets, observables, ``store``): only
       the draws of step 4 enter an estimate.
    2. The gradient-noise bias :math:`h/(\hat\lambda_t - h)` is predicted where the chains
       stand after the burn-in (:func:`_noise_bias_at_end`: :math:`\operatorname{tr}V` of the
       per-example gradients at the chains' positions, heating :math:`h` from
       :func:`slt_jax.calibration.gradient_noise_heating`), relative to the LLC
       :math:`\hat\lambda_t` of the recorded quarter: measured where the draws will start,
       not where the calibration's 500-step pilots ended (nearer :math:`w^*`, where
       :math:`\operatorname{tr}V` is smaller, so the pilots under-predict).
    3. Where :data:`NOISE_GROWTH` times it (what it grows to, averaged over the draws)
       exceeds :data:`NOISE_RERUN`, the batch is raised by :func:`_raised_batch` (the factor
       rule of the end-of-run check, applied to the grown prediction) and the chains
       re-equilibrate for ``t`` more steps at the new batch: the heating excess they shed is
       a few per cent of the LLC, much less than the displacement from :math:`w^*` the whole
       burn-in relaxed.
    4. The draws continue the same chains (``sample(initial_state=...)``: nothing compiles,
       the batch size is data of the chunked program), with the run's :data:`DRAWS_ONLY`
       arguments (accumulators start empty); without a raise the chains are those of one
       ``sample`` call with the same lengths, bit for bit.

    ``bias_after_burnin``, ``raised_from`` and ``run`` (with the chosen batch) describe the
    last call (one per step-size retry)."""

    def __init__(self, loss_fn, params, data, setup, run, auto_batch):
        self.arguments = (loss_fn, params, data)
        self.setup, self.initial_run, self.run = setup, run, run
        self.bias_after_burnin, self.raised_from = None, None
        self.tail = run["num_burnin"] // BURNIN_TAIL
        family = SAMPLER_FAMILIES.get(setup.sampler.name)
        self.checks = bool(auto_batch and run["batch_size"] is not None
                           and self.tail >= MIN_BURNIN_TAIL and family is not None
                           and family.gradient_noise_heating is not None)

    def __call__(self, chosen):
        setup, run = self.setup, self.initial_run
        head = {**{name: value for name, value in run.items() if name not in DRAWS_ONLY},
                "num_burnin": run["num_burnin"] - self.tail, "num_draws": self.tail,
                "steps_per_draw": 1}
        burnt = sample(*self.arguments, chosen, key=setup.sampling_key, **head)
        bias = _noise_bias_at_end(*self.arguments, setup, chosen, burnt, run["batch_size"])
        self.bias_after_burnin, self.raised_from, self.run = bias, None, run
        settle = 0
        if bias is not None and NOISE_GROWTH * bias > NOISE_RERUN:
            self.raised_from = run["batch_size"]
            self.run = {**run, "batch_size": _raised_batch(NOISE_GROWTH * bias,
                                                           run["batch_size"], setup.num_examples)}
            settle = self.tail
        return sample(*self.arguments, chosen, key=setup.sampling_key,
                      **{**self.run, "num_burnin": settle}, initial_state=burnt.state)


def _control_noise_at_end(loss_fn, params, data, setup, chosen, trace, run, auto_batch, *,
                          rerun_above=NOISE_RERUN, after_burnin=None, raised_from=None):
    """Where the end-of-run prediction exceeds ``rerun_above`` (:data:`NOISE_RERUN`;
    ``estimate_llc`` passes :data:`NOISE_WARNING` when its batch was chosen after the burn-in)
    and the batch size is the default, run again (fresh chains, same lengths) at a batch that
    brings it to the calibration's 1% (at most :data:`MAX_BATCH_FACTOR` times larger, or full
    batch); warn where the prediction still exceeds :data:`NOISE_WARNING`. ``after_burnin``
    (the prediction after the burn-in) goes into the warning, ``raised_from`` (a batch raised
    before) is returned unless a rerun raises it now.

    Returns ``(trace, run, bias_at_end, batch_raised_from)``."""
    batch_size = run["batch_size"]
    bias = _noise_bias_at_end(loss_fn, params, data, setup, chosen, trace, batch_size)
    rerun = False
    if auto_batch and bias is not None and bias > rerun_above:
        raised_from = batch_size if raised_from is None else raised_from
        run = {**run, "batch_size": _raised_batch(bias, batch_size, setup.num_examples)}
        # fresh chains from w*: continuing the old ones makes a longer run, and on deep linear
        # networks longer runs drift into stiffer regions (a continued chain of
        # [18, 8, 19, 19, 5, 5, 7] went from 28 to 60 where a fresh run at the larger batch read
        # 27.0 against λ = 27.5)
        trace, rerun = sample(loss_fn, params, data, chosen,
                              key=jax.random.fold_in(setup.sampling_key, 11), **run), True
        bias = _noise_bias_at_end(loss_fn, params, data, setup, chosen, trace, run["batch_size"])
    if bias is not None and bias > NOISE_WARNING:
        _warn_noise_at_end(bias, run["batch_size"], setup, after_burnin, rerun)
    return trace, run, bias, raised_from


def _warn_noise_at_end(bias, batch_size, setup, after_burnin, rerun):
    """The warning of :func:`_control_noise_at_end` (the bias is above :data:`NOISE_WARNING`)."""
    calibrated = getattr(setup.calibration, "gradient_noise_bias", None)
    then = ""
    if after_burnin is not None and not rerun:
        then = f" (after the burn-in it predicted {after_burnin:.1%})"
    elif calibrated is not None and not rerun:
        then = f" (the calibration's pilots, which end closer to w*, predicted {calibrated:.1%})"
    again = f" after the run was repeated at batch_size={batch_size}" if rerun else ""
    size = (f"up to {bias:.1%}" if np.isfinite(bias)
            else "as much as the whole estimate (the predicted heating exceeds it)")
    warnings.warn(
        f"minibatch gradient noise where the chains ended predicts an LLC overestimate of "
        f"{size} at batch_size={batch_size}{then}{again}: the estimate is "
        "probably high by up to that much. The bias falls in proportion to 1/batch_size (and "
        "to the step size); pass a larger batch_size, or a larger "
        "sampler_options={'friction': ...} for SGHMC.",
        RuntimeWarning, stacklevel=4,
    )


#: |z| of the first-half vs second-half difference of the LLC draws above which a run is
#: drifting (with split R̂ above ``RHAT_WARNING``)
DRIFT_Z = 3.0
#: a drift that all chains share: the per-chain half differences agree in sign by Student's t
#: (two-sided level DRIFT_T_LEVEL) and their mean exceeds DRIFT_SHARED of the estimate
DRIFT_T_LEVEL = 0.01
DRIFT_SHARED = 0.05


def drift_statistics(draws) -> dict:
    r"""Is a run of LLC draws ``(chains, draws)`` still drifting?

    :math:`z = (\bar d_{2} - \bar d_{1})/\sqrt{\mathrm{MCSE}_1^2 + \mathrm{MCSE}_2^2}`
    compares the means of the second and first halves of the draws (pooled over chains, each
    with its ESS-based MCSE), beside split-:math:`\hat R`. A run drifts when
    :math:`|z| > 3` or :math:`\hat R > 1.05`, or when the chains drift **together**: the
    per-chain differences :math:`D_c = \bar d_{c,2} - \bar d_{c,1}` (independent across
    chains, whatever the autocorrelation within one) have a Student-:math:`t` of their mean
    beyond the two-sided 1% level (``shared_t``; 5.84 for 4 chains) and that mean exceeds 5%
    of the estimate. All chains start at :math:`w^*` and under-mix alike where a direction
    relaxes slower than the run, so R̂ sees nothing, and the trend inflates the pooled MCSE
    that ``z`` divides by: a depth-6 rank-1 DLN read 18% low with R̂ 1.045 and z 4.3, its four
    chains' half differences +1.5 to +3.5 (t = 6.4).

    Returns:
      ``{"z", "rhat", "shared_t", "shared", "first_half", "second_half", "drifting"}``.
    """
    draws = np.asarray(draws, np.float64)
    draws = draws[np.all(np.isfinite(draws), axis=1)]
    half = draws.shape[1] // 2
    if draws.shape[0] == 0 or half < 4:
        return dict(z=float("nan"), rhat=float("nan"), shared_t=float("nan"), shared=False,
                    first_half=float("nan"), second_half=float("nan"), drifting=False)
    first, second = draws[:, :half], draws[:, half: 2 * half]
    error = np.hypot(monte_carlo_standard_error(first), monte_carlo_standard_error(second))
    difference = float(second.mean() - first.mean())
    z = difference / error if error > 0 else (0.0 if difference == 0 else float("inf"))
    rhat = split_rhat(draws) if draws.shape[0] > 1 else float("nan")
    shared_t, shared = _shared_drift(first, second)
    drifting = bool(abs(z) > DRIFT_Z or (np.isfinite(rhat) and rhat > RHAT_WARNING) or shared)
    return dict(z=float(z), rhat=float(rhat), shared_t=shared_t, shared=shared,
                first_half=float(first.mean()), second_half=float(second.mean()),
                drifting=drifting)


def _shared_drift(first, second) -> tuple[float, bool]:
    """Student's t of the per-chain half differences, and whether it says the chains drift
    together by more than :data:`DRIFT_SHARED` of the estimate."""
    import scipy.special  # Student's t quantile: 0.2 s to import, scipy.stats 0.9 s

    differences = second.mean(axis=1) - first.mean(axis=1)
    chains = differences.size
    if chains < 3:
        return float("nan"), False
    spread = float(np.std(differences, ddof=1))
    mean = float(differences.mean())
    t = mean / (spread / np.sqrt(chains)) if spread > 0 else (0.0 if mean == 0 else float("inf"))
    critical = float(scipy.special.stdtrit(chains - 1, 1 - DRIFT_T_LEVEL / 2))
    scale = abs(float(np.concatenate([first, second], axis=1).mean()))
    return float(t), bool(abs(t) > critical and abs(mean) > DRIFT_SHARED * scale)


def _paired_or_plain(trace, init_loss):
    losses = np.asarray(trace.loss, np.float64)
    if trace.center_loss is not None:
        return losses - np.asarray(trace.center_loss, np.float64)
    return losses - init_loss


def _extend_while_drifting(loss_fn, params, data, chosen, key, run, trace, max_extensions):
    """While the draws drift, continue the chains for another ``num_draws`` draws and keep only
    the new ones (the earlier draws become burn-in); at most ``max_extensions`` times."""
    extensions = 0
    while extensions < max_extensions and trace.loss is not None:
        if not drift_statistics(_paired_or_plain(trace, 0.0))["drifting"]:
            break
        extensions += 1
        trace = sample(loss_fn, params, data, chosen, key=key,
                       **{**run, "num_burnin": 0}, initial_state=trace.state)
    return trace, extensions


def _drift_diagnosis(loss_fn, params, data, setup, drift, extensions) -> str:
    """Why the draws still drift and what to do (the gradient at w* decides which)."""
    gradient = _full_gradient_norm(loss_fn, params, data)
    nbeta, gamma = setup.nbeta, float(setup.sampler.hyperparameters.get("localization", 0.0))
    calibration = setup.calibration
    largest = getattr(calibration, "max_hessian_eigenvalue", None)
    after = f" after {extensions} extension(s) of the run" if extensions else ""
    # the same opening as llc's R-hat warning, which this one replaces
    opening = (f"split R-hat {drift['rhat']:.3f} > {RHAT_WARNING}: "
               if drift["rhat"] > RHAT_WARNING else "")
    text = opening + (
        f"the LLC draws are still drifting{after}: "
        f"first half {drift['first_half']:.4g} → second half {drift['second_half']:.4g} "
        f"(z = {drift['z']:.1f}, split R-hat {drift['rhat']:.3f}"
        + (f"; every chain moved the same way, t = {drift['shared_t']:.1f} over chains: "
           "under-mixing that all chains share"
           if drift.get("shared") else "")
        + "). "
    )
    llc_size = max(abs(drift["second_half"]), 1e-12)
    if largest is not None and np.isfinite(largest) and largest > 0 and gamma > 0:
        # sliding down the gradient lowers nβ·L by nβ²·gᵀ(nβH + γ)⁻¹g: between these bounds
        low = (nbeta * gradient) ** 2 / (nbeta * largest + gamma)
        high = (nbeta * gradient) ** 2 / gamma
        text += (
            f"‖∇L_n(w*)‖ = {gradient:.3g}: by sliding down it the chains can lower nβ·L by "
            f"between {low:.3g} (along the stiffest direction) and {high:.3g} (along flat "
            f"directions, nβ²‖∇L‖²/γ), against an LLC of about {llc_size:.3g}. "
        )
        if high > 0.1 * llc_size:
            return text + (
                "So w* is probably not a local minimum: the chains move to lower loss and the "
                "estimate depends on γ and the run length. Train w* further (to a smaller "
                "gradient), or raise localization (γ) to pin the chains near w*; then check that "
                "the estimate settles."
            )
        text += "That is small, so w* is close to a critical point. "
    rising = drift["second_half"] > drift["first_half"]
    return text + (
        "The chains are still exploring (flat or ill-conditioned directions)"
        + (": if the draws keep rising over longer runs the chains are reaching stiffer "
           "regions where the step is relatively too large, so lower safety_factor as well"
           if rising else "")
        + ". Run longer (num_draws, num_burnin, max_extensions) and check that the estimate "
        "settles, or raise localization (γ) to shrink the region they must explore."
    )


def _full_gradient_norm(loss_fn, params, data) -> float:
    """‖∇L_n(w*)‖ on the full data, in chunks (the calibration's gradient), by the program that
    checked the inputs at w* (a traced flag asks for it: nothing compiles)."""
    from slt_jax.sampling import _check_at_center

    return float(_check_at_center(loss_fn, params, data, gradient=True).gradient_norm)


#: the calibration's pilot chains run this many steps per round, or the run's length where
#: that is shorter: a 300-step run (the refined-LLC paper's 100 + 200) got three rounds of
#: 500-step pilots, which measure where chains go that the run never reaches, at more cost
#: than the run itself
PILOT_STEPS = 500


class CalibratedSetup(NamedTuple):
    """What :func:`_calibrated_setup` chose for a run (shared by ``estimate_llc`` and
    ``estimate_bif``)."""

    sampler: Sampler
    nbeta: float
    calibration: Any
    init_loss: float
    sampling_key: jax.Array
    num_examples: int
    lengths: dict  # num_chains, num_draws, num_burnin, batch_size, batch_chunk (sample's)


def _calibrated_setup(loss_fn, params, data, *, key, sampler, nbeta, localization, step_size,
                      sampler_options, safety_factor, num_chains, num_draws, num_burnin,
                      batch_size, init_loss, progress=False, mask=None,
                      steps_per_draw=1) -> CalibratedSetup:
    """Defaults (batch size, burn-in, L_n(w*)) and the calibrated sampler; the calibration's
    warnings are re-issued at the caller of ``estimate_llc`` / ``estimate_bif``. The pilots
    are never longer than the run they calibrate (:data:`PILOT_STEPS` at most): they measure
    the curvature where the run's chains can go."""
    check_run_lengths(num_chains=num_chains, num_draws=num_draws, num_burnin=num_burnin)
    nbeta = None if nbeta is None else check_positive_number("nbeta", nbeta)
    check_mask_samples_something(params, getattr(sampler, "mask", None) if mask is None else mask)
    n = num_examples(data)
    auto_batch = isinstance(batch_size, str) and batch_size == "auto"
    # a minibatch of n drawn with replacement is not the full batch (its gradient noise heats
    # the posterior): with n <= DEFAULT_BATCH_SIZE the default is the full batch
    batch_size = (None if n <= DEFAULT_BATCH_SIZE else DEFAULT_BATCH_SIZE) if auto_batch \
        else batch_size
    num_burnin = num_draws // 2 if num_burnin is None else num_burnin
    calibration_key, sampling_key = _split(check_key(key), 2)  # = jax.random.split(key)
    # non-finite w*, data, losses or gradient at w*: a clear error before any calibration
    computed = checked_loss_at_center(loss_fn, params, data, full_data=init_loss is None)
    init_loss = computed if init_loss is None else init_loss
    chunk = batch_chunk_for(batch_size)
    chosen, nbeta, calibration = _warnings_at_caller(
        _choose_sampler,
        loss_fn, params, data, sampler, key=calibration_key, nbeta=nbeta,
        localization=localization, step_size=step_size, sampler_options=sampler_options,
        safety_factor=safety_factor, init_loss=init_loss, num_chains=num_chains,
        batch_size=batch_size, progress=progress, mask=mask, stacklevel=4,
        pilot_steps=min(PILOT_STEPS, num_burnin + num_draws * steps_per_draw),
        max_batch_size=min(n, MAX_BATCH_FACTOR * batch_size) if auto_batch and batch_size else None,
        batch_chunk=chunk,
    )
    calibrated_batch = getattr(calibration, "batch_size", None)
    if auto_batch and calibrated_batch is not None and batch_size is not None \
            and calibrated_batch > batch_size:
        # the calibration raised the batch instead of cutting the step against gradient noise
        batch_size = None if calibrated_batch >= n else int(calibrated_batch)
    lengths = dict(num_chains=num_chains, num_draws=num_draws, num_burnin=num_burnin,
                   batch_size=batch_size, batch_chunk=chunk)
    return CalibratedSetup(chosen, nbeta, calibration, init_loss, sampling_key, n, lengths)


def run_hyperparameters(setup: CalibratedSetup, chosen, retries, start, **extra) -> dict:
    """Everything that produced a run, for ``result.hyperparameters``."""
    return {
        "sampler": chosen.name,
        **{k: float(v) for k, v in chosen.hyperparameters.items()},
        **dict(chosen.static),  # e.g. SGHMC's splitting, RMSProp/Adam-SGLD's adapt
        **setup.lengths,
        **extra,
        "num_examples": setup.num_examples,
        "step_size_halvings": retries,
        "calibration": setup.calibration,
        "wall_time_seconds": time.perf_counter() - start,
    }


def _choose_sampler(loss_fn, params, data, sampler, *, key, nbeta, localization, step_size,
                    sampler_options, safety_factor, init_loss, num_chains, batch_size,
                    progress=False, mask=None, max_batch_size=None, batch_chunk=None,
                    pilot_steps=None):
    """The sampler to run, its nβ and the calibration (``None`` for a ready sampler)."""
    if isinstance(sampler, Sampler):
        if nbeta is not None or step_size is not None or sampler_options or mask is not None:
            raise TypeError(
                "pass nbeta/step_size/sampler_options either to the sampler or to estimate_llc, "
                "not both (the same holds for mask)"
            )
        sampled = trainable(params, sampler.mask)
        if sampled is not sampler.mask:  # params hold Frozen leaves: never sample them
            sampler = sampler.factory(**sampler.hyperparameters, **dict(sampler.static),
                                      mask=sampled)
        return sampler, float(sampler.hyperparameters["nbeta"]), None
    mask = trainable(params, mask)
    name = DEFAULT_SAMPLER if sampler is None else sampler
    if name not in SAMPLER_FAMILIES:
        raise ValueError(
            f"unknown sampler {name!r}; expected one of {sorted(SAMPLER_FAMILIES)} or a "
            "sampler object from slt_jax.samplers"
        )
    family = SAMPLER_FAMILIES[name]
    nbeta = default_nbeta(num_examples(data)) if nbeta is None else float(nbeta)
    user_options = _check_sampler_options(name, sampler_options)
    if step_size is not None:
        return family.factory(step_size, nbeta, localization, mask=mask, **user_options), nbeta, None
    calibration = calibrate_step_size(
        loss_fn, params, data, key=key, nbeta=nbeta, localization=localization,
        sampler_name=name, safety_factor=safety_factor, num_chains=num_chains,
        batch_size=batch_size, init_loss=init_loss, progress=progress, mask=mask,
        max_batch_size=max_batch_size, batch_chunk=batch_chunk,
        pilot_steps=PILOT_STEPS if pilot_steps is None else pilot_steps,
        **{k: user_options[k] for k in ("friction", "stability", "splitting")
           if k in user_options},
    )
    options = {**dict(calibration.options), **user_options}
    return (family.factory(calibration.step_size, nbeta, localization, mask=mask, **options),
            nbeta, calibration)


def _sample_with_retries(loss_fn, params, data, chosen, key, run, max_retries, run_once=None):
    """Sample; if a chain diverges with a calibrated step size, halve it and run again.
    ``run_once(chosen) -> trace`` replaces the one ``sample`` call (``estimate_llc``'s
    :class:`_BurnInThenDraws`)."""
    family = SAMPLER_FAMILIES.get(chosen.name)
    retries = 0
    while True:
        if run_once is None:
            trace = sample(loss_fn, params, data, chosen, key=key, **run)
        else:
            trace = run_once(chosen)
        failed = np.asarray(trace.diverged) | _runaway(trace)
        if not np.any(failed) or retries >= max_retries or family is None:
            return trace, chosen, retries
        retries += 1
        changes = family.rescaled(chosen.hyperparameters, 0.5)
        warnings.warn(
            f"{int(np.sum(failed))} chain(s) diverged or ran away at step_size="
            f"{float(chosen.hyperparameters['step_size']):.3g}; retrying with "
            f"{changes['step_size']:.3g}",
            RuntimeWarning,
            stacklevel=3,
        )
        chosen = chosen.replace(**changes)


def _runaway(trace) -> np.ndarray:
    """Chains that ran away while finite (see :func:`slt_jax.estimators.llc.runaway_chains`)."""
    if trace.loss is None:
        return np.zeros(trace.num_chains, bool)
    draws = np.asarray(trace.loss, np.float64)
    if trace.center_loss is not None:
        draws = draws - np.asarray(trace.center_loss, np.float64)
    return runaway_chains(draws)


def _warnings_at_caller(function, *args, stacklevel=3, drop=None, **kwargs):
    """``function(*args, **kwargs)`` with its warnings re-issued ``stacklevel`` frames up (the
    caller of ``estimate_llc``: they point at the user's line, not inside slt_jax); warnings
    whose message contains ``drop`` are left out (a more specific one replaces them)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = function(*args, **kwargs)
    for warning in caught:
        if drop is not None and drop in str(warning.message):
            continue
        warnings.warn(warning.message, warning.category, stacklevel=stacklevel)
    return result


def _check_sampler_options(name: str, sampler_options: dict | None) -> dict:
    """``sampler_options`` must be keyword arguments of the sampler's factory."""
    import inspect

    options = dict(sampler_options or {})
    accepted = {
        parameter.name
        for parameter in inspect.signature(SAMPLER_FAMILIES[name].factory).parameters.values()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.name != "mask"
    }
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(
            f"sampler_options {unknown} are not options of {name}; expected some of "
            f"{sorted(accepted)} (step_size, nbeta and localization are estimate_llc arguments)"
        )
    return options
