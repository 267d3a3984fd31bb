r"""LLC curves over training: every checkpoint × component in one compiled program.

For checkpoints :math:`w^*_1, \dots, w^*_C` (a stacked pytree, e.g. from
:func:`slt_jax.training.train`) and components :math:`V_1, \dots, V_K` (boolean masks: one
per attention head, say), :func:`llc_over_checkpoints` estimates every weight-refined LLC
(arXiv 2410.02984; docs/mathematics.md §2)

.. math::

    \hat\lambda(w^*_c; V_k) = n\beta\,\big(\mathbb E_{p_{c,k}}[L_n(w)] - L_n(w^*_c)\big),\qquad
    p_{c,k}(w) \propto e^{-n\beta L_n(w) - \frac\gamma2\lVert w - w^*_c\rVert^2}
    \ \text{on}\ \{w : w_{\bar V_k} = w^*_{c,\bar V_k}\},

with the policy of :func:`slt_jax.estimate_llc` (one calibrated-run policy): SGHMC whose step
size and friction are calibrated per cell, :math:`n\beta = n/\log n`, :math:`\gamma = 1`,
batch 500 (full when ``n ≤ 500``), so a cell and ``estimate_llc(loss_fn, checkpoint, data, mask=V_k)``
estimate the same number. ``sampler="refined_llc_paper"`` keeps the fixed setting of arXiv
2410.02984 (SGLD, step :math:`10^{-3}`, :math:`n\beta = 30`, :math:`\gamma = 200`, 4 chains ×
200 draws, batch 32), whose values are smaller (smaller :math:`n\beta`, tighter localization).

How it stays one program: a cell ``(c, k)`` is ``num_chains`` chains whose parameters start at
checkpoint ``c`` and whose sampler state (center :math:`w^*_c`, hyperparameters — the cell's
calibrated step size and friction included —, mask :math:`V_k`) comes from the cell's
``sampler.init``; ``cells_per_run`` cells are stacked along the chain
axis of :func:`slt_jax.sample`'s block program, so checkpoints and masks are *data* of that
program. Every run has the same number of chains (the last run is padded), so the whole sweep
compiles the block program once, and a second sweep with other checkpoints, masks or key
compiles nothing.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from slt_jax._checks import (
    check_int,
    check_key,
    check_mask_samples_something,
    check_run_lengths,
)
from slt_jax.adapters import as_params
from slt_jax.calibration import DEFAULT_SAFETY_FACTOR
from slt_jax.estimators.estimate import (  # noqa: F401 (re-exported names)
    DEFAULT_BATCH_SIZE,
    DEFAULT_NUM_DRAWS,
    PAPER_LENGTHS,
    PAPER_SAMPLER,
    _calibrated_setup,
    _masked_sampler,
    check_paper_arguments,
    refined_llc_sampler,
)
from slt_jax.estimators.llc import llc
from slt_jax.masks import trainable
from slt_jax.samplers import SAMPLER_FAMILIES, Sampler
from slt_jax.sampling import (
    ChainState,
    SampleOptions,
    _prepare,
    _progress_meter,
    _run,
    evaluate_loss,
    num_examples,
)
from slt_jax.training import TrainResult

PyTree = Any

__all__ = ["LLCSweepResult", "llc_over_checkpoints", "refined_llc_sampler"]



class LLCSweepResult(NamedTuple):
    """LLCs of every checkpoint × component.

    Attributes:
      mean, std, mcse, rhat, ess: ``(num_checkpoints, num_components)`` arrays (see
        :class:`slt_jax.LLCResult`).
      init_loss: ``(num_checkpoints,)`` :math:`L_n(w^*_c)` on all of ``data``.
      labels: the component labels (``"all"`` for the whole model).
      results: ``results[c][k]``, the :class:`slt_jax.LLCResult` of each cell.
      hyperparameters: the sampler, its hyperparameters, run lengths, ``cells_per_run``,
        ``num_runs`` and ``wall_time_seconds``.
    """

    mean: np.ndarray
    std: np.ndarray
    mcse: np.ndarray
    rhat: np.ndarray
    ess: np.ndarray
    init_loss: np.ndarray
    labels: tuple
    results: tuple
    hyperparameters: dict


class _Cell(NamedTuple):
    checkpoint: int
    component: int


def _components(masks, params) -> tuple[tuple, list]:
    """``(labels, masks)`` with ``None`` (whole model) turned into an all-True mask."""
    if masks is None:
        labels, masks = ("all",), [None]
    elif isinstance(masks, Mapping):
        labels, masks = tuple(masks), list(masks.values())
    elif isinstance(masks, Sequence):
        labels, masks = tuple(range(len(masks))), list(masks)
    else:
        raise TypeError(
            "masks must be None, a sequence of mask pytrees or a dict {label: mask}, got "
            f"{type(masks).__name__}"
        )
    if not masks:
        raise ValueError("masks must hold at least one component (None = the whole model)")
    everything = jax.tree.map(lambda _: np.ones((), bool), params)
    for mask in masks:  # as estimate_llc: a mask that samples nothing is an error, not LLC 0
        check_mask_samples_something(params, mask)
    return labels, [everything if mask is None else mask for mask in masks]


def _stack(trees, repeats: int):
    """Stack per-cell pytrees along a new leading axis, each repeated ``repeats`` times (on the
    host: nothing is compiled)."""
    return jax.tree.map(
        lambda *leaves: np.repeat(np.stack([np.asarray(x) for x in leaves]), repeats, axis=0),
        *trees,
    )


@functools.partial(jax.jit, static_argnames=("num_chains",))
def _cell_keys(key, cell_ids, *, num_chains):
    """Chain keys of the cells ``cell_ids``: ``split(fold_in(key, id), num_chains)`` each, so a
    cell's chains do not depend on how the cells are grouped into runs."""
    keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(key, i), num_chains))(cell_ids)
    return keys.reshape((-1,))


def _run_cells(prepared, cells, checkpoint_list, samplers, key, meter, num_components):
    """One run of the block program for a group of cells: ``(losses, center losses or None,
    first non-finite steps, the run's accumulators)``, losses shaped ``(cells, chains, draws)``.

    When every cell of the run shares one checkpoint, the driver also evaluates each minibatch
    at that checkpoint (its ``center``), for the paired estimator; runs mixing checkpoints use
    the plain one (the driver's center is one point for all chains).
    """
    trace, single = _run_cells_trace(prepared, cells, checkpoint_list, samplers, key, meter,
                                     num_components)
    num_chains = prepared.options.num_chains // len(cells)

    def per_cell(array):
        return np.asarray(array).reshape((len(cells), num_chains) + np.shape(array)[1:])

    center = getattr(trace, "center_loss", None)
    center = per_cell(center) if single and center is not None else None
    return (per_cell(trace.loss), center, per_cell(trace.first_nonfinite_step),
            trace.accumulators)


def _run_cells_trace(prepared, cells, checkpoint_list, samplers, key, meter, num_components):
    """The :class:`slt_jax.Trace` of one run of a group of cells (stacked along the chain
    axis, cell-major) and whether the run holds one checkpoint (then the driver's center is
    that checkpoint: the paired estimator)."""
    num_chains = prepared.options.num_chains // len(cells)
    states = [samplers[cell].init(checkpoint_list[cell.checkpoint]) for cell in cells]
    params = _stack([checkpoint_list[cell.checkpoint] for cell in cells], num_chains)
    state = ChainState(
        params=params,
        sampler_state=_stack(states, num_chains),
        step=np.zeros((), np.int32),
        first_nonfinite_step=np.full((prepared.options.num_chains,), -1, np.int32),
    )
    ids = np.asarray([_cell_id(c, num_components) for c in cells], np.int32)
    prepared = prepared._replace(state=state, chain_keys=_cell_keys(key, ids, num_chains=num_chains))
    single = len({cell.checkpoint for cell in cells}) == 1
    if single and "center" in prepared._fields:
        prepared = prepared._replace(center=checkpoint_list[cells[0].checkpoint])
    return _run(prepared, meter), single


class _CellTrace(NamedTuple):
    """What :func:`slt_jax.llc` reads from a trace, for one cell."""

    loss: np.ndarray
    center_loss: np.ndarray | None
    first_nonfinite_step: np.ndarray
    observables: dict


def _cell_result(trace: _CellTrace, nbeta, init_loss, caught, cell, label):
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        result = llc(trace, nbeta=nbeta, init_loss=init_loss)
    caught.extend((cell, label, record) for record in records)
    return result


def _warn_once(caught, total):
    """One warning per kind (non-stationary, negative, diverged) listing the cells it hit."""
    kinds = {}
    for cell, label, record in caught:
        text = str(record.message)
        kind = text.split(":")[0].split(" ")[0] if text else "warning"
        kinds.setdefault((record.category, kind), []).append((cell, label, text))
    for (category, _), hits in kinds.items():
        where = ", ".join(f"(checkpoint {c.checkpoint}, {label})" for c, label, _ in hits[:12])
        more = f" and {len(hits) - 12} more" if len(hits) > 12 else ""
        warnings.warn(
            f"{len(hits)} of {total} cells: {hits[0][2]} [cells: {where}{more}]", category,
            stacklevel=3,
        )


def _init_losses(loss_fn, checkpoint_list, data, init_loss):
    if init_loss is not None:
        values = np.asarray(init_loss, np.float64).reshape(-1)
        if values.shape != (len(checkpoint_list),):
            raise ValueError(
                f"init_loss must hold one value per checkpoint ({len(checkpoint_list)}), got "
                f"shape {np.shape(init_loss)}"
            )
        return values
    return np.asarray([float(evaluate_loss(loss_fn, p, data)) for p in checkpoint_list])


def _unstack(checkpoints) -> list:
    """The checkpoints as a list of parameter pytrees of host (NumPy) arrays: slicing them
    compiles nothing."""
    checkpoints = jax.tree.map(np.asarray, checkpoints)
    sizes = {leaf.shape[0] if leaf.ndim else None for leaf in jax.tree.leaves(checkpoints)}
    if not sizes:
        raise ValueError("checkpoints hold no arrays (expected a stacked parameter pytree)")
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            "checkpoints must be a stacked pytree whose leaves share a leading checkpoint axis; "
            f"got leading sizes {sorted(map(str, sizes))}"
        )
    count = sizes.pop()
    if count == 0:
        raise ValueError("checkpoints hold no checkpoint (their leading axis has length 0)")
    return [jax.tree.map(lambda leaf: leaf[i], checkpoints) for i in range(count)]


def _checkpoint_list(loss_fn, checkpoints) -> list:
    """Each checkpoint in the form ``loss_fn`` takes (:func:`slt_jax.adapters.as_params`): a
    ``TrainResult`` gives its ``checkpoints`` (with its ``rest``), an ``nnx.State`` becomes the
    adapter's parameter dict."""
    rest = None
    if isinstance(checkpoints, TrainResult):
        checkpoints, rest = checkpoints.checkpoints, checkpoints.rest
    return [as_params(loss_fn, checkpoint, rest=rest) for checkpoint in _unstack(checkpoints)]


def llc_over_checkpoints(
    loss_fn: Callable[[PyTree, PyTree], jax.Array],
    checkpoints: PyTree,
    data: PyTree,
    *,
    key: jax.Array,
    sampler: str | Sampler | None = None,
    masks: Sequence[PyTree | None] | Mapping[Any, PyTree | None] | None = None,
    nbeta: float | None = None,
    localization: float | None = None,
    step_size: float | None = None,
    sampler_options: dict | None = None,
    safety_factor: float = DEFAULT_SAFETY_FACTOR,
    num_chains: int = 4,
    num_draws: int | None = None,
    num_burnin: int | None = None,
    batch_size: int | None | str = "auto",
    cells_per_run: int | None = None,
    init_loss: Any = None,
    max_retries: int = 3,
    progress: bool = False,
) -> LLCSweepResult:
    r"""(Weight-refined) LLCs of every checkpoint × component with one compiled program.

    The default policy is :func:`slt_jax.estimate_llc`'s, cell by cell: SGHMC with its step size
    (and friction) calibrated at checkpoint :math:`c` in the subspace :math:`V_k`,
    :math:`n\beta = n/\log n`, :math:`\gamma = 1`, batch 500 (full when ``n ≤ 500``), 4 chains × 4000 draws
    after 2000 burn-in steps, cells whose chains diverge or run away repeated at half the step
    size; so a cell estimates what ``estimate_llc(loss_fn, checkpoint_c, data, mask=V_k)``
    estimates (``tests/test_sweep_policy.py`` checks that they agree within their error bars).
    The calibrated values differ per cell and are data of the one program (each cell's
    sampler state holds them); ``hyperparameters`` records them as ``(checkpoints,
    components)`` arrays.

    ``sampler="refined_llc_paper"`` is the fixed setting of arXiv 2410.02984
    (:func:`refined_llc_sampler`: SGLD, step 1e-3, :math:`n\beta = 30`, :math:`\gamma = 200`,
    4 chains × 200 draws after 100 burn-in steps, batch 32), the default before 2026-12. Its
    values are *not* comparable with ``estimate_llc``'s: :math:`\hat\lambda` grows with
    :math:`n\beta` and a localization :math:`\gamma = 200` confines the chains to a ball of
    radius about :math:`\sqrt{d/\gamma}`, so on a 4-parameter regression it read 0.12–0.25
    where ``estimate_llc`` read 2.16, on a transformer checkpoint 5.5 where it read 60. Use it
    to compare with that paper, whose curves are about the *shape* over training.

    Args:
      loss_fn: ``loss_fn(params, batch)`` per-example (per-token) losses (e.g. from
        ``slt.adapters.from_nnx``).
      checkpoints: what :func:`slt_jax.training.train` returns (the :class:`TrainResult`, or
        its ``checkpoints``) or any parameter pytree with a leading checkpoint axis. With an
        adapter's ``loss_fn`` an ``nnx.State`` is rearranged into the adapter's parameters
        (:func:`slt_jax.adapters.as_params`); pass the ``TrainResult`` itself when the model has
        non-``Param`` state (BatchNorm statistics: its ``rest``).
      data: the data the sampler's gradients and :math:`L_n(w^*)` use (pass :math:`q'` data for
        data-refined LLCs; both refinements combine).
      key: a ``jax.random.key``; cell ``(c, k)`` uses ``fold_in(key, c K + k)``.
      sampler: ``None``/``"sghmc"`` (calibrated, as ``estimate_llc``), another sampler name
        (calibrated), ``"refined_llc_paper"``, or a ready sampler from :mod:`slt_jax.samplers`
        kept fixed over the sweep (its own ``mask`` replaced by each component's).
      masks: the components: ``None`` (the whole model), a sequence of boolean mask pytrees or
        a dict ``{label: mask}`` (``None`` entries: the whole model).
      nbeta, localization, step_size, sampler_options, safety_factor, max_retries: as in
        :func:`slt_jax.estimate_llc` (named samplers only).
      num_chains, num_draws, num_burnin, batch_size: per cell, as in :func:`slt_jax.estimate_llc`
        (defaults 4 chains × 4000 draws after ``num_draws // 2`` steps, batch 500 (full when ``n ≤ 500``);
        with ``"refined_llc_paper"`` 200 draws after 100, batch 32).
      cells_per_run: cells stacked along the chain axis of one run (memory grows with it);
        default: the number of components (one checkpoint per run). A run holding a single
        checkpoint uses the paired estimator of :func:`slt_jax.llc` (each minibatch is also
        evaluated at that checkpoint); a run mixing checkpoints uses the plain one with
        ``init_loss`` (``hyperparameters["paired_runs"]`` counts the paired runs).
      init_loss: ``(num_checkpoints,)`` :math:`L_n(w^*_c)`; by default
        :func:`slt_jax.evaluate_loss` on all of ``data`` per checkpoint.

    Returns:
      an :class:`LLCSweepResult` with ``(num_checkpoints, num_components)`` arrays of LLC
      means, standard errors and R̂. Warnings of the cells (calibration, non-stationary
      traces, negative LLCs, diverged chains) are gathered into one warning per kind.
    """
    start = time.perf_counter()
    key = check_key(key)
    checkpoint_list = _checkpoint_list(loss_fn, checkpoints)
    labels, masks = _components(masks, checkpoint_list[0])
    cells = [_Cell(c, k) for c in range(len(checkpoint_list)) for k in range(len(masks))]
    cells_per_run = min(
        len(cells), len(masks) if cells_per_run is None else check_int("cells_per_run", cells_per_run, 1)
    )
    num_chains = check_int("num_chains", num_chains, 1)
    check_run_lengths(num_chains=num_chains, num_draws=num_draws, num_burnin=num_burnin)
    calibration_arguments = dict(nbeta=nbeta, localization=localization, step_size=step_size,
                                 sampler_options=sampler_options)
    policy, sampler, lengths = _policy(
        sampler, num_draws=num_draws, num_burnin=num_burnin, batch_size=batch_size,
        num_examples=num_examples(data), calibration_arguments=calibration_arguments,
    )
    init_losses = _init_losses(loss_fn, checkpoint_list, data, init_loss)
    caught = []
    samplers, calibrations = _cell_samplers(
        policy, sampler, loss_fn, checkpoint_list, data, masks, cells, key, caught, labels,
        init_losses, lengths, num_chains=num_chains, progress=progress, safety_factor=safety_factor,
        calibration_arguments=calibration_arguments,
    )
    first_sampler = samplers[cells[0]]
    prepared = _prepare(
        loss_fn, checkpoint_list[0], data, first_sampler, key=key,
        options=SampleOptions(num_chains=cells_per_run * num_chains, num_draws=lengths["num_draws"],
                              num_burnin=lengths["num_burnin"], batch_size=lengths["batch_size"],
                              store=("loss",)),
    )
    meter = _progress_meter(progress)
    runs = _Runs(prepared, checkpoint_list, samplers, key, meter, len(masks), cells_per_run,
                 init_losses, labels)
    results = runs.run(cells)
    halvings = _retry_failed_cells(runs, results, cells, calibrations, caught,
                                   check_int("max_retries", max_retries, 0))
    caught.extend(runs.caught)
    _warn_once(caught, len(cells))
    hyperparameters = dict(
        policy=policy, sampler=first_sampler.name,
        **_per_cell_hyperparameters(samplers, len(checkpoint_list), len(masks)),
        calibration=tuple(
            tuple(calibrations.get(_Cell(c, k)) for k in range(len(masks)))
            for c in range(len(checkpoint_list))
        ),
        step_size_halvings=np.asarray(
            [[halvings[_Cell(c, k)] for k in range(len(masks))]
             for c in range(len(checkpoint_list))], np.int64),
        num_chains=num_chains, **lengths, cells_per_run=cells_per_run,
        num_runs=runs.num_runs, paired_runs=runs.paired_runs, num_examples=num_examples(data),
        wall_time_seconds=time.perf_counter() - start,
    )
    return _sweep_result(results, len(checkpoint_list), labels, init_losses, hyperparameters)


def _policy(sampler, *, num_draws, num_burnin, batch_size, num_examples, calibration_arguments):
    """``(policy, sampler, lengths)``: ``"calibrated"`` (a sampler name, estimate_llc's
    defaults), ``"refined_llc_paper"`` or ``"fixed"`` (a ready sampler)."""
    if isinstance(sampler, str) and sampler == PAPER_SAMPLER:
        check_paper_arguments(calibration_arguments)
        policy, sampler = PAPER_SAMPLER, refined_llc_sampler()
        defaults = PAPER_LENGTHS
    else:
        if isinstance(sampler, Sampler):
            given = sorted(name for name, value in calibration_arguments.items()
                           if value is not None)
            if given:
                raise TypeError(
                    f"pass {given} either to the sampler or to llc_over_checkpoints, not both"
                )
            policy = "fixed"
        elif sampler is None or isinstance(sampler, str):
            policy = "calibrated"
        else:
            raise TypeError(
                "sampler must be None, a sampler name (e.g. 'sghmc', 'sgld'), "
                f"{PAPER_SAMPLER!r} or a sampler from slt_jax.samplers, got {sampler!r}"
            )
        draws = DEFAULT_NUM_DRAWS if num_draws is None else num_draws
        defaults = dict(num_draws=draws, num_burnin=draws // 2 if isinstance(draws, int) else 0,
                        # estimate_llc's rule: the full batch when n <= 500 (a with-replacement
                        # minibatch of n is not the full batch)
                        batch_size=None if num_examples <= DEFAULT_BATCH_SIZE else DEFAULT_BATCH_SIZE)
    lengths = dict(
        num_draws=defaults["num_draws"] if num_draws is None else num_draws,
        num_burnin=defaults["num_burnin"] if num_burnin is None else num_burnin,
        batch_size=defaults["batch_size"] if batch_size == "auto" else batch_size,
    )
    return policy, sampler, lengths


def _cell_samplers(policy, sampler, loss_fn, checkpoint_list, data, masks, cells, key, caught,
                   labels, init_losses, lengths, *, num_chains, progress, safety_factor,
                   calibration_arguments):
    """Each cell's sampler (its component's mask, Frozen leaves never sampled) and, for the
    calibrated policy, its :class:`slt_jax.calibration.Calibration` (as ``estimate_llc``
    calibrates: at the checkpoint, in the component's subspace)."""
    samplers, calibrations = {}, {}
    for cell in cells:
        params, mask = checkpoint_list[cell.checkpoint], masks[cell.component]
        if policy != "calibrated":
            samplers[cell] = _masked_sampler(sampler, trainable(params, mask))
            continue
        cell_key = jax.random.fold_in(jax.random.fold_in(key, _cell_id(cell, len(masks))), 1)
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            # tqdm in Jupyter without ipywidgets: a text bar, not a warning of the cell
            warnings.filterwarnings("ignore", message="IProgress not found")
            setup = _calibrated_setup(
                loss_fn, params, data, key=cell_key, sampler=sampler,
                localization=1.0 if calibration_arguments["localization"] is None
                else calibration_arguments["localization"],
                nbeta=calibration_arguments["nbeta"], step_size=calibration_arguments["step_size"],
                sampler_options=calibration_arguments["sampler_options"],
                safety_factor=safety_factor, num_chains=num_chains, progress=progress,
                init_loss=float(init_losses[cell.checkpoint]), mask=mask, **lengths,
            )
        caught.extend((cell, labels[cell.component], record) for record in records)
        samplers[cell], calibrations[cell] = setup.sampler, setup.calibration
    kinds = {(s.name, s.static) for s in samplers.values()}
    if len(kinds) > 1:  # one program runs every cell: one update rule
        raise ValueError(f"the cells' samplers differ in kind or static options: {sorted(kinds)}")
    return samplers, calibrations


def _retry_failed_cells(runs, results, cells, calibrations, caught, max_retries) -> dict:
    """As ``estimate_llc``: a cell with a calibrated step size whose chains diverged or ran away
    is run again (same keys) at half its step size, at most ``max_retries`` times. Updates
    ``results`` and ``runs.samplers``; returns the halvings per cell."""
    halvings = {cell: 0 for cell in cells}
    family = SAMPLER_FAMILIES.get(runs.samplers[cells[0]].name)
    while family is not None:
        failed = [cell for cell in cells if calibrations.get(cell) is not None
                  and halvings[cell] < max_retries and _failed(results[cell])]
        if not failed:
            break
        for cell in failed:
            halvings[cell] += 1
            sampler = runs.samplers[cell]
            runs.samplers[cell] = sampler.replace(**family.rescaled(sampler.hyperparameters, 0.5))
            caught.append((cell, runs.labels[cell.component], _Note(
                "chains diverged or ran away: the cell was repeated with half the step size "
                f"(step_size={float(runs.samplers[cell].hyperparameters['step_size']):.3g})")))
        results.update(runs.run(failed))
    return halvings


def _cell_id(cell, num_components) -> int:
    return cell.checkpoint * num_components + cell.component


class _Note(NamedTuple):
    """A message gathered like a caught warning (see :func:`_warn_once`)."""

    message: str
    category: type = RuntimeWarning


def _failed(result) -> bool:
    """Did a cell lose chains (non-finite, or ran away)?"""
    return bool(len(result.diverged_chains) or len(getattr(result, "runaway_chains", ()) or ()))


def _per_cell_hyperparameters(samplers, num_checkpoints, num_components) -> dict:
    """Each numeric sampler hyperparameter as a ``(checkpoints, components)`` array."""
    names = list(dict.fromkeys(name for s in samplers.values() for name in s.hyperparameters))
    return {
        name: np.asarray([
            [float(samplers[_Cell(c, k)].hyperparameters.get(name, np.nan))
             for k in range(num_components)]
            for c in range(num_checkpoints)
        ], np.float64)
        for name in names
    }


class _Runs:
    """Runs groups of cells through the one block program and reduces each cell's draws."""

    def __init__(self, prepared, checkpoint_list, samplers, key, meter, num_components,
                 cells_per_run, init_losses, labels):
        self.prepared, self.checkpoint_list, self.samplers = prepared, checkpoint_list, samplers
        self.key, self.meter, self.num_components = key, meter, num_components
        self.cells_per_run, self.init_losses, self.labels = cells_per_run, init_losses, labels
        self.caught, self.num_runs, self.paired_runs = [], 0, 0

    def run(self, cells) -> dict:
        results = {}
        for first in range(0, len(cells), self.cells_per_run):
            group = cells[first:first + self.cells_per_run]
            padded = group + [group[-1]] * (self.cells_per_run - len(group))
            losses, center, first_nonfinite, accumulators = _run_cells(
                self.prepared, padded, self.checkpoint_list, self.samplers, self.key, self.meter,
                self.num_components,
            )
            self.num_runs += 1
            self.paired_runs += center is not None
            self.keep(group, accumulators)
            for index, cell in enumerate(group):
                trace = _CellTrace(losses[index], None if center is None else center[index],
                                   first_nonfinite[index], {})
                nbeta = float(self.samplers[cell].hyperparameters["nbeta"])
                results[cell] = _cell_result(
                    trace, nbeta, self.init_losses[cell.checkpoint], self.caught, cell,
                    self.labels[cell.component],
                )
        return results

    def keep(self, group, accumulators) -> None:
        """What a subclass keeps of a run's accumulators (``group[i]`` is the run's cell
        ``i``); the sweep keeps nothing."""


def _sweep_result(results, num_checkpoints, labels, init_losses, hyperparameters):
    grid = tuple(
        tuple(results[_Cell(c, k)] for k in range(len(labels))) for c in range(num_checkpoints)
    )

    def field(name):
        return np.asarray([[getattr(r, name) for r in row] for row in grid], np.float64)

    return LLCSweepResult(
        mean=field("mean"), std=field("std"), mcse=field("mcse"), rhat=field("rhat"),
        ess=field("ess"), init_loss=init_losses, labels=labels, results=grid,
        hyperparameters=hyperparameters,
    )

