"""Input validation for the sampling driver: everything here runs before anything is compiled,
and every error says what was expected."""

from __future__ import annotations

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


def check_params(params: PyTree) -> None:
    """Parameters must be a non-empty pytree of floating-point arrays."""
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
                f"data leaf at {jax.tree_util.keystr(path)} is a scalar; every data leaf needs a "
                "leading example axis of length n"
            )
        sizes[jax.tree_util.keystr(path) or "<root>"] = shape[0]
    if len(set(sizes.values())) != 1:
        listing = ", ".join(f"{k}: {v}" for k, v in sizes.items())
        raise ValueError(
            "all data leaves must share the leading (example) axis length n; got " + listing
        )
    return next(iter(sizes.values()))


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
    return out.shape


def check_key(key):
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


def check_stream_names(observables: tuple, query_shapes: tuple) -> tuple:
    """Stream names (``"loss"``, observables, query sets) must be distinct."""
    names = ["loss"] + [name for name, _ in observables] + [name for name, _ in query_shapes]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(
            f"stream names must be distinct: {duplicates} is used more than once among 'loss', "
            "the observables and the query sets"
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
