r"""LLC curves over training: every checkpoint × component in one compiled program.

For checkpoints :math:`w^*_1, \dots, w^*_C` (a stacked pytree, e.g. from
:func:`slt_jax.training.train`) and components :math:`V_1, \dots, V_K` (boolean masks: one
per attention head, say), :func:`llc_over_checkpoints` estimates every weight-refined LLC
(arXiv 2410.02984; MATH.md §2)

.. math::

    \hat\lambda(w^*_c; V_k) = n\beta\,\big(\mathbb E_{p_{c,k}}[L_n(w)] - L_n(w^*_c)\big),\qquad
    p_{c,k}(w) \propto e^{-n\beta L_n(w) - \frac\gamma2\lVert w - w^*_c\rVert^2}
    \ \text{on}\ \{w : w_{\bar V_k} = w^*_{c,\bar V_k}\},

with one fixed sampler (default: the arXiv 2410.02984 settings, SGLD with step size
:math:`10^{-3}`, :math:`n\beta = 30`, :math:`\gamma = 200`, 4 chains × 200 draws, batch 32).

How it stays one program: a cell ``(c, k)`` is ``num_chains`` chains whose parameters start at
checkpoint ``c`` and whose sampler state (center :math:`w^*_c`, hyperparameters, mask
:math:`V_k`) comes from ``sampler.init``; ``cells_per_run`` cells are stacked along the chain
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

from slt_jax._checks import check_int, check_key
from slt_jax.estimators.llc import llc
from slt_jax.samplers import Sampler, sgld
from slt_jax.sampling import (
    ChainState,
    SampleOptions,
    _prepare,
    _progress_meter,
    _run,
    evaluate_loss,
)

PyTree = Any

__all__ = ["LLCSweepResult", "llc_over_checkpoints", "refined_llc_sampler"]


def refined_llc_sampler() -> Sampler:
    """SGLD with the per-head refined-LLC settings of arXiv 2410.02984: step size 1e-3,
    nβ = 30, γ = 200 (use with 4 chains × 200 draws, batch size 32)."""
    return sgld(step_size=1e-3, nbeta=30.0, localization=200.0)


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
    return labels, [everything if mask is None else mask for mask in masks]


def _masked_sampler(sampler, mask):
    """The same sampler (same ``update`` code, so the same compiled program) with ``mask``."""
    if not isinstance(sampler, Sampler):
        raise TypeError(
            "llc_over_checkpoints needs a sampler from slt_jax.samplers (it rebuilds the sampler "
            f"with each component's mask), got {sampler!r}"
        )
    return sampler.factory(**sampler.hyperparameters, **dict(sampler.static), mask=mask)


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
    first non-finite steps)``, losses shaped ``(cells, chains, draws)``.

    When every cell of the run shares one checkpoint, the driver also evaluates each minibatch
    at that checkpoint (its ``center``), for the paired estimator; runs mixing checkpoints use
    the plain one (the driver's center is one point for all chains).
    """
    num_chains = prepared.options.num_chains // len(cells)
    states = [samplers[cell.component].init(checkpoint_list[cell.checkpoint]) for cell in cells]
    params = _stack([checkpoint_list[cell.checkpoint] for cell in cells], num_chains)
    state = ChainState(
        params=params,
        sampler_state=_stack(states, num_chains),
        step=np.zeros((), np.int32),
        first_nonfinite_step=np.full((prepared.options.num_chains,), -1, np.int32),
    )
    ids = np.asarray([c.checkpoint * num_components + c.component for c in cells], np.int32)
    prepared = prepared._replace(state=state, chain_keys=_cell_keys(key, ids, num_chains=num_chains))
    single = len({cell.checkpoint for cell in cells}) == 1
    if single and "center" in prepared._fields:
        prepared = prepared._replace(center=checkpoint_list[cells[0].checkpoint])
    trace = _run(prepared, meter)

    def per_cell(array):
        return np.asarray(array).reshape((len(cells), num_chains) + np.shape(array)[1:])

    center = getattr(trace, "center_loss", None)
    center = per_cell(center) if single and center is not None else None
    return per_cell(trace.loss), center, per_cell(trace.first_nonfinite_step)


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
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            "checkpoints must be a stacked pytree whose leaves share a leading checkpoint axis; "
            f"got leading sizes {sorted(map(str, sizes))}"
        )
    return [jax.tree.map(lambda leaf: leaf[i], checkpoints) for i in range(sizes.pop())]


def llc_over_checkpoints(
    loss_fn: Callable[[PyTree, PyTree], jax.Array],
    checkpoints: PyTree,
    data: PyTree,
    *,
    key: jax.Array,
    sampler: Sampler | None = None,
    masks: Sequence[PyTree | None] | Mapping[Any, PyTree | None] | None = None,
    num_chains: int = 4,
    num_draws: int = 200,
    num_burnin: int = 100,
    batch_size: int | None = 32,
    cells_per_run: int | None = None,
    init_loss: Any = None,
    progress: bool = False,
) -> LLCSweepResult:
    r"""(Weight-refined) LLCs of every checkpoint × component with one compiled program.

    Args:
      loss_fn: ``loss_fn(params, batch)`` per-example (per-token) losses (e.g. from
        ``slt.adapters.from_nnx``).
      checkpoints: parameter pytree with a leading checkpoint axis (``TrainResult.checkpoints``).
      data: the data the sampler's gradients and :math:`L_n(w^*)` use (pass :math:`q'` data for
        data-refined LLCs; both refinements combine).
      key: a ``jax.random.key``; cell ``(c, k)`` uses ``fold_in(key, c K + k)``.
      sampler: a sampler from :mod:`slt_jax.samplers`, kept fixed over the sweep (default
        :func:`refined_llc_sampler`: SGLD, ε = 1e-3, nβ = 30, γ = 200). Its own ``mask`` is
        replaced by each component's.
      masks: the components: ``None`` (the whole model), a sequence of boolean mask pytrees or
        a dict ``{label: mask}`` (``None`` entries: the whole model).
      num_chains, num_draws, num_burnin, batch_size: per cell, as in :func:`slt_jax.sample`
        (defaults: 4 chains × 200 draws, batch 32, as arXiv 2410.02984, after 100 burn-in steps).
      cells_per_run: cells stacked along the chain axis of one run (memory grows with it);
        default: the number of components (one checkpoint per run). A run holding a single
        checkpoint uses the paired estimator of :func:`slt_jax.llc` (each minibatch is also
        evaluated at that checkpoint); a run mixing checkpoints uses the plain one with
        ``init_loss`` (``hyperparameters["paired_runs"]`` counts the paired runs).
      init_loss: ``(num_checkpoints,)`` :math:`L_n(w^*_c)`; by default
        :func:`slt_jax.evaluate_loss` on all of ``data`` per checkpoint.

    Returns:
      an :class:`LLCSweepResult` with ``(num_checkpoints, num_components)`` arrays of LLC
      means, standard errors and R̂. Warnings of the cells (non-stationary traces, negative
      LLCs, diverged chains) are gathered into one warning per kind.
    """
    start = time.perf_counter()
    key = check_key(key)
    sampler = refined_llc_sampler() if sampler is None else sampler
    checkpoint_list = _unstack(checkpoints)
    labels, masks = _components(masks, checkpoint_list[0])
    samplers = [_masked_sampler(sampler, mask) for mask in masks]
    cells = [_Cell(c, k) for c in range(len(checkpoint_list)) for k in range(len(masks))]
    cells_per_run = min(
        len(cells), len(masks) if cells_per_run is None else check_int("cells_per_run", cells_per_run, 1)
    )
    num_chains = check_int("num_chains", num_chains, 1)
    prepared = _prepare(
        loss_fn, checkpoint_list[0], data, samplers[0], key=key,
        options=SampleOptions(num_chains=cells_per_run * num_chains, num_draws=num_draws,
                              num_burnin=num_burnin, batch_size=batch_size, store=("loss",)),
    )
    init_losses = _init_losses(loss_fn, checkpoint_list, data, init_loss)
    meter, nbeta = _progress_meter(progress), float(sampler.hyperparameters["nbeta"])
    results, caught, paired_runs = {}, [], 0
    for first in range(0, len(cells), cells_per_run):
        group = cells[first:first + cells_per_run]
        padded = group + [group[-1]] * (cells_per_run - len(group))
        losses, center, first_nonfinite = _run_cells(
            prepared, padded, checkpoint_list, samplers, key, meter, len(masks)
        )
        paired_runs += center is not None
        for index, cell in enumerate(group):
            trace = _CellTrace(losses[index], None if center is None else center[index],
                               first_nonfinite[index], {})
            results[cell] = _cell_result(
                trace, nbeta, init_losses[cell.checkpoint], caught, cell, labels[cell.component]
            )
    _warn_once(caught, len(cells))
    hyperparameters = dict(
        sampler=sampler.name, **{k: float(v) for k, v in sampler.hyperparameters.items()},
        num_chains=num_chains, num_draws=num_draws, num_burnin=num_burnin,
        batch_size=batch_size, cells_per_run=cells_per_run,
        num_runs=-(-len(cells) // cells_per_run), paired_runs=paired_runs,
        wall_time_seconds=time.perf_counter() - start,
    )
    return _sweep_result(results, len(checkpoint_list), labels, init_losses, hyperparameters)


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

