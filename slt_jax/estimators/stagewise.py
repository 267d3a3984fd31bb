r"""Stagewise influence: the Bayesian influence function at every checkpoint of a training run.

For checkpoints :math:`w^*_1, \dots, w^*_K` (e.g. from :func:`slt_jax.training.train`),

.. math::

    \mathrm{BIF}_t(z_i, x_j) = -\beta\,\operatorname{Cov}_{p_t}\big(\ell_i(w), \ell_j(w)\big),
    \qquad p_t(w) \propto e^{-n\beta L_n(w) - \frac\gamma2\lVert w - w^*_t\rVert^2}

(arXiv 2510.12071; docs/mathematics.md §6): the influence of training example :math:`i` on
query :math:`j` as the model develops. It changes sign and peaks where the model passes a
developmental transition, where the posterior localized at :math:`w^*_t` feels the next stage.

:func:`bif_over_checkpoints` runs :func:`slt_jax.estimate_bif`'s policy at every checkpoint
(calibrated SGHMC per checkpoint, :math:`n\beta = n`, :math:`\gamma = 1`, full batch when
:math:`n \le 500`, burn-in, draws continued until the BIF is resolved) as **one** compiled
program: the checkpoints' chains are stacked along the chain axis of
:func:`slt_jax.sample`'s block program (as :func:`slt_jax.llc_over_checkpoints` stacks its
cells), so checkpoints and their calibrated hyperparameters are data, and the BIF of each
checkpoint is streamed by :func:`slt_jax.bif_accumulator` ``(return_mcse=True)`` vmapped over
the checkpoints (memory independent of the number of draws). Checkpoint :math:`t` uses the
keys ``estimate_bif(..., key=fold_in(key, t))`` would use, so with fixed draws each slice is
that call's BIF.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from slt_jax._checks import check_int, check_key, check_same_structure
from slt_jax.accumulators import DEFAULT_BATCH_SIZE as MCSE_BATCH_SIZE
from slt_jax.accumulators import cell_state, linear_trend, per_cell
from slt_jax.calibration import DEFAULT_SAFETY_FACTOR
from slt_jax.diagnostics import shared_drift
from slt_jax.estimators.estimate import _calibrated_setup
from slt_jax.estimators.influence import (
    DEFAULT_MAX_DRAWS,
    DEFAULT_RELATIVE_MCSE,
    INITIAL_DRAWS,
    QUERY_STREAM,
    TRAIN_STREAM,
    _EXTENSION_MARGIN,
    _MIN_EXTENSION,
    _batch_reason,
    _bif_with_error_bars,
    _check_beta,
    _checked_bif_options,
    _default_beta,
    _nbeta_reason,
    _relative_mcse,
    _with_penalty,
)
from slt_jax.estimators.sweep import (
    LLCSweepResult,
    _Cell,
    _cell_result,
    _checkpoint_list,
    _CellTrace,
    _per_cell_hyperparameters,
    _retry_failed_cells,
    _stack,
    _sweep_result,
    _warn_once,
)
from slt_jax.samplers import Sampler
from slt_jax.sampling import (
    ChainState,
    SampleOptions,
    _prepare,
    _progress_meter,
    _run,
    num_examples,
)
from slt_jax.training import TrainResult

PyTree = Any

__all__ = ["StagewiseBIFResult", "bif_over_checkpoints"]


class StagewiseBIFResult(NamedTuple):
    """What :func:`bif_over_checkpoints` returns.

    Attributes:
      bif: ``(checkpoints, n, q)`` (``(checkpoints, n, T, q, T')`` per token):
        :math:`\\mathrm{BIF}_t = -\\beta\\operatorname{Cov}_{p_t}(\\ell_i, \\ell_j)`.
      mcse: the batch-means Monte Carlo standard error of every entry (same shape).
      llc: an :class:`slt_jax.LLCSweepResult` (``(checkpoints, 1)`` arrays): the LLC of each
        checkpoint from the same draws, at :math:`n\\beta = n`.
      steps: ``(checkpoints,)`` training steps (a ``TrainResult``'s ``steps``; else
        ``arange``).
      hyperparameters: the policy, ``beta``, per-checkpoint sampler hyperparameters as
        ``(checkpoints,)`` arrays, the draws and why, the relative MCSE reached per
        checkpoint, the compiled runs, the wall time.
    """

    bif: np.ndarray
    mcse: np.ndarray
    llc: LLCSweepResult
    steps: np.ndarray
    hyperparameters: dict


# ----------------------------------------------------------------------------------------------
# one accumulator per checkpoint inside one program


# ----------------------------------------------------------------------------------------------
# runs


class _Group(NamedTuple):
    cells: list          # checkpoint index of each slot (padded by repeating the last)
    prepared: Any        # the _Prepared of this group (its state, keys, center)
    traces: list         # the run and its continuations


class _Runs:
    """Groups of checkpoints through the one block program; continuations of all groups; the
    interface :func:`slt_jax.estimators.sweep._retry_failed_cells` drives (``samplers``,
    ``labels``, ``run(cells) -> {cell: LLCResult}``)."""

    def __init__(self, prepared, checkpoint_list, samplers, chain_keys, init_losses, nbeta,
                 cells_per_run, meter):
        self.prepared, self.checkpoint_list, self.samplers = prepared, checkpoint_list, samplers
        self.chain_keys, self.init_losses, self.nbeta = chain_keys, init_losses, nbeta
        self.cells_per_run, self.meter = cells_per_run, meter
        self.labels, self.caught, self.num_runs = ("all",), [], 0
        self.groups, self.where = [], {}  # where[checkpoint] = (group index, slot)

    def run(self, cells) -> dict:
        for first in range(0, len(cells), self.cells_per_run):
            group = [cell.checkpoint for cell in cells[first:first + self.cells_per_run]]
            padded = group + [group[-1]] * (self.cells_per_run - len(group))
            prepared = self._prepared_group(padded)
            self.groups.append(_Group(padded, prepared, [_run(prepared, self.meter)]))
            self.num_runs += 1
            for slot, checkpoint in enumerate(group):
                self.where[checkpoint] = (len(self.groups) - 1, slot)
        return {cell: self.llc(cell.checkpoint) for cell in cells}

    def _prepared_group(self, padded):
        chains = self.prepared.options.num_chains // self.cells_per_run
        cells = [_Cell(checkpoint, 0) for checkpoint in padded]
        states = [self.samplers[cell].init(self.checkpoint_list[cell.checkpoint])
                  for cell in cells]
        state = ChainState(
            params=_stack([self.checkpoint_list[c] for c in padded], chains),
            sampler_state=_stack(states, chains),
            step=np.zeros((), np.int32),
            first_nonfinite_step=np.full((self.prepared.options.num_chains,), -1, np.int32),
        )
        keys = jnp.concatenate([self.chain_keys[c] for c in padded])
        center = self.checkpoint_list[padded[0]] if len(set(padded)) == 1 else self.prepared.center
        return self.prepared._replace(state=state, chain_keys=keys, center=center)

    def extend(self, num_draws: int) -> None:
        """Continue every group that holds a live checkpoint by ``num_draws`` draws (same
        chains, same keys, accumulators resumed: one long run)."""
        live = {group for group, _ in self.where.values()}
        for index in sorted(live):
            group = self.groups[index]
            last = group.traces[-1]
            prepared = group.prepared._replace(
                state=last.state, accumulator_states=last.accumulators,
                options=group.prepared.options._replace(num_draws=num_draws, num_burnin=0),
            )
            group.traces.append(_run(prepared, self.meter))

    def _slot(self, checkpoint):
        group, slot = self.where[checkpoint]
        return self.groups[group], slot

    def per_chain(self, checkpoint, array):
        chains = self.prepared.options.num_chains // self.cells_per_run
        group, slot = self._slot(checkpoint)
        return np.asarray(array)[slot * chains:(slot + 1) * chains]

    def accumulator(self, checkpoint, name):
        group, slot = self._slot(checkpoint)
        return cell_state(group.traces[-1].accumulators[name], slot)

    def num_draws(self, checkpoint) -> int:
        group, _ = self._slot(checkpoint)
        return sum(int(trace.loss.shape[1]) for trace in group.traces)

    def llc(self, checkpoint):
        group, _ = self._slot(checkpoint)
        loss = np.concatenate([self.per_chain(checkpoint, t.loss) for t in group.traces], 1)
        single = len(set(group.cells)) == 1
        center = (np.concatenate([self.per_chain(checkpoint, t.center_loss)
                                  for t in group.traces], 1) if single else None)
        first = self.per_chain(checkpoint, group.traces[-1].first_nonfinite_step)
        return _cell_result(_CellTrace(loss, center, first, {}), self.nbeta,
                            self.init_losses[checkpoint], self.caught, _Cell(checkpoint, 0),
                            "all")


# ----------------------------------------------------------------------------------------------
# the policy per checkpoint


def _setups(sampled_loss, checkpoint_list, sampled_data, key, sampler, options, caught):
    """Each checkpoint's :func:`_calibrated_setup` (estimate_bif's arguments, its key
    ``fold_in(key, t)``); the calibration's warnings gathered per checkpoint."""
    setups = []
    for index, params in enumerate(checkpoint_list):
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, Jupyter
            setups.append(_calibrated_setup(sampled_loss, params, sampled_data,
                                            key=jax.random.fold_in(key, index), sampler=sampler,
                                            **options))
        caught.extend((_Cell(index, 0), "all", record) for record in records)
    kinds = {(setup.sampler.name, setup.sampler.static) for setup in setups}
    if len(kinds) > 1:  # one program runs every checkpoint: one update rule
        raise ValueError(f"the checkpoints' samplers differ in kind or static options: "
                         f"{sorted(kinds)}")
    return setups


def _finalized(runs, finalize, num_checkpoints):
    pairs = [finalize(runs.accumulator(c, "bif")) for c in range(num_checkpoints)]
    values = np.stack([np.asarray(v) for v, _ in pairs])
    mcse = np.stack([np.asarray(m) for _, m in pairs])
    return values, mcse


def _draw_until_resolved(runs, finalize, num_checkpoints, first_draws, target, max_draws):
    """One shared draw count: continue every checkpoint's chains until the BIF of *every*
    checkpoint has relative MCSE ≤ ``target`` (estimate_bif's rule), at most ``max_draws``
    per chain. Returns ``(bif, mcse, relative MCSE per checkpoint, draws, continuations)``."""
    values, mcse = _finalized(runs, finalize, num_checkpoints)
    reached = np.asarray([_relative_mcse(v, m) for v, m in zip(values, mcse)])
    total, continuations = first_draws, 0
    while np.max(reached) > target and total < max_draws:
        wanted = total * (_EXTENSION_MARGIN * (np.max(reached) / target) ** 2 - 1)
        more = min(max_draws - total,
                   _MIN_EXTENSION * max(1, math.ceil(wanted / _MIN_EXTENSION)))
        runs.extend(more)
        total, continuations = total + more, continuations + 1
        values, mcse = _finalized(runs, finalize, num_checkpoints)
        reached = np.asarray([_relative_mcse(v, m) for v, m in zip(values, mcse)])
    return values, mcse, reached, total, continuations


def _steps(checkpoints, count: int) -> np.ndarray:
    if isinstance(checkpoints, TrainResult):
        return np.asarray(checkpoints.steps)
    return np.arange(count)


def _drift_fractions(runs, num_checkpoints, caught):
    """:func:`slt_jax.diagnostics.shared_drift` per checkpoint (its warnings gathered)."""
    fractions = []
    for checkpoint in range(num_checkpoints):
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            report = shared_drift(runs.accumulator(checkpoint, "train_trend"),
                                  runs.accumulator(checkpoint, "query_trend"))
        caught.extend((_Cell(checkpoint, 0), "all", record) for record in records)
        fractions.append(float(report.dominated_fraction))
    return np.asarray(fractions)


def bif_over_checkpoints(
    loss_fn: Callable[[PyTree, PyTree], jax.Array],
    checkpoints: PyTree,
    train_data: PyTree,
    query_data: PyTree,
    *,
    key: jax.Array,
    sampler: str | Sampler | None = None,
    beta: float | None = None,
    nbeta: float | None = None,
    localization: float | None = None,
    step_size: float | None = None,
    sampler_options: dict | None = None,
    regularization: float = 0.0,
    num_chains: int = 4,
    num_draws: int | None = None,
    max_draws: int = DEFAULT_MAX_DRAWS,
    relative_mcse_target: float = DEFAULT_RELATIVE_MCSE,
    num_burnin: int | None = None,
    batch_size: int | None | str = "auto",
    safety_factor: float = DEFAULT_SAFETY_FACTOR,
    max_retries: int = 3,
    cells_per_run: int | None = None,
    progress: bool = False,
) -> StagewiseBIFResult:
    r"""The Bayesian influence function at every checkpoint, in one compiled program.

    .. math::

        \mathrm{BIF}_t(z_i, x_j) = -\beta\,\operatorname{Cov}_{p_t}(\ell_i, \ell_j),\qquad
        p_t(w) \propto e^{-n\beta [L_n(w) + \frac\lambda2\lVert w\rVert^2]
            - \frac\gamma2\lVert w - w^*_t\rVert^2}

    (stagewise influence, arXiv 2510.12071; docs/mathematics.md §6). Each checkpoint gets
    :func:`slt_jax.estimate_bif`'s policy: the sampler calibrated *at that checkpoint*
    (SGHMC, step from its top Hessian eigenvalue), :math:`n\beta = n` (:math:`\beta = 1`),
    :math:`\gamma = 1`, full batch when :math:`n \le 500` (else 500), 1024 draws after 512
    burn-in steps, chains whose draws diverge or run away repeated at half the step size, then
    **one shared draw count**: all checkpoints' chains are continued together until every
    checkpoint's BIF has relative MCSE ≤ ``relative_mcse_target`` (at most ``max_draws``).
    Unlike ``estimate_bif`` there is no end-of-run gradient-noise rerun at a larger batch
    (it would change the program's batch size): with minibatches, pass a ``batch_size``.

    All checkpoints (same shapes) are stacked along the chain axis of one run of
    :func:`slt_jax.sample`'s block program, their calibrated hyperparameters in the sampler
    states (data), so the sweep compiles the block program once; the BIF and its error bars
    are streamed per checkpoint (:func:`slt_jax.bif_accumulator` ``(return_mcse=True)``
    ``vmap``-ed over checkpoints): memory ``O(K (C (n + q) + C n q))``, whatever the draws.
    Checkpoint :math:`t` is run with the keys of
    ``estimate_bif(loss_fn, checkpoint_t, ..., key=jax.random.fold_in(key, t))``: with
    ``num_draws`` fixed (and no retry) each slice ``result.bif[t]`` is that call's BIF.

    Args:
      loss_fn: ``loss_fn(params, batch) -> (b,)`` or ``(b, T)`` per-example (per-token) losses.
      checkpoints: a :class:`slt_jax.training.TrainResult` (its ``steps`` become
        ``result.steps``) or a parameter pytree with a leading checkpoint axis (converted by
        :func:`slt_jax.adapters.as_params` for adapters' ``loss_fn``).
      train_data: the training set (sampled on; the BIF's rows), leading axis ``n``.
      query_data: the query set (the BIF's columns), leading axis ``q``.
      key: a ``jax.random.key``; checkpoint ``t`` uses ``fold_in(key, t)``.
      sampler, beta, nbeta, localization, step_size, sampler_options, regularization,
        num_chains, num_burnin, batch_size, safety_factor, max_retries, max_draws,
        relative_mcse_target: as in :func:`slt_jax.estimate_bif` (per checkpoint).
      num_draws: ``None``: draw until resolved (above); an int: exactly that many per chain.
      cells_per_run: checkpoints stacked in one run (default all; fewer saves memory, the
        last run is padded so every run has the same chain count: still one program).
      progress: progress bars for the calibrations and the runs.

    Returns:
      :class:`StagewiseBIFResult` ``(bif, mcse, llc, steps, hyperparameters)``.

    Example (seconds, so not a doctest; ``tests/test_stagewise.py``)::

        run = slt.training.train(params, loss_fn, data, optax.sgd(0.01), key=key,
                                 num_steps=2000, batch_size=None,
                                 checkpoint_steps=np.arange(0, 2001, 100))
        result = slt.bif_over_checkpoints(loss_fn, run, data, data, key=key)
        result.bif.shape  # (21, n, n)
    """
    start = time.perf_counter()
    key = check_key(key)
    checkpoint_list = _checkpoint_list(loss_fn, checkpoints)
    count = len(checkpoint_list)
    check_same_structure(train_data, query_data, "query_data", "train_data")
    beta = None if beta is None else _check_beta(beta)
    regularization, target, max_draws, num_draws, n = _checked_bif_options(
        train_data, query_data, regularization, relative_mcse_target, max_draws, num_draws)
    num_chains = check_int("num_chains", num_chains, 1)
    cells_per_run = count if cells_per_run is None else min(
        count, check_int("cells_per_run", cells_per_run, 1))
    ready = isinstance(sampler, Sampler)
    sampled_loss, sampled_data, train_stream, query_stream = _with_penalty(
        loss_fn, train_data, query_data, regularization)
    adaptive = num_draws is None
    first_draws = min(INITIAL_DRAWS, max_draws) if adaptive else num_draws
    caught = []
    setups = _setups(sampled_loss, checkpoint_list, sampled_data, key, sampler, dict(
        nbeta=nbeta if ready or nbeta is not None else float(n),
        localization=1.0 if localization is None else localization, step_size=step_size,
        sampler_options=sampler_options, safety_factor=safety_factor, num_chains=num_chains,
        num_draws=first_draws, num_burnin=num_burnin, batch_size=batch_size, init_loss=None,
        progress=progress), caught)
    beta, beta_reason = _default_beta(beta, setups[0], loss_fn, checkpoint_list[0], train_data)
    accumulator, finalize, mcse_method = _bif_with_error_bars(beta, False, "global")
    streaming = {
        "bif": per_cell(accumulator, cells_per_run, finalize_cells=False),
        "train_trend": per_cell(linear_trend(TRAIN_STREAM, batch_size=MCSE_BATCH_SIZE),
                                cells_per_run, finalize_cells=False),
        "query_trend": per_cell(linear_trend(QUERY_STREAM, batch_size=MCSE_BATCH_SIZE),
                                cells_per_run, finalize_cells=False),
    }
    lengths = setups[0].lengths
    prepared = _prepare(
        sampled_loss, checkpoint_list[0], sampled_data, setups[0].sampler, key=key,
        options=SampleOptions(num_chains=cells_per_run * num_chains, num_draws=first_draws,
                              num_burnin=lengths["num_burnin"],
                              batch_size=lengths["batch_size"], store=("loss",)),
        query_data={TRAIN_STREAM: train_stream, QUERY_STREAM: query_stream},
        accumulators=streaming,
    )
    samplers = {_Cell(c, 0): setup.sampler for c, setup in enumerate(setups)}
    chain_keys = [jax.random.split(setup.sampling_key, num_chains) for setup in setups]
    runs = _Runs(prepared, checkpoint_list, samplers, chain_keys,
                 [setup.init_loss for setup in setups], setups[0].nbeta, cells_per_run,
                 _progress_meter(progress))
    cells = [_Cell(c, 0) for c in range(count)]
    results = runs.run(cells)
    calibrations = {cell: setups[cell.checkpoint].calibration for cell in cells}
    halvings = _retry_failed_cells(runs, results, cells, calibrations, caught,
                                   check_int("max_retries", max_retries, 0))
    values, mcse, reached, total, continuations = _draw_until_resolved(
        runs, finalize, count, first_draws, target if adaptive else float("inf"), max_draws)
    runs.caught = []  # the LLCs of the whole run (continuations joined) replace the first's
    results = {cell: runs.llc(cell.checkpoint) for cell in cells}
    drift = _drift_fractions(runs, count, caught)
    caught.extend(runs.caught)
    _warn_once(caught, count)
    if adaptive and np.max(reached) > target:
        warnings.warn(
            f"bif_over_checkpoints: after {total} draws per chain the BIF's relative MCSE is "
            f"{np.max(reached):.3g} at checkpoint {int(np.argmax(reached))} (target "
            f"{target:g}): entries with |bif| < 2·mcse are not resolved. Raise max_draws or "
            "num_chains.", RuntimeWarning, stacklevel=2)
    hyperparameters = _hyperparameters(
        ready=ready, setups=setups, samplers=samplers, count=count, beta=beta,
        beta_reason=beta_reason, nbeta_reason=_nbeta_reason(sampler, nbeta, n),
        regularization=regularization, halvings=[halvings[cell] for cell in cells],
        num_chains=num_chains, total=total, first_draws=first_draws,
        continuations=continuations, num_draws=num_draws, adaptive=adaptive, target=target,
        max_draws=max_draws, reached=reached, mcse_method=mcse_method,
        batch_reason=_batch_reason(batch_size, n), drift=drift, cells_per_run=cells_per_run,
        runs=runs, n=n, q=num_examples(query_data), start=start)
    llc_result = _sweep_result(results, count, ("all",), np.asarray(runs.init_losses),
                               hyperparameters)
    return StagewiseBIFResult(values, mcse, llc_result, _steps(checkpoints, count),
                              hyperparameters)


def _hyperparameters(*, ready, setups, samplers, count, beta, beta_reason, nbeta_reason,
                     regularization, halvings, num_chains, total, first_draws, continuations,
                     num_draws, adaptive, target, max_draws, reached, mcse_method, batch_reason,
                     drift, cells_per_run, runs, n, q, start) -> dict:
    """``result.hyperparameters``: every choice, per-checkpoint values as ``(K,)`` arrays."""
    lengths = setups[0].lengths
    per_checkpoint = {name: values[:, 0] for name, values in
                      _per_cell_hyperparameters(samplers, count, 1).items() if name != "nbeta"}
    return dict(
        policy="estimate_bif per checkpoint" if not ready else "fixed sampler",
        sampler=setups[0].sampler.name, **per_checkpoint,
        beta=beta, beta_reason=beta_reason, nbeta=setups[0].nbeta, nbeta_reason=nbeta_reason,
        regularization=regularization,
        calibration=tuple(setup.calibration for setup in setups),
        step_size_halvings=np.asarray(halvings, np.int64),
        num_chains=num_chains, num_draws=total, initial_num_draws=first_draws,
        num_burnin=lengths["num_burnin"], continuations=continuations,
        draws_reason=(f"given: num_draws={num_draws}" if not adaptive else
                      f"one shared draw count, continued until every checkpoint's relative "
                      f"MCSE ≤ {target:g} (max {max_draws})"),
        relative_mcse=reached, relative_mcse_target=target if adaptive else None,
        mcse_method=mcse_method, batch_size=lengths["batch_size"],
        batch_size_reason=batch_reason, gradient_noise_check="not run",
        shared_drift_dominated_fraction=drift, cells_per_run=cells_per_run,
        num_runs=runs.num_runs + sum(len(group.traces) - 1 for group in runs.groups),
        num_examples=n, num_query_examples=q, wall_time_seconds=time.perf_counter() - start,
    )
