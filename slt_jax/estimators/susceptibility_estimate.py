r"""Susceptibilities of every component × probe token in one call and one compiled program.

For components :math:`C_1, \dots, C_K` (boolean masks, e.g. one per attention head from
:func:`slt_jax.masks.head`) and probe sets :math:`q'` (query sets of examples or tokens),
:func:`estimate_susceptibilities` estimates (arXiv 2504.18274; docs/mathematics.md §5)

.. math::

    \chi_{C,xy} = -\operatorname{Cov}_{p_C}\big(\phi_C(w),\ \ell_{xy}(w) - L_q(w)\big),\qquad
    \phi_C(w) = L_q(w) - L_q(w^*),

    p_C(w) \propto e^{-n\beta L_n(w) - \frac\gamma2\lVert w - w^*\rVert^2}
    \ \text{on}\ \{w : w_{\bar C} = w^*_{\bar C}\},

where :math:`L_q` is the mean loss on a **fixed base set** (the same examples at every draw)
and :math:`\ell_{xy}` a probe example's (token's) loss; :math:`\chi = \frac1{n\beta}
\partial_h \mathbb E_h[\phi]|_{h=0}` for the data distribution moved toward the probe,
:math:`q_h = (1-h)q + h\,\delta_{xy}`. The weight-refined LLC of each component
(arXiv 2410.02984) comes from the same draws.

How it stays one program (as :func:`slt_jax.llc_over_checkpoints`): each component is a *cell*
of ``num_chains`` chains whose sampler state (mask, calibrated step size and friction, nβ, γ)
comes from the cell's ``sampler.init``; the cells are stacked along the chain axis of
:func:`slt_jax.sample`'s block program, and the susceptibility accumulators
(:func:`slt_jax.susceptibility_accumulator`) run per cell inside it
(:func:`slt_jax.accumulators.per_cell`), so the
memory does not grow with the number of draws and a second call with other masks, probes or
base set of the same shapes compiles nothing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Callable

import jax
import numpy as np

from slt_jax._checks import (
    add_context,
    check_int,
    check_key,
    check_loss_fn,
    check_run_lengths,
    num_examples,
)
from slt_jax.accumulators import DEFAULT_BATCH_SIZE as MCSE_BATCH_SIZE
from slt_jax.accumulators import per_cell
from slt_jax.adapters import as_params
from slt_jax.calibration import DEFAULT_SAFETY_FACTOR
from slt_jax.samplers import Sampler
from slt_jax.estimators.susceptibility import SusceptibilityResult, susceptibility_accumulator
from slt_jax.estimators.sweep import (
    _Cell,
    _cell_samplers,
    _components,
    _init_losses,
    _per_cell_hyperparameters,
    _policy,
    _retry_failed_cells,
    _Runs,
    _warn_once,
)
from slt_jax.sampling import SampleOptions, _prepare, _progress_meter

PyTree = Any

__all__ = ["estimate_susceptibilities"]

#: examples of ``data`` in the default base set (``base_data=None``)
DEFAULT_BASE_SIZE = 512
#: the stream names this estimator gives its query sets (``slt.sample(query_data=...)``)
BASE_STREAM = "susceptibility/base"
PROBE_PREFIX = "susceptibility/probe/"


def _base_set(data, base_data, base_size):
    """``(base set, description)``: ``base_data``, or a fixed subset of ``data`` (the same
    ``min(n, base_size)`` examples whatever the key: a seeded choice without replacement)."""
    if base_data is not None:
        try:
            size = num_examples(base_data)
        except ValueError as error:
            raise add_context(error, "(slt_jax: in base_data)")
        return base_data, dict(base_set="base_data", base_size=size)
    n = num_examples(data)
    size = min(n, check_int("base_size", base_size, 1))
    if size == n:
        return data, dict(base_set="data", base_size=n)
    indices = np.sort(np.random.default_rng(0).choice(n, size, replace=False))

    def take(leaf):
        return leaf[indices] if isinstance(leaf, jax.Array) else np.asarray(leaf)[indices]

    return jax.tree.map(take, data), dict(base_set=f"{size} of the {n} examples of data "
                                                   "(fixed, seed 0)", base_size=size)


def _check_probes(probes, loss_fn, params, base) -> tuple:
    """Probe names, after checking (before any compilation) that ``probes`` is a non-empty
    ``{name: data}`` on which ``loss_fn`` gives per-example (per-token) losses."""
    if not isinstance(probes, Mapping):
        raise TypeError(
            "probes must be a dict {name: query data pytree with its own leading example axis}, "
            f"got {type(probes).__name__}"
        )
    if not probes:
        raise ValueError("probes must hold at least one probe set {name: data}")
    for what, query in [("base set", base)] + [(f"probes[{n!r}]", q) for n, q in probes.items()]:
        try:
            size = num_examples(query)
        except ValueError as error:
            raise add_context(error, f"(slt_jax: in the {what})")
        try:
            check_loss_fn(loss_fn, params, query, size)
        except (TypeError, ValueError) as error:
            raise add_context(error, f"(slt_jax: loss_fn on the {what})")
    for name in probes:
        if not isinstance(name, str):
            raise TypeError(f"probe names must be strings, got {name!r}")
    return tuple(probes)


class _ComponentRuns(_Runs):
    """:class:`sweep._Runs` that also keeps each cell's susceptibility accumulators."""

    def __init__(self, *args, probe_names):
        super().__init__(*args)
        self.probe_names, self.responses = probe_names, {}

    def keep(self, group, accumulators) -> None:
        for index, cell in enumerate(group):
            self.responses[cell] = {name: accumulators[name][index]
                                    for name in self.probe_names}


def _chi_and_mcse(finalized):
    """``(chi, mcse)`` from the accumulator's ``finalize`` with ``return_mcse=True``."""
    if hasattr(finalized, "chi"):
        return np.asarray(finalized.chi), np.asarray(finalized.mcse)
    values, errors = finalized
    return np.asarray(values), np.asarray(errors)


def estimate_susceptibilities(
    loss_fn: Callable[[PyTree, PyTree], jax.Array],
    params: PyTree,
    data: PyTree,
    *,
    probes: Mapping[str, PyTree],
    components: Mapping[Any, PyTree | None] | list | None = None,
    key: jax.Array,
    base_data: PyTree | None = None,
    base_size: int = DEFAULT_BASE_SIZE,
    center: str = "global",
    sampler: str | Sampler | None = None,
    nbeta: float | None = None,
    localization: float | None = None,
    step_size: float | None = None,
    sampler_options: dict | None = None,
    safety_factor: float = DEFAULT_SAFETY_FACTOR,
    num_chains: int = 4,
    num_draws: int | None = None,
    num_burnin: int | None = None,
    batch_size: int | None | str = "auto",
    max_retries: int = 3,
    progress: bool = False,
) -> SusceptibilityResult:
    r"""Per-component, per-token susceptibilities and refined LLCs in one compiled program.

    .. math::

        \chi_{C,xy} = -\operatorname{Cov}_{p_C}\big(\phi_C,\ \ell_{xy} - L_q\big),\qquad
        \phi_C(w) = L_q(w) - L_q(w^*)

    (arXiv 2504.18274; docs/mathematics.md §5): :math:`p_C` is the localized tempered
    posterior with only component :math:`C`'s weights moving, :math:`L_q` the mean loss on a
    fixed base set, :math:`\ell_{xy}` a probe example's (token's) loss. :math:`\chi > 0`:
    moving the data toward that token raises :math:`\phi_C`. How :math:`\Delta L` is centred and
    scaled: no :math:`n\beta` factor (:math:`\chi = \frac1{n\beta}\partial_h\mathbb
    E_h[\phi]`), the covariance within :math:`p_C` pooled over the component's chains around
    their global mean (``center="global"``; ``"chain"`` removes between-chain spread), ddof 1,
    so the constant :math:`L_q(w^*)` drops out. devinterp's numbers: see
    :func:`slt_jax.susceptibility`'s ``delta_mean=`` and docs/migrating_from_devinterp.md.

    The base set is not the sampler's data when ``n`` exceeds ``base_size`` (or with
    ``base_data``): the chains sample :math:`e^{-n\beta L_n}`, so the derivative of the sampled
    posterior toward token :math:`xy` is :math:`-\operatorname{Cov}(\phi_C, \ell_{xy} - L_n)`
    and :math:`\chi_{C,xy}` differs from it by :math:`\operatorname{Cov}(\phi_C, L_n - L_q)`, one
    constant per component (an independent review measured 1.5–3% of a typical :math:`|\chi|`
    with a base set of 150 of 400 examples). Centring the columns of the response matrix
    (:func:`slt_jax.response_pca`) removes it; raw :math:`\chi` and per-probe means keep it, so
    use a large base set (or ``base_data=data``) when they matter.

    Policy (:func:`slt_jax.estimate_llc`'s, per component, as
    :func:`slt_jax.llc_over_checkpoints`): SGHMC with its step size and friction calibrated in
    the component's subspace, :math:`n\beta = n/\log n`, :math:`\gamma = 1`, batch 500 (full
    when ``n ≤ 500``) from ``data`` for the gradients, 4 chains × 4000 draws after 2000 burn-in
    steps; components whose chains diverge or run away are repeated at half the step size.
    Every component is a cell of one run (its mask and calibrated hyperparameters are sampler
    state, i.e. data), the base and probe losses are evaluated at every draw and streamed into
    :func:`slt_jax.susceptibility_accumulator` per cell (memory independent of the number of
    draws), and the weight-refined LLC of each component comes from the same run's minibatch
    losses (paired estimator). A second call with other masks, probes or key of the same
    shapes compiles nothing.

    Args:
      loss_fn: ``loss_fn(params, batch)`` per-example ``(b,)`` or per-token ``(b, T)`` losses.
      params: :math:`w^*`: a parameter pytree, a ``TrainResult``, an ``nnx.State`` or module
        (:func:`slt_jax.adapters.as_params`).
      data: the sampler's data (minibatch gradients, :math:`L_n(w^*)`).
      probes: ``{name: query data}``, each with its own leading example axis; per-token losses
        give per-token :math:`\chi`.
      components: ``None`` (the whole model, label ``"all"``), ``{label: mask}`` or a list of
        masks (labels ``0, 1, ...``); a ``None`` mask is the whole model.
      key: a ``jax.random.key``; component ``k`` uses ``fold_in(key, k)`` (as the sweep).
      base_data: the fixed base set of :math:`\phi_C` and :math:`L_q`; default a fixed subset
        of ``min(n, base_size)`` examples of ``data`` (chosen with seed 0, not ``key``).
      center: ``"global"`` or ``"chain"`` (see above).
      sampler, nbeta, localization, step_size, sampler_options, safety_factor, num_chains,
        num_draws, num_burnin, batch_size, max_retries, progress: as in
        :func:`slt_jax.llc_over_checkpoints` (a sampler name is calibrated per component; a
        sampler object from :mod:`slt_jax.samplers` is kept fixed, its mask replaced by each
        component's; ``step_size=`` skips the calibration with the named sampler's other
        defaults). Calibration costs pilot runs per component: on a 2-layer transformer about
        100 CPU-seconds per head.

    Returns:
      a :class:`slt_jax.SusceptibilityResult`: ``chi[component][probe]`` ``(q[, T])``,
      ``mcse`` the same shapes (batch means), ``llc[component]`` an
      :class:`slt_jax.LLCResult`, and ``hyperparameters`` (per component under
      ``"per_component"``; the base set; run counts; wall time).

    Example:
      >>> import jax, jax.numpy as jnp, slt_jax as slt
      >>> def loss_fn(w, batch):
      ...     return 0.5 * (batch["x"] @ w["a"] - batch["y"]) ** 2
      >>> x = jax.random.normal(jax.random.key(0), (64, 2))
      >>> data = {"x": x, "y": x @ jnp.array([1.0, -1.0])}
      >>> res = slt.estimate_susceptibilities(
      ...     loss_fn, {"a": jnp.array([1.0, -1.0])}, data, probes={"probe": data},
      ...     key=jax.random.key(1), num_draws=1000, num_burnin=200, step_size=5e-2)
      >>> res.chi["all"]["probe"].shape, res.components
      ((64,), ('all',))
    """
    start = time.perf_counter()
    key = check_key(key)
    params = as_params(loss_fn, params)
    labels, masks = _components(components, params)
    base, base_record = _base_set(data, base_data, base_size)
    probe_names = _check_probes(probes, loss_fn, params, base)
    num_chains = check_int("num_chains", num_chains, 1)
    check_run_lengths(num_chains=num_chains, num_draws=num_draws, num_burnin=num_burnin)
    if isinstance(sampler, str) and sampler == "refined_llc_paper":
        raise ValueError("estimate_susceptibilities runs estimate_llc's calibrated policy; "
                         "pass a sampler name (default 'sghmc') or step_size=")
    calibration_arguments = dict(nbeta=nbeta, localization=localization, step_size=step_size,
                                 sampler_options=sampler_options)
    policy, sampler, lengths = _policy(
        sampler, num_draws=num_draws, num_burnin=num_burnin, batch_size=batch_size,
        num_examples=num_examples(data), calibration_arguments=calibration_arguments,
    )
    mcse_batch = min(MCSE_BATCH_SIZE, lengths["num_draws"])
    accumulators = {
        name: per_cell(susceptibility_accumulator(
            BASE_STREAM, PROBE_PREFIX + name, BASE_STREAM, center=center, return_mcse=True,
            batch_size=mcse_batch), len(masks))
        for name in probe_names
    }
    checkpoint_list = [params]
    init_losses = _init_losses(loss_fn, checkpoint_list, data, None)
    cells, caught = [_Cell(0, k) for k in range(len(masks))], []
    samplers, calibrations = _cell_samplers(
        policy, sampler, loss_fn, checkpoint_list, data, masks, cells, key, caught, labels,
        init_losses, lengths, num_chains=num_chains, progress=progress,
        safety_factor=safety_factor, calibration_arguments=calibration_arguments,
    )
    prepared = _prepare(
        loss_fn, params, data, samplers[cells[0]], key=key,
        options=SampleOptions(num_chains=len(cells) * num_chains, num_draws=lengths["num_draws"],
                              num_burnin=lengths["num_burnin"], batch_size=lengths["batch_size"],
                              store=("loss",)),
        query_data={BASE_STREAM: base, **{PROBE_PREFIX + n: probes[n] for n in probe_names}},
        accumulators={PROBE_PREFIX + name: acc for name, acc in accumulators.items()},
    )
    runs = _ComponentRuns(prepared, checkpoint_list, samplers, key, _progress_meter(progress),
                          len(masks), len(cells), init_losses, labels,
                          probe_names=tuple(PROBE_PREFIX + n for n in probe_names))
    results = runs.run(cells)
    halvings = _retry_failed_cells(runs, results, cells, calibrations, caught,
                                   check_int("max_retries", max_retries, 0))
    caught.extend(runs.caught)
    _warn_once(caught, len(cells))
    hyperparameters = _hyperparameters(
        policy, samplers, calibrations, halvings, cells, labels, lengths,
        dict(num_chains=num_chains, center=center, **base_record, num_runs=runs.num_runs,
             paired_runs=runs.paired_runs, num_examples=num_examples(data),
             mcse_batch_size=mcse_batch,
             num_components=len(cells), wall_time_seconds=time.perf_counter() - start),
    )
    return _result(runs, results, cells, labels, probe_names, hyperparameters)


def _hyperparameters(policy, samplers, calibrations, halvings, cells, labels, lengths, extra):
    """``result.hyperparameters``: per component the sampler's numeric hyperparameters, its
    calibration and step-size halvings; ``(components,)`` arrays of each; the run's options."""
    arrays = {name: values[0] for name, values in
              _per_cell_hyperparameters(samplers, 1, len(cells)).items()}
    first = samplers[cells[0]]
    per_component = {
        labels[cell.component]: {
            **{name: float(value) for name, value in samplers[cell].hyperparameters.items()},
            **dict(samplers[cell].static),
            "calibration": calibrations.get(cell),
            "step_size_halvings": halvings[cell],
        }
        for cell in cells
    }
    return dict(policy=policy, sampler=first.name, **dict(first.static), **arrays,
                per_component=per_component, **lengths, **extra)


def _result(runs, results, cells, labels, probe_names, hyperparameters) -> SusceptibilityResult:
    chi, mcse, llcs = {}, {}, {}
    for cell in cells:
        label = labels[cell.component]
        pairs = {name: _chi_and_mcse(runs.responses[cell][PROBE_PREFIX + name])
                 for name in probe_names}
        chi[label] = {name: pair[0] for name, pair in pairs.items()}
        mcse[label] = {name: pair[1] for name, pair in pairs.items()}
        llcs[label] = results[cell]
    return SusceptibilityResult(chi=chi, mcse=mcse, llc=llcs, components=tuple(labels),
                                probes=tuple(probe_names), hyperparameters=hyperparameters)
