"""Input validation for the sampling driver: everything here runs before anything is compiled,
and every error says what was expected."""

from __future__ import annotations

import functools
import math
import sys
import warnings
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


def add_context(error: BaseException, message: str) -> BaseException:
    """Attach ``message`` to ``error`` as a note (keeping its type, message and traceback)."""
    if hasattr(error, "add_note"):
        error.add_note(message)
    return error


def check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


_NNX_ADVICE = (
    "use `loss_fn, params = slt_jax.adapters.from_nnx(model, loss)` with `loss(model, batch)` "
    "returning per-example losses: it samples only the nnx.Param variables and keeps BatchNorm "
    "statistics and RNG state fixed, with Dropout off and BatchNorm on its running statistics"
)


def check_framework_state(params: PyTree) -> None:
    """Refuse Flax NNX state that is not a weight (BatchNorm statistics, RNG streams, ...) and
    PRNG keys among the params: a sampler would move them as if they were weights."""
    nnx = sys.modules.get("flax.nnx")  # not imported: params cannot hold NNX objects
    if nnx is not None:
        is_node = lambda x: isinstance(x, (nnx.Variable, nnx.Module))  # noqa: E731
        flat = jax.tree_util.tree_flatten_with_path(
            params, is_leaf=lambda x: isinstance(x, nnx.Variable)
        )[0]
        state = [
            f"{type(leaf).__name__} at {jax.tree_util.keystr(path)}"
            for path, leaf in flat
            if is_node(leaf) and not isinstance(leaf, nnx.Param)
        ]
        if state:
            listed = ", ".join(state[:6]) + (f" and {len(state) - 6} more" if len(state) > 6 else "")
            raise TypeError(
                f"params holds Flax NNX state that is not a weight ({listed}); a sampler would "
                f"move it as if it were one. Pass the model through the adapter instead: "
                f"{_NNX_ADVICE}."
            )
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if jnp.issubdtype(jnp.result_type(leaf), jax.dtypes.prng_key):
            raise TypeError(
                f"params leaf at {jax.tree_util.keystr(path)} is a JAX PRNG key, not a weight; "
                "keep keys out of params (for a Flax NNX model, "
                f"{_NNX_ADVICE})"
            )


def check_params(params: PyTree) -> None:
    """Parameters must be a non-empty pytree of floating-point arrays, on one device."""
    check_framework_state(params)
    leaves = jax.tree_util.tree_leaves_with_path(params)
    if not leaves:
        raise ValueError("params must be a non-empty pytree of float arrays, got an empty pytree")
    for path, leaf in leaves:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"params leaf at {jax.tree_util.keystr(path)} has dtype {dtype}; expected a "
                "floating-point array (cast integer parameters with jnp.asarray(x, jnp.float32))"
            )
    check_one_device(params, "params")


def check_one_device(tree: PyTree, what: str) -> None:
    """The JAX arrays of ``tree`` that are committed to devices (``jax.device_put(x, device)``)
    must all live on the same devices: one compiled program cannot take arguments pinned to
    different ones. Arrays sharded over a mesh count as living on the mesh's devices."""
    placed = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if isinstance(leaf, jax.Array) and getattr(leaf, "committed", False):
            devices = frozenset(leaf.sharding.device_set)
            placed.setdefault(devices, jax.tree_util.keystr(path) or "<root>")
    if len(placed) > 1:
        listing = "; ".join(
            f"{path} on {sorted(str(device) for device in devices)}"
            for devices, path in list(placed.items())[:4]
        )
        raise ValueError(
            f"{what} leaves are committed to different devices ({listing}); one compiled "
            "program needs all its arguments on the same devices: move them there with "
            "jax.device_put(x, device) (or leave them uncommitted), or pass a mesh= and shard "
            "them over its devices"
        )


def check_positive_number(name: str, value, *, minimum_exclusive: float = 0.0) -> float:
    """``value`` as a Python float that is finite, above ``minimum_exclusive`` and finite in
    JAX's default float type (float32 unless x64 is on: 1e39 would become inf there).
    ``TypeError`` for a non-number, ``ValueError`` otherwise, both saying what was expected."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number <= minimum_exclusive:
        raise ValueError(f"{name} must be finite and > {minimum_exclusive:g}, got {value!r}")
    largest = float(jnp.finfo(jnp.result_type(float)).max)
    if abs(number) > largest:
        raise ValueError(
            f"{name}={number:g} overflows {jnp.result_type(float)} (largest {largest:.3g}), so "
            "it would be inf in the compiled program; use a smaller value (or enable "
            "jax_enable_x64)"
        )
    return number


def check_mask_samples_something(params: PyTree, mask: PyTree | None) -> None:
    """An estimator's mask (with the params' ``Frozen`` leaves taken out) must leave at least
    one coordinate to sample: with none the chains cannot move and every LLC would read 0."""
    from slt_jax.masks import trainable
    from slt_jax.samplers import mask_as_floats

    sampled = trainable(params, mask)
    if sampled is None:
        return
    floats = mask_as_floats(sampled, params)  # validates the structure, shapes and values
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(floats)):
        return
    if any(np.any(np.asarray(leaf) > 0) for leaf in jax.tree.leaves(floats)):
        return
    frozen = "" if mask is sampled else (
        " once the params' Frozen leaves (state an adapter carries, e.g. BatchNorm "
        "statistics) are taken out")
    raise ValueError(
        f"mask selects no coordinate to sample: every leaf is False{frozen}, so the chains "
        "could not move and the LLC would read 0. Select at least one parameter (see "
        "slt_jax.masks, e.g. masks.select(params, 'blocks/0/*'))"
    )


def check_run_lengths(*, num_chains, num_draws, num_burnin=None, minimum_draws: int = 2) -> None:
    """Run lengths of a one-call estimator, checked before any calibration: ``num_chains``
    >= 1, ``num_draws`` >= ``minimum_draws`` (an error bar, and a covariance, need at least
    two draws), ``num_burnin`` >= 0; ``None`` (the estimator's default) passes."""
    check_int("num_chains", num_chains, 1)
    if num_draws is None:
        num_draws = minimum_draws
    if isinstance(num_draws, (int, np.integer)) and not isinstance(num_draws, bool) \
            and 0 < num_draws < minimum_draws:
        raise ValueError(
            f"num_draws must be an int >= {minimum_draws}, got {num_draws!r}: one draw per "
            "chain has no error bar (MCSE, R-hat) and a covariance over one draw is 0"
        )
    check_int("num_draws", num_draws, minimum_draws)
    if num_burnin is not None:
        check_int("num_burnin", num_burnin, 0)


def check_draws_for_covariance(name: str, shape: tuple) -> None:
    """A covariance over draws (``ddof=1``) needs ``(num_chains, num_draws, ...)`` with at least
    one chain and two draws in all."""
    if len(shape) >= 2 and (shape[0] < 1 or shape[0] * shape[1] < 2):
        raise ValueError(
            f"{name} has shape {tuple(shape)}: a covariance over draws needs at least one chain "
            "and two draws in all (num_chains, num_draws, ...)"
        )


def warn_nonfinite_entries(matrix, what: str, row_name: str, column_name: str,
                           row_dims: int | None = None, stacklevel: int = 3):
    """Return ``matrix``; first warn (``RuntimeWarning``) if some entries are nan/inf, naming
    the rows (the first ``row_dims`` axes, default half of them) and columns (the rest) that
    hold them. Only a flag and two index vectors leave the device; traced values pass."""
    if isinstance(matrix, jax.core.Tracer) or jnp.ndim(matrix) < 2:
        return matrix
    matrix = jnp.asarray(matrix)
    if bool(jnp.all(jnp.isfinite(matrix))):
        return matrix
    rows = int(math.prod(matrix.shape[:matrix.ndim // 2 if row_dims is None else row_dims]))
    bad = ~jnp.isfinite(matrix.reshape(rows, -1))
    # a non-finite loss of one example poisons its whole row (column): name those first
    whole_rows = np.flatnonzero(np.asarray(jnp.all(bad, axis=1)))
    whole_columns = np.flatnonzero(np.asarray(jnp.all(bad, axis=0)))
    if whole_rows.size or whole_columns.size:
        where = (f"entirely non-finite: {whole_rows.size} {row_name} row(s) "
                 f"{_listed(whole_rows)} and {whole_columns.size} {column_name} column(s) "
                 f"{_listed(whole_columns)}")
    else:
        some_rows = np.flatnonzero(np.asarray(jnp.any(bad, axis=1)))
        some_columns = np.flatnonzero(np.asarray(jnp.any(bad, axis=0)))
        where = (f"in {some_rows.size} {row_name} row(s) {_listed(some_rows)} and "
                 f"{some_columns.size} {column_name} column(s) {_listed(some_columns)}")
    warnings.warn(
        f"the {what} has {int(jnp.sum(bad))} non-finite entries (nan/inf) of {bad.size}, "
        f"{where} (flattened indices of the {rows} x {bad.shape[1]} matrix): the per-example "
        "losses of those examples were nan or inf at some draws (e.g. a log or exp "
        "overflowing away from w*), or the values overflowed (a very large beta). Fix "
        "loss_fn on those examples or leave them out",
        RuntimeWarning,
        stacklevel=stacklevel,
    )
    return matrix


def num_examples(data: PyTree) -> int:
    """The common leading-axis length ``n`` of every data leaf (``ValueError`` if they differ)."""
    leaves = jax.tree_util.tree_leaves_with_path(data)
    if not leaves:
        raise ValueError("data must be a pytree with at least one array leaf, got an empty pytree")
    sizes = {}
    for path, leaf in leaves:
        shape = jnp.shape(leaf)
        if len(shape) == 0:
            raise ValueError(
                f"data leaf at {jax.tree_util.keystr(path) or '<root>'} (a "
                f"{type(leaf).__name__}) is a scalar; every data leaf needs a leading example "
                "axis of length n"
            )
        sizes[jax.tree_util.keystr(path) or "<root>"] = shape[0]
    if len(set(sizes.values())) != 1:
        listing = ", ".join(f"{k}: {v}" for k, v in sizes.items())
        raise ValueError(
            "all data leaves must share the leading (example) axis length n; got " + listing
        )
    size = next(iter(sizes.values()))
    if size == 0:
        raise ValueError(
            "data has no examples (the leading axis of its leaves has length 0); expected at "
            "least one example"
        )
    return size


def example_batch(data: PyTree, size: int) -> PyTree:
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((size,) + jnp.shape(x)[1:], jnp.result_type(x)), data
    )


def check_loss_fn(loss_fn: Callable, params: PyTree, data: PyTree, batch_size: int) -> tuple:
    """Trace ``loss_fn`` abstractly; it must return float per-example losses ``(b,)`` or ``(b, T)``."""
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable loss_fn(params, batch), got {loss_fn!r}")
    try:
        out = jax.eval_shape(loss_fn, params, example_batch(data, batch_size))
    except Exception as error:  # keep the type and message, say what we called it with
        raise add_context(
            error, f"(slt_jax: raised by loss_fn(params, batch) on a batch of {batch_size} examples)"
        )
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise ValueError(
            "loss_fn must return one array of per-example losses of shape (batch,) or "
            f"(batch, tokens); got {out!r}"
        )
    if out.ndim not in (1, 2) or out.shape[0] != batch_size:
        raise ValueError(
            "loss_fn must return per-example losses of shape (batch,) or (batch, tokens); for a "
            f"batch of {batch_size} examples it returned shape {out.shape}. Do not average over "
            "the batch inside loss_fn."
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"loss_fn must return floating-point losses, got dtype {out.dtype}")
    if out.ndim == 2 and out.shape[1] == batch_size:
        _check_token_axis(loss_fn, params, data, batch_size, out.shape)
    return out.shape


def _check_token_axis(loss_fn, params, data, batch_size, shape):
    """A ``(b, b)`` output may be per-token losses with ``T == b``, or a broadcasting slip
    (``(b, 1) - (b,)``): probe another batch size; per-token losses keep their ``T``."""
    other = batch_size + 1
    try:
        probe = jax.eval_shape(loss_fn, params, example_batch(data, other))
    except Exception:  # noqa: BLE001 (a loss that only takes one batch size: no claim)
        return
    if getattr(probe, "shape", None) == (other, other):
        raise ValueError(
            f"loss_fn returned shape {shape} for a batch of {batch_size} examples and "
            f"{probe.shape} for {other}: its second axis follows the batch size, so these are "
            "not per-token losses (b, T) but probably a broadcasting slip, e.g. predictions of "
            "shape (b, 1) minus targets of shape (b,). Return per-example losses of shape (b,)"
        )


def check_key(key):
    """The key as a typed JAX PRNG key, or a ``TypeError`` that says what was expected.

    Args:
      key: a ``jax.random.key(...)`` (or a legacy ``uint32[..., 2]`` key, wrapped).

    Returns:
      a typed key array.
    """
    if isinstance(key, (int, np.integer)):
        raise TypeError(f"key must be a JAX PRNG key such as jax.random.key(0), got the int {key}")
    if not isinstance(key, jax.Array):
        raise TypeError(f"key must be a JAX PRNG key such as jax.random.key(0), got {key!r}")
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    if key.dtype == jnp.uint32 and key.shape[-1:] == (2,):
        return jax.random.wrap_key_data(key)
    raise TypeError(
        f"key must be a JAX PRNG key such as jax.random.key(0), got an array of dtype {key.dtype}"
    )


def chain_keys(key, num_chains):
    key = check_key(key)
    if key.ndim == 0:
        return jax.random.split(key, num_chains)
    if key.shape != (num_chains,):
        raise ValueError(
            f"key must be one key or an array of num_chains={num_chains} keys, got shape {key.shape}"
        )
    return key


def check_observables(observables, params):
    if observables is None:
        return ()
    if not isinstance(observables, Mapping):
        raise TypeError("observables must be a dict {name: fn(params) -> array}")
    items = []
    for name, fn in observables.items():
        if not isinstance(name, str) or not callable(fn):
            raise TypeError(
                f"observables must map str names to callables fn(params) -> array; got {name!r}: {fn!r}"
            )
        try:
            jax.eval_shape(fn, params)
        except Exception as error:
            raise add_context(error, f"(slt_jax: raised by observable {name!r} on params)")
        items.append((name, fn))
    return tuple(items)


def auto_mesh(mesh):
    """The same devices and axis names with every axis in Auto (GSPMD) mode."""
    auto = (jax.sharding.AxisType.Auto,) * len(mesh.axis_names)
    if tuple(getattr(mesh, "axis_types", auto)) == auto:
        return mesh
    return jax.sharding.Mesh(mesh.devices, mesh.axis_names, axis_types=auto)


def check_mesh(mesh, chain_axis, data_axis, num_chains, batch_size):
    if not isinstance(mesh, jax.sharding.Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, got {mesh!r}")
    for name, axis, count, what in (
        ("chain_axis", chain_axis, num_chains, "num_chains"),
        ("data_axis", data_axis, batch_size, "the batch size"),
    ):
        if axis is None:
            continue
        if axis not in mesh.axis_names:
            raise ValueError(
                f"{name}={axis!r} is not an axis of the mesh; expected one of {mesh.axis_names}"
                " or None"
            )
        if count % mesh.shape[axis]:
            raise ValueError(
                f"{what} ({count}) must be divisible by the size of mesh axis {axis!r} "
                f"({mesh.shape[axis]})"
            )




def check_query_data(query_data, loss_fn, params) -> tuple:
    """``query_data`` is ``{name: data pytree}`` (each with its own leading axis) on which
    ``loss_fn`` returns per-example (per-token) losses. Returns ``((name, shape), ...)``."""
    if query_data is None:
        return ()
    if not isinstance(query_data, Mapping):
        raise TypeError(
            "query_data must be a dict {name: data pytree with its own leading example axis}, "
            f"got {type(query_data).__name__}"
        )
    shapes = []
    for name, query in query_data.items():
        if not isinstance(name, str):
            raise TypeError(f"query_data names must be strings, got {name!r}")
        try:
            size = num_examples(query)
        except ValueError as error:
            raise add_context(error, f"(slt_jax: in query_data[{name!r}])")
        shape = check_loss_fn(loss_fn, params, query, size)
        shapes.append((name, shape))
    return tuple(shapes)


def check_same_structure(reference: PyTree, other: PyTree, name: str, reference_name: str):
    """``other`` must have the pytree structure of ``reference`` (``loss_fn`` reads both): a
    dict of several query sets where one data set was expected fails here, not in ``loss_fn``."""
    expected, got = jax.tree.structure(reference), jax.tree.structure(other)
    if expected == got:
        return
    hint = ""
    if isinstance(other, Mapping) and not isinstance(reference, Mapping):
        hint = (f" It is a dict with keys {list(other)[:6]}: {name} is one data set here; for "
                "several query sets, call once per set or use "
                "slt.sample(query_data={name: data, ...})")
    raise TypeError(
        f"{name} must be a data pytree with the structure of {reference_name} (loss_fn reads "
        f"both), expected {expected}, got {got}.{hint}"
    )


def check_stream_names(observables: tuple, query_shapes: tuple) -> tuple:
    """Stream names (``"loss"``, observables, query sets) must be distinct."""
    names = (["loss", "center_loss"] + [name for name, _ in observables]
             + [name for name, _ in query_shapes])
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(
            f"stream names must be distinct: {duplicates} is used more than once among 'loss', "
            "'center_loss' (both reserved), the observables and the query sets"
        )
    return tuple(names)


def check_accumulators(accumulators, streams: tuple) -> tuple:
    """``accumulators`` is ``{name: Accumulator}`` reading only existing streams."""
    if accumulators is None:
        return ()
    if not isinstance(accumulators, Mapping):
        raise TypeError("accumulators must be a dict {name: slt_jax.accumulators.Accumulator}")
    items = []
    for name, accumulator in accumulators.items():
        if not all(hasattr(accumulator, field) for field in ("streams", "init", "update", "finalize")):
            raise TypeError(
                f"accumulators[{name!r}] must be an Accumulator (streams, init, update, finalize), "
                f"e.g. slt_jax.accumulators.covariance('probe'); got {accumulator!r}"
            )
        missing = sorted({stream for stream in accumulator.streams if stream not in streams})
        if missing:
            raise ValueError(
                f"accumulators[{name!r}] reads stream(s) {missing}, which do not exist; the "
                f"streams of this run are {list(streams)}"
            )
        items.append((name, accumulator))
    return tuple(items)


def check_store(store, streams: tuple) -> tuple:
    """``store``: ``None`` (store every stream) or the names of the streams to store."""
    if store is None:
        return streams
    if isinstance(store, str):
        store = (store,)
    store = tuple(store)
    unknown = [name for name in store if name not in streams]
    if unknown:
        raise ValueError(f"store names unknown stream(s) {unknown}; expected some of {list(streams)}")
    return tuple(name for name in streams if name in store)


def check_initial_state(initial_state, fresh):
    """``initial_state`` (a previous ``trace.state``) must match the fresh state's structure,
    shapes and dtypes; returns it with NumPy/JAX leaves as given."""
    if not (hasattr(initial_state, "params") and hasattr(initial_state, "sampler_state")
            and hasattr(initial_state, "step")):
        raise TypeError(
            "initial_state must be the ChainState of a previous run (trace.state), got "
            f"{type(initial_state).__name__}"
        )
    expected = jax.tree_util.tree_structure(fresh)
    got = jax.tree_util.tree_structure(initial_state)
    if expected != got:
        raise ValueError(
            "initial_state does not match this run: its structure differs (a different sampler, "
            f"params pytree or chain count?).\nexpected {expected}\ngot      {got}"
        )
    for path, want, have in zip(
        [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(fresh)],
        jax.tree.leaves(fresh), jax.tree.leaves(initial_state),
    ):
        if np.shape(want) != np.shape(have) or _dtype(want) != _dtype(have):
            raise ValueError(
                f"initial_state{path} has shape {np.shape(have)} and dtype {_dtype(have)};"
                f" this run expects {np.shape(want)} and {_dtype(want)} (same sampler, "
                "params and num_chains as the run it continues)"
            )
    return initial_state


# --------------------------------------------------------------------------------------------
# Non-finite input at w*, and steps below the parameters' floating-point resolution
# --------------------------------------------------------------------------------------------

#: examples on which :func:`check_finite_at_center` evaluates the loss and its gradient at w*
FINITE_CHECK_EXAMPLES = 256
#: at most this many offending example indices are listed in an error message
LISTED_INDICES = 10


def _is_float(leaf) -> bool:
    return jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)


@jax.jit
def _leaves_all_finite(leaves):
    return [jnp.all(jnp.isfinite(leaf)) for leaf in leaves]


def _all_finite(leaves) -> list:
    """``[bool]``: whether each float leaf is finite. Host (NumPy) leaves are checked with
    NumPy, device leaves with one compiled reduction (nothing but a flag comes back)."""
    flags = [None] * len(leaves)
    device = [i for i, leaf in enumerate(leaves) if not isinstance(leaf, (np.ndarray, np.generic))]
    for i, leaf in enumerate(leaves):
        if i not in device:
            flags[i] = bool(np.all(np.isfinite(leaf)))
    if device:
        for i, flag in zip(device, _leaves_all_finite([leaves[i] for i in device])):
            flags[i] = bool(flag)
    return flags


def _listed(indices) -> str:
    indices = [int(i) for i in indices]
    shown = ", ".join(str(i) for i in indices[:LISTED_INDICES])
    return f"[{shown}{', ...' if len(indices) > LISTED_INDICES else ''}]"


def check_finite_data(data: PyTree, what: str = "data") -> None:
    """Every float leaf of ``data`` must be finite; the error names the leaf and the examples
    (indices along the leading axis) holding NaN or inf."""
    leaves = [(path, leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(data)
              if _is_float(leaf)]
    for (path, leaf), finite in zip(leaves, _all_finite([leaf for _, leaf in leaves])):
        if finite:
            continue
        if isinstance(leaf, np.ndarray):
            rows = np.isfinite(leaf).reshape(leaf.shape[0], -1).all(axis=1)
        else:  # reduced on the device: only one flag per example comes back
            rows = np.asarray(jnp.isfinite(leaf).reshape(leaf.shape[0], -1).all(axis=1))
        bad = np.flatnonzero(~rows)
        raise ValueError(
            f"{what} leaf {jax.tree_util.keystr(path) or '<root>'} has non-finite values "
            f"(nan or inf) in {bad.size} example(s): {_listed(bad)}; remove or repair those "
            "examples (a non-finite example makes every loss and gradient that touches it nan)"
        )


def _check_finite_params(params: PyTree, finite_flags) -> None:
    leaves = jax.tree_util.tree_leaves_with_path(params)
    for (path, leaf), finite in zip(leaves, finite_flags):
        if not finite:
            values = np.asarray(leaf, np.float32)
            bad = np.argwhere(~np.isfinite(values))
            raise ValueError(
                f"params leaf {jax.tree_util.keystr(path) or '<root>'} (w*) has non-finite "
                f"values (nan or inf) at {len(bad)} of {values.size} element(s), e.g. index "
                f"{tuple(int(i) for i in bad[0])}; the chains are localized at w*, so it must "
                "be finite (check how the parameters were trained or loaded)"
            )


@functools.partial(jax.jit, static_argnames=("loss_fn",))
def _center_finiteness(params, batch, *, loss_fn):
    """Per-example finiteness of the losses at w* and per-leaf finiteness of the gradient of
    their mean."""
    def mean_loss(p):
        losses = loss_fn.value(p, batch)
        return jnp.mean(losses), losses

    (_, losses), grads = jax.value_and_grad(mean_loss, has_aux=True)(params)
    per_example = jnp.all(jnp.isfinite(losses.reshape(losses.shape[0], -1)), axis=1)
    return per_example, [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]


def check_finite_at_center(loss_fn: Callable, params: PyTree, data: PyTree,
                           query_data: Mapping | None = None) -> None:
    """Raise a ``ValueError`` naming what is non-finite, and where, before anything is sampled.

    Checked in order: the parameters ``w*`` (every element), the data and query sets (every
    float leaf and example: NumPy on the host for host arrays, one compiled reduction for
    device arrays, so a device data set is read once and never copied to the host), then the
    per-example losses and the gradient of their mean at ``w*`` on the first
    ``FINITE_CHECK_EXAMPLES`` examples (one small compiled evaluation, no full pass over the
    data; :func:`slt_jax.estimators.estimate.estimate_llc` checks the losses of all examples
    when it computes :math:`L_n(w^*)`).
    """
    from slt_jax._structural import StructuralKey

    param_leaves = jax.tree.leaves(params)
    _check_finite_params(params, _all_finite(param_leaves))
    check_finite_data(data)
    for name, query in dict(query_data or {}).items():
        check_finite_data(query, f"query_data[{name!r}]")
    size = min(num_examples(data), FINITE_CHECK_EXAMPLES)
    batch = jax.tree.map(lambda x: x[:size], data)
    per_example, gradient_finite = _center_finiteness(
        params, batch, loss_fn=StructuralKey(loss_fn)
    )
    raise_for_nonfinite_losses(np.flatnonzero(~np.asarray(per_example)))
    paths = [path for path, _ in jax.tree_util.tree_leaves_with_path(params)]
    bad_leaves = [jax.tree_util.keystr(path) or "<root>"
                  for path, finite in zip(paths, gradient_finite) if not bool(finite)]
    if bad_leaves:
        raise ValueError(
            f"the gradient of the loss at w* is non-finite in params leaf {bad_leaves[0]}"
            + (f" (and {bad_leaves[1:]})" if len(bad_leaves) > 1 else "")
            + f", although the losses of the first {size} examples are finite there (e.g. "
            "sqrt, log or a norm evaluated at 0, or the gradient of jnp.where through a nan "
            "branch); the sampler follows this gradient, so make loss_fn differentiable at w*"
        )


def raise_for_nonfinite_losses(bad_examples, count: int | None = None) -> None:
    """The error for per-example losses at w* that are nan/inf at ``bad_examples``."""
    if len(bad_examples) == 0:
        return
    count = len(bad_examples) if count is None else count
    raise ValueError(
        f"loss_fn(params, batch) at w* is non-finite for {count} example(s): "
        f"{_listed(bad_examples)} (data there is finite); the sampler would see nan losses "
        "and gradients whenever a minibatch contains them. Fix loss_fn (e.g. clip the argument "
        "of a log) or remove those examples"
    )


# per-step displacement of a coordinate at stationarity, by sampler: (expression, function)
_STEP_DISPLACEMENTS = {
    "sgld": ("sqrt(ε)", lambda h: math.sqrt(h["step_size"] * h.get("temperature", 1.0))),
    "rmsprop_sgld": ("sqrt(ε/stability)", lambda h: math.sqrt(h["step_size"] / h["stability"])),
    "adam_sgld": ("sqrt(ε/stability)", lambda h: math.sqrt(h["step_size"] / h["stability"])),
    "sghmc": ("sqrt(ε)", lambda h: math.sqrt(h["step_size"])),
    "sgnht": ("ε·|p| with |p|~1", lambda h: h["step_size"]),
}
#: warn when at least this fraction of the coordinates would round the typical step to zero
LOST_STEP_FRACTION = 0.1


@jax.jit
def _lost_step_summary(params, displacement):
    """Per leaf: how many coordinates have ``displacement < spacing(w)/2`` (so an update of
    that size rounds to zero in the leaf's dtype), the RMS of ``w`` and the typical spacing."""
    def one(leaf):
        magnitude = jnp.abs(leaf)
        spacing = (jnp.nextafter(magnitude, jnp.full_like(magnitude, jnp.inf)) - magnitude)
        lost = jnp.sum(displacement < spacing.astype(jnp.float32) / 2)
        rms = jnp.sqrt(jnp.mean(jnp.square(leaf.astype(jnp.float32))))
        typical = rms.astype(leaf.dtype)
        spacing_at_rms = jnp.nextafter(typical, jnp.full_like(typical, jnp.inf)) - typical
        return lost, rms, spacing_at_rms.astype(jnp.float32)

    return [one(leaf) for leaf in jax.tree.leaves(params)]


def warn_if_step_below_resolution(params: PyTree, sampler_name, hyperparameters: dict,
                                  stacklevel: int = 3) -> None:
    r"""Warn when the sampler's typical per-step displacement is below the parameters'
    floating-point resolution, so that most updates round to zero and the chains do not move.

    Criterion (ours): an update :math:`\delta` added to :math:`w` in a floating-point type is
    lost when :math:`|\delta| < \operatorname{spacing}(w)/2` (round to nearest). At
    stationarity the noise dominates each step (the drift :math:`\tfrac\epsilon2\nabla U` is
    about :math:`\sqrt{\epsilon\lambda}/2 < 1` times the noise for a stable step), so the
    displacement compared is the noise scale: :math:`\sqrt{\epsilon T}` for SGLD,
    :math:`\sqrt{\epsilon/a}` (the largest) for RMSProp/Adam-SGLD, :math:`\sqrt\epsilon` for
    SGHMC (its stationary velocity), :math:`\epsilon` for SGNHT (:math:`|p| \approx 1`); an
    unnamed sampler with a ``step_size`` is taken as Langevin (:math:`\sqrt\epsilon`). The
    warning fires when at least ``LOST_STEP_FRACTION`` of the coordinates of :math:`w^*`
    would lose it.
    """
    expression, rule = _STEP_DISPLACEMENTS.get(
        sampler_name, ("sqrt(ε)", lambda h: math.sqrt(h["step_size"]))
    )
    try:
        displacement = float(rule(hyperparameters))
    except (KeyError, TypeError, ValueError):
        return  # a sampler we cannot read: no claim
    if not displacement > 0 or not math.isfinite(displacement):
        return
    leaves = jax.tree_util.tree_leaves_with_path(params)
    summary = _lost_step_summary([leaf for _, leaf in leaves], np.float32(displacement))
    lost = np.array([int(s[0]) for s in summary])
    total = sum(int(np.size(leaf)) for _, leaf in leaves)
    if lost.sum() < LOST_STEP_FRACTION * total:
        return
    worst = int(np.argmax(lost / np.maximum([np.size(leaf) for _, leaf in leaves], 1)))
    path, leaf = leaves[worst]
    dtype = jnp.result_type(leaf)
    step_size = hyperparameters.get("step_size")
    warnings.warn(
        f"step_size {step_size:g} gives a per-step displacement {expression}="
        f"{displacement:.0e}, below half the {dtype} resolution of the parameters on "
        f"{100 * lost.sum() / total:.0f}% of the coordinates (e.g. params leaf "
        f"{jax.tree_util.keystr(path) or '<root>'} at |w|~{float(summary[worst][1]):.2g}, "
        f"where the {dtype} spacing is {float(summary[worst][2]):.1e}): those updates round "
        "to zero and the chains do not move; use float32 params or a larger step size",
        RuntimeWarning,
        stacklevel=stacklevel,
    )


def _dtype(leaf):
    return np.dtype(getattr(leaf, "dtype", None) or np.result_type(leaf))
