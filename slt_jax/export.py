r"""Export traces and estimates to `ArviZ <https://python.arviz.org>`_.

:func:`to_arviz` turns a :class:`slt_jax.Trace`, an :class:`slt_jax.LLCResult` or an
:class:`slt_jax.BIFResult` into ArviZ data with dimensions ``(chain, draw, ...)``, so ArviZ's
diagnostics (``arviz.ess``, ``arviz.rhat``, ``arviz.summary``) and plots (trace, rank,
autocorrelation) work on slt_jax runs.

ArviZ is an optional dependency (``pip install 'slt_jax[arviz]'``), imported only when
:func:`to_arviz` is called. Both ArviZ generations are supported: 0.x, whose ``from_dict``
takes one keyword argument per group and returns an ``InferenceData``, and 1.x, whose
``from_dict`` takes a ``{group: {variable: array}}`` mapping and returns an
``xarray.DataTree``. Either way ``data.posterior["loss"]`` and ``data.sample_stats["diverging"]``
index the same.

What is exported
----------------
* ``posterior``: ``loss`` (the recorded minibatch loss), ``center_loss`` (the same minibatch's
  loss at :math:`w^*`, when recorded), ``llc`` (the per-draw LLC estimates
  :math:`n\beta(L_t - L^*)` of an :class:`~slt_jax.LLCResult`), every observable under its own
  name, and each query set's per-example losses as ``query_loss_<name>`` with dimensions
  ``(chain, draw, <name>_example[, <name>_token])``.
* ``sample_stats``: ``diverging`` ``(chain, draw)`` bool, and ``step_size`` ``(chain, draw)``
  when the run's hyperparameters record it.
* attributes: the run's scalar hyperparameters (``nbeta``, ``step_size``, ``num_burnin``, ...),
  the diverged chains and their first non-finite step.
"""

from __future__ import annotations

import inspect
import numbers
import warnings
from typing import Any

import numpy as np

__all__ = ["diverging_draws", "draw_steps", "to_arviz"]

#: prefix of the posterior variables holding query-set losses
QUERY_LOSS_PREFIX = "query_loss_"


def _import_arviz():
    """``arviz``, or an ImportError that says how to install it."""
    try:
        with warnings.catch_warnings():
            # ArviZ 0.2x announces its 1.0 refactor with a FutureWarning on import
            warnings.simplefilter("ignore", FutureWarning)
            import arviz
    except ImportError as error:
        raise ImportError(
            "slt_jax.to_arviz needs ArviZ: `pip install 'slt_jax[arviz]'` (or the `[dev]` "
            "extra, or `pip install arviz`)."
        ) from error
    return arviz


def _kind(value) -> str:
    """``"trace"``, ``"llc"`` or ``"bif"``: which slt_jax result ``value`` is."""
    from slt_jax.estimators.influence import BIFResult
    from slt_jax.estimators.llc import LLCResult
    from slt_jax.sampling import Trace

    for kind, cls in (("trace", Trace), ("llc", LLCResult), ("bif", BIFResult)):
        if isinstance(value, cls):
            return kind
    raise TypeError(
        "to_arviz expects a slt_jax.Trace (from slt_jax.sample), an slt_jax.LLCResult or an "
        f"slt_jax.BIFResult, got {type(value).__name__}"
    )


def _scalar_attributes(hyperparameters: dict) -> dict:
    """The numeric and string entries of ``hyperparameters`` (attributes must be plain values;
    the calibration record and other objects are left out)."""
    attributes = {}
    for name, value in hyperparameters.items():
        if isinstance(value, str):
            attributes[name] = value
            continue
        is_array_scalar = hasattr(value, "__array__") and np.ndim(value) == 0  # numpy, jax
        if not (isinstance(value, numbers.Number) or is_array_scalar):
            continue
        scalar = np.asarray(value)
        if scalar.dtype.kind in "biu":
            attributes[name] = int(scalar)
        elif scalar.dtype.kind == "f":
            attributes[name] = float(scalar)
    return attributes


def _run_length(name: str, given, hyperparameters: dict, minimum: int) -> int | None:
    """``given``, else ``hyperparameters[name]``, else ``None`` (checked: an int ≥ minimum)."""
    value = hyperparameters.get(name) if given is None else given
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def draw_steps(num_draws: int, num_burnin: int, steps_per_draw: int) -> np.ndarray:
    """The sampler step (counting burn-in from 0) at which each draw's loss is evaluated.

    :func:`slt_jax.sample` records draw ``d`` at the first of its ``steps_per_draw`` steps,
    i.e. at step ``num_burnin + d * steps_per_draw``.

    Args:
      num_draws: number of recorded draws.
      num_burnin: burn-in steps before the first draw.
      steps_per_draw: sampler steps between consecutive draws.

    Returns:
      ``(num_draws,)`` int array of step indices.

    Example:
      >>> draw_steps(3, num_burnin=10, steps_per_draw=2).tolist()
      [10, 12, 14]
    """
    return num_burnin + steps_per_draw * np.arange(num_draws)


def diverging_draws(
    num_draws: int,
    *,
    diverged,
    first_nonfinite_step=None,
    finite=None,
    num_burnin: int | None = None,
    steps_per_draw: int | None = None,
) -> np.ndarray:
    """``(num_chains, num_draws)`` bool: the draws at or after each chain's divergence.

    With the run lengths known, draw ``d`` of a chain is diverging when the chain's first
    non-finite step is at most the last step of the draw (``num_burnin + (d + 1) *
    steps_per_draw - 1``), so a chain that diverged during burn-in diverges at every draw.
    Without them, a diverged chain diverges from its first draw with a non-finite recorded value
    (``finite`` false), or at its last draw if every recorded value is finite.

    Args:
      num_draws: number of recorded draws.
      diverged: ``(num_chains,)`` bool, the chains that diverged.
      first_nonfinite_step: ``(num_chains,)`` int, the first non-finite step (``-1``: none).
      finite: ``(num_chains, num_draws)`` bool, whether each draw's recorded values are finite.
      num_burnin, steps_per_draw: run lengths of :func:`slt_jax.sample`.

    Returns:
      ``(num_chains, num_draws)`` bool array.
    """
    diverged = np.asarray(diverged, dtype=bool)
    if first_nonfinite_step is not None and num_burnin is not None and steps_per_draw is not None:
        first = np.asarray(first_nonfinite_step).astype(np.int64)
        last_step = draw_steps(num_draws, num_burnin, steps_per_draw) + steps_per_draw - 1
        return (diverged | (first >= 0))[:, None] & (first[:, None] <= last_step[None, :])
    if finite is None:
        finite = np.ones((diverged.size, num_draws), bool)
    nonfinite = ~np.asarray(finite, dtype=bool)
    since_nonfinite = np.cumsum(nonfinite, axis=1) > 0
    never_nonfinite = ~nonfinite.any(axis=1)
    last_draw = np.zeros((diverged.size, num_draws), bool)
    last_draw[:, -1] = True
    result = np.where(never_nonfinite[:, None], last_draw, since_nonfinite)
    return diverged[:, None] & result


def _per_draw(name: str, array, shape: tuple) -> np.ndarray:
    array = np.asarray(array)
    if array.shape[:2] != shape:
        raise ValueError(
            f"{name} must have leading axes (num_chains, num_draws) = {shape}, got shape "
            f"{array.shape}"
        )
    return array


def _finite_per_draw(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.inexact):
        return np.ones(array.shape[:2], bool)
    return np.all(np.isfinite(array.reshape(array.shape[:2] + (-1,))), axis=2)


class _Groups:
    """The groups, dimensions and attributes of an export, before ArviZ builds it."""

    def __init__(self):
        self.posterior: dict[str, np.ndarray] = {}
        self.sample_stats: dict[str, np.ndarray] = {}
        self.dims: dict[str, list[str]] = {}
        self.attributes: dict[str, Any] = {}

    def add(self, name: str, array: np.ndarray, dims: list[str] | None = None) -> None:
        if name in self.posterior:
            raise ValueError(
                f"two exported variables are named {name!r} (an observable clashes with the "
                "loss, the LLC or a query set's losses); rename the observable"
            )
        self.posterior[name] = array
        if dims is not None:
            self.dims[name] = dims


def _trace_groups(trace, groups: _Groups) -> tuple:
    """Adds a Trace's streams; returns its ``(num_chains, num_draws)``."""
    shape = (trace.num_chains, trace.num_draws)
    if trace.loss is not None:
        groups.add("loss", _per_draw("trace.loss", trace.loss, shape))
    center_loss = getattr(trace, "center_loss", None)
    if center_loss is not None:
        groups.add("center_loss", _per_draw("trace.center_loss", center_loss, shape))
    for name, values in trace.observables.items():
        groups.add(name, _per_draw(f"observable {name!r}", values, shape))
    for name, values in trace.query_losses.items():
        values = _per_draw(f"trace.query_losses[{name!r}]", values, shape)
        dims = [f"{name}_example", f"{name}_token"][: values.ndim - 2]
        groups.add(f"{QUERY_LOSS_PREFIX}{name}", values, dims)
    return shape


def _divergence(groups: _Groups, shape, *, diverged, first_nonfinite_step, num_burnin,
                steps_per_draw) -> None:
    finite = np.ones(shape, bool)
    for array in groups.posterior.values():
        finite &= _finite_per_draw(array)
    groups.sample_stats["diverging"] = diverging_draws(
        shape[1], diverged=diverged, first_nonfinite_step=first_nonfinite_step, finite=finite,
        num_burnin=num_burnin, steps_per_draw=steps_per_draw,
    )
    groups.attributes["diverged_chains"] = np.flatnonzero(np.asarray(diverged)).tolist()
    if first_nonfinite_step is not None:
        groups.attributes["first_nonfinite_step"] = (
            np.asarray(first_nonfinite_step).astype(int).tolist()
        )


def _sources(value, llc_result) -> tuple:
    """``(kind, trace or None, LLCResult or None, merged hyperparameters)`` of an export."""
    kind = _kind(value)
    if llc_result is not None:
        from slt_jax.estimators.llc import LLCResult

        if kind == "llc":
            raise TypeError("llc_result is for a Trace or BIFResult; an LLCResult exports its "
                            "own draws")
        if not isinstance(llc_result, LLCResult):
            raise TypeError(
                f"llc_result must be an slt_jax.LLCResult, got {type(llc_result).__name__}"
            )
    trace = value if kind == "trace" else (value.trace if kind == "bif" else None)
    if kind == "llc":
        llc_result = value
    elif kind == "bif" and llc_result is None:
        llc_result = value.llc
    hyperparameters = {}
    for source in (getattr(trace, "hyperparameters", None),
                   getattr(llc_result, "hyperparameters", None),
                   value.hyperparameters if kind == "bif" else None):
        hyperparameters.update(source or {})
    return kind, trace, llc_result, hyperparameters


def _add_llc(groups: _Groups, llc_result, shape) -> None:
    """The LLC draws as ``llc`` (their shape must be the trace's, when there is one)."""
    draws = np.asarray(llc_result.draws)
    if draws.ndim != 2:
        raise ValueError(f"LLCResult.draws must be (num_chains, num_draws), got {draws.shape}")
    if shape is not None and draws.shape != shape:
        raise ValueError(
            f"the LLC draws have shape {draws.shape} but the trace records {shape} "
            "(chains, draws): they come from different runs"
        )
    groups.add("llc", draws)
    groups.attributes.update(
        llc_nbeta=float(llc_result.nbeta), llc_init_loss=float(llc_result.init_loss),
        llc_mean=float(llc_result.mean), llc_mcse=float(llc_result.mcse),
    )
    runaway = list(getattr(llc_result, "runaway_chains", ()))
    if runaway:
        groups.attributes["runaway_chains"] = runaway


def _collect(value, llc_result, num_burnin, steps_per_draw) -> _Groups:
    """Everything :func:`to_arviz` exports, as numpy arrays."""
    kind, trace, llc_result, hyperparameters = _sources(value, llc_result)
    num_burnin = _run_length("num_burnin", num_burnin, hyperparameters, 0)
    steps_per_draw = _run_length("steps_per_draw", steps_per_draw, hyperparameters, 1)
    groups = _Groups()
    if trace is not None:
        shape = _trace_groups(trace, groups)
        diverged = np.asarray(trace.diverged, dtype=bool)
        first_nonfinite_step = np.asarray(trace.first_nonfinite_step)
    else:  # an LLCResult alone: its diverged chains, without their steps
        shape = np.shape(llc_result.draws)
        diverged = np.isin(np.arange(shape[0]), list(llc_result.diverged_chains))
        first_nonfinite_step = None
    if llc_result is not None:
        _add_llc(groups, llc_result, shape)
    if not groups.posterior:
        raise ValueError(
            "this trace records no per-draw stream (loss, observables or query losses) to export"
        )
    _divergence(groups, shape, diverged=diverged, first_nonfinite_step=first_nonfinite_step,
                num_burnin=num_burnin, steps_per_draw=steps_per_draw)
    if "step_size" in hyperparameters:
        groups.sample_stats["step_size"] = np.full(shape, float(hyperparameters["step_size"]))
    run_lengths = {name: length for name, length in
                   (("num_burnin", num_burnin), ("steps_per_draw", steps_per_draw))
                   if length is not None}
    groups.attributes = {**_scalar_attributes(hyperparameters), **groups.attributes,
                         **run_lengths, "slt_jax_kind": kind}
    return groups


def _netcdf_attributes(attributes: dict) -> dict:
    """Lists of ints become arrays (netCDF attributes hold scalars, strings and 1-D arrays)."""
    return {name: np.asarray(value, dtype=np.int64) if isinstance(value, list) else value
            for name, value in attributes.items()}


def to_arviz(trace_or_result, *, llc_result=None, num_burnin: int | None = None,
             steps_per_draw: int | None = None):
    r"""ArviZ data with dimensions ``(chain, draw, ...)`` from an slt_jax run.

    The ``posterior`` group holds the recorded streams: ``loss``, ``center_loss`` (when
    recorded), ``llc`` (:math:`n\beta(L_t - L^*)` per draw, from an
    :class:`~slt_jax.LLCResult`), each observable under its name and each query set's losses
    as ``query_loss_<name>`` (dimensions ``<name>_example`` and, per token, ``<name>_token``).
    The ``sample_stats`` group holds ``diverging`` (``(chain, draw)`` bool, from the chains'
    ``first_nonfinite_step``; see :func:`diverging_draws`) and ``step_size`` when the run
    records one. The run's scalar hyperparameters become attributes. ArviZ's diagnostics then
    apply directly: ``arviz.rhat(data, var_names=["llc"])`` is the rank-normalized split-R̂
    (Vehtari et al. 2021) of the LLC draws, ``arviz.ess`` their bulk ESS.

    Only post-burn-in draws are stored by :func:`slt_jax.sample`, so the ``draw`` coordinate
    counts recorded draws; ``num_burnin`` / ``steps_per_draw`` (attributes when known) map a
    draw to its sampler step ``num_burnin + draw * steps_per_draw``.

    Args:
      trace_or_result: a :class:`slt_jax.Trace`, an :class:`slt_jax.LLCResult` (its ``draws``
        become ``llc``; ``diverging`` marks its diverged chains) or an
        :class:`slt_jax.BIFResult` (its trace and its LLC).
      llc_result: an :class:`slt_jax.LLCResult` of the same run to add as ``llc`` to a
        :class:`~slt_jax.Trace`'s export (e.g. ``slt.llc(trace)``).
      num_burnin, steps_per_draw: the run lengths, to place divergences on the draws exactly;
        by default read from the hyperparameters (:func:`slt_jax.estimate_llc` records them).

    Returns:
      ``arviz.InferenceData`` with ArviZ 0.x, an ``xarray.DataTree`` with ArviZ 1.x; either way
      ``data.posterior["loss"]`` is a ``(chain, draw)`` ``xarray.DataArray``.

    Raises:
      TypeError: ``trace_or_result`` is not one of the three result types.
      ImportError: ArviZ is not installed.

    Example:
      >>> import numpy as np, slt_jax as slt
      >>> losses = np.random.default_rng(0).normal(1.5, 0.1, size=(2, 100))  # (chains, draws)
      >>> result = slt.llc(losses, nbeta=10.0, init_loss=1.0)
      >>> exported = slt.to_arviz(result)
      >>> exported.posterior["llc"].dims, exported.posterior["llc"].shape
      (('chain', 'draw'), (2, 100))
    """
    groups = _collect(trace_or_result, llc_result, num_burnin, steps_per_draw)
    arviz = _import_arviz()
    attributes = _netcdf_attributes(groups.attributes)
    parameters = inspect.signature(arviz.from_dict).parameters
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if "posterior" in parameters:  # ArviZ 0.x: one keyword argument per group
            return arviz.from_dict(
                posterior=groups.posterior, sample_stats=groups.sample_stats, dims=groups.dims,
                attrs=dict(attributes), posterior_attrs=dict(attributes),
            )
        # ArviZ 1.x: {group: {variable: array}}, attributes per group ("/" for the root)
        return arviz.from_dict(
            {"posterior": groups.posterior, "sample_stats": groups.sample_stats},
            dims=groups.dims, attrs={"/": attributes, "posterior": attributes},
        )
