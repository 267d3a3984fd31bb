"""``estimate_llc``: one call, calibrated defaults, an LLC with its error bars."""

from __future__ import annotations

import time
import warnings
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from slt_jax.calibration import DEFAULT_SAFETY_FACTOR, calibrate_step_size
from slt_jax.estimators.llc import LLCResult, llc
from slt_jax.samplers import SAMPLER_FAMILIES, Sampler, default_nbeta
from slt_jax.sampling import evaluate_loss, num_examples, sample

PyTree = Any


DEFAULT_BATCH_SIZE = 500
DEFAULT_SAMPLER = "sghmc"


def estimate_llc(
    loss_fn: Callable[[PyTree, PyTree], jax.Array],
    params: PyTree,
    data: PyTree,
    *,
    key: jax.Array,
    sampler: str | Sampler | None = None,
    nbeta: float | None = None,
    localization: float = 1.0,
    step_size: float | None = None,
    sampler_options: dict | None = None,
    num_chains: int = 4,
    num_draws: int = 4000,
    num_burnin: int | None = None,
    steps_per_draw: int = 1,
    batch_size: int | None | str = "auto",
    init_loss: float | None = None,
    safety_factor: float = DEFAULT_SAFETY_FACTOR,
    max_retries: int = 3,
    progress: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    chain_axis: str | None = "chains",
    data_axis: str | None = None,
) -> LLCResult:
    r"""Estimate the local learning coefficient of ``loss_fn`` at ``params`` with defaults.

    .. math::

        \hat\lambda(w^*) = n\beta\,\big(\mathbb E_{p}[L_n(w)] - L_n(w^*)\big),\qquad
        p(w) \propto e^{-n\beta L_n(w) - \frac{\gamma}{2}\lVert w - w^*\rVert^2}

    (Lau et al. 2023, arXiv 2308.12108). Defaults: SGHMC with friction 0.1,
    :math:`n\beta = n/\log n`, :math:`\gamma = 1`, batch size ``min(n, 500)``, 4 chains × 4000
    draws after ``num_draws // 2`` burn-in steps, and a step size calibrated from the top Hessian
    eigenvalue at :math:`w^*` and where pilot chains go
    (:func:`slt_jax.calibration.calibrate_step_size`, safety factor 0.1).

    Why SGHMC: at the same stationary-variance bias (SGHMC with learning rate :math:`\eta` and
    friction :math:`\alpha` has SGLD's bias at :math:`\epsilon = 2\eta/(2-\alpha)`), its
    overdamped dynamics relax ill-conditioned directions about
    :math:`(2-\alpha)/\alpha \approx 2/\alpha` times faster.
    On the DLN suite (``benchmarks/dln_suite.py``, 8 instances up to 10k parameters) it gives a
    median |relative error| of 2.4% and a maximum of 10.6%, where SGLD at the same bias gives 27%
    (an ill-conditioned depth-4 network whose soft directions relax over ~7,000 SGLD steps;
    README, ``docs/calibration_findings.md``). If a chain diverges with a
    calibrated step size, the step size is halved and the run repeated (``max_retries`` times);
    every choice is recorded in ``result.hyperparameters``.

    Args:
      sampler: ``None``/``"sghmc"``, another sampler name (``"sgld"``, ``"rmsprop_sgld"``,
        ``"adam_sgld"``, ``"sgnht"``), or a ready sampler from :mod:`slt_jax.samplers` (then its
        own hyperparameters are used and nothing is calibrated).
      nbeta, localization, step_size: override the defaults / calibration.
      sampler_options: other keyword arguments of the named sampler, e.g.
        ``{"friction": 0.3}`` for SGHMC (the calibration then uses that friction instead of
        choosing one) or ``{"decay": 0.999}`` for RMSProp-SGLD.
      batch_size: ``"auto"`` for ``min(n, 500)``, ``None`` for full batch, or an int.
      init_loss: :math:`L_n(w^*)`; computed on the full data in chunks if not given.
      mesh, chain_axis, data_axis: shard chains / minibatches over devices (see
        :func:`slt_jax.sample`).
    """
    start = time.perf_counter()
    setup = _calibrated_setup(
        loss_fn, params, data, key=key, sampler=sampler, nbeta=nbeta, localization=localization,
        step_size=step_size, sampler_options=sampler_options, safety_factor=safety_factor,
        num_chains=num_chains, num_draws=num_draws, num_burnin=num_burnin,
        batch_size=batch_size, init_loss=init_loss,
    )
    run = dict(setup.lengths, steps_per_draw=steps_per_draw, progress=progress, mesh=mesh,
               chain_axis=chain_axis, data_axis=data_axis)
    trace, chosen, retries = _sample_with_retries(
        loss_fn, params, data, setup.sampler, setup.sampling_key, run,
        max_retries if setup.calibration else 0,
    )
    result = _warnings_at_caller(llc, trace, nbeta=setup.nbeta, init_loss=setup.init_loss)
    hyperparameters = run_hyperparameters(
        setup, chosen, retries, start, steps_per_draw=steps_per_draw
    )
    return result._replace(hyperparameters=hyperparameters)


class CalibratedSetup(NamedTuple):
    """What :func:`_calibrated_setup` chose for a run (shared by ``estimate_llc`` and
    ``estimate_bif``)."""

    sampler: Sampler
    nbeta: float
    calibration: Any
    init_loss: float
    sampling_key: jax.Array
    num_examples: int
    lengths: dict  # num_chains, num_draws, num_burnin, batch_size


def _calibrated_setup(loss_fn, params, data, *, key, sampler, nbeta, localization, step_size,
                      sampler_options, safety_factor, num_chains, num_draws, num_burnin,
                      batch_size, init_loss) -> CalibratedSetup:
    """Defaults (batch size, burn-in, L_n(w*)) and the calibrated sampler; the calibration's
    warnings are re-issued at the caller of ``estimate_llc`` / ``estimate_bif``."""
    n = num_examples(data)
    batch_size = min(n, DEFAULT_BATCH_SIZE) if batch_size == "auto" else batch_size
    num_burnin = num_draws // 2 if num_burnin is None else num_burnin
    calibration_key, sampling_key = jax.random.split(key)
    if init_loss is None:
        init_loss = float(evaluate_loss(loss_fn, params, data))
    chosen, nbeta, calibration = _warnings_at_caller(
        _choose_sampler,
        loss_fn, params, data, sampler, key=calibration_key, nbeta=nbeta,
        localization=localization, step_size=step_size, sampler_options=sampler_options,
        safety_factor=safety_factor, init_loss=init_loss, num_chains=num_chains,
        batch_size=batch_size, stacklevel=4,
    )
    lengths = dict(num_chains=num_chains, num_draws=num_draws, num_burnin=num_burnin,
                   batch_size=batch_size)
    return CalibratedSetup(chosen, nbeta, calibration, init_loss, sampling_key, n, lengths)


def run_hyperparameters(setup: CalibratedSetup, chosen, retries, start, **extra) -> dict:
    """Everything that produced a run, for ``result.hyperparameters``."""
    return {
        "sampler": chosen.name,
        **{k: float(v) for k, v in chosen.hyperparameters.items()},
        **setup.lengths,
        **extra,
        "num_examples": setup.num_examples,
        "step_size_halvings": retries,
        "calibration": setup.calibration,
        "wall_time_seconds": time.perf_counter() - start,
    }


def _choose_sampler(loss_fn, params, data, sampler, *, key, nbeta, localization, step_size,
                    sampler_options, safety_factor, init_loss, num_chains, batch_size):
    """The sampler to run, its nβ and the calibration (``None`` for a ready sampler)."""
    if isinstance(sampler, Sampler):
        if nbeta is not None or step_size is not None or sampler_options:
            raise TypeError(
                "pass nbeta/step_size/sampler_options either to the sampler or to estimate_llc, "
                "not both"
            )
        return sampler, float(sampler.hyperparameters["nbeta"]), None
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
        return family.factory(step_size, nbeta, localization, **user_options), nbeta, None
    calibration = calibrate_step_size(
        loss_fn, params, data, key=key, nbeta=nbeta, localization=localization,
        sampler_name=name, safety_factor=safety_factor, num_chains=num_chains,
        batch_size=batch_size, init_loss=init_loss,
        **{k: user_options[k] for k in ("friction", "stability") if k in user_options},
    )
    options = {**dict(calibration.options), **user_options}
    return family.factory(calibration.step_size, nbeta, localization, **options), nbeta, calibration


def _sample_with_retries(loss_fn, params, data, chosen, key, run, max_retries):
    """Sample; if a chain diverges with a calibrated step size, halve it and run again."""
    family = SAMPLER_FAMILIES.get(chosen.name)
    retries = 0
    while True:
        trace = sample(loss_fn, params, data, chosen, key=key, **run)
        if not np.any(np.asarray(trace.diverged)) or retries >= max_retries or family is None:
            return trace, chosen, retries
        retries += 1
        changes = family.rescaled(chosen.hyperparameters, 0.5)
        warnings.warn(
            f"{int(np.sum(np.asarray(trace.diverged)))} chain(s) diverged at step_size="
            f"{float(chosen.hyperparameters['step_size']):.3g}; retrying with "
            f"{changes['step_size']:.3g}",
            RuntimeWarning,
            stacklevel=3,
        )
        chosen = chosen.replace(**changes)


def _warnings_at_caller(function, *args, stacklevel=3, **kwargs):
    """``function(*args, **kwargs)`` with its warnings re-issued ``stacklevel`` frames up (the
    caller of ``estimate_llc``: they point at the user's line, not inside slt_jax)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = function(*args, **kwargs)
    for warning in caught:
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
