r"""The sampling driver: many localized SGMCMC chains in one compiled program.

:func:`sample` builds a single ``jax.jit``-compiled program: a ``lax.scan`` over steps whose
body is the single-chain step ``vmap``-ed over chains. Minibatch indices are drawn inside the
scan, data is an argument of the program (never a baked-in constant), burn-in steps are run
and discarded, and sampler hyperparameters are passed as data, so a new key, step size or
nβ reuses the compiled program.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from slt_jax.samplers._base import Sampler, mask_as_floats

PyTree = Any

# Number of times the sampling program has been traced (a compile-once check for tests).
TRACE_COUNT = [0]


class Trace(NamedTuple):
    """What :func:`sample` records.

    Attributes:
      loss: ``(num_chains, num_draws)`` minibatch mean loss at each draw (the full-data mean
        loss when ``batch_size=None``), evaluated at the draw's parameters.
      observables: ``{name: (num_chains, num_draws, *out)}`` for each requested observable.
      diverged: ``(num_chains,)`` bool, True where a chain produced a non-finite loss at any
        step (burn-in included).
      first_nonfinite_step: ``(num_chains,)`` int, the first step (counting burn-in) with a
        non-finite loss, ``-1`` if none.
      final_params: the chains' parameters after the last step (the params pytree with a
        leading ``num_chains`` axis), e.g. to inspect where the chains went.
    """

    loss: jax.Array
    observables: dict
    diverged: jax.Array
    first_nonfinite_step: jax.Array
    final_params: Any = None

    @property
    def num_chains(self) -> int:
        return self.loss.shape[0]

    @property
    def num_draws(self) -> int:
        return self.loss.shape[1]


class _Config(NamedTuple):
    """Everything static about a sampling program (hashable: the jit cache key)."""

    loss_fn: Callable
    sampler_factory: Callable | None
    sampler_static: tuple
    sampler_transform: Any
    observables: tuple
    num_chains: int
    num_draws: int
    num_burnin: int
    steps_per_draw: int
    batch_size: int | None
    num_samples: int
    progress_every: int
    mesh: Any = None
    chain_axis: str | None = None
    data_axis: str | None = None


# --------------------------------------------------------------------------------------------
# Input validation (runs before anything is compiled)
# --------------------------------------------------------------------------------------------


def _check_int(name, value, minimum):
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


def _example_batch(data: PyTree, size: int) -> PyTree:
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((size,) + jnp.shape(x)[1:], jnp.result_type(x)), data
    )


def check_loss_fn(loss_fn: Callable, params: PyTree, data: PyTree, batch_size: int) -> tuple:
    """Trace ``loss_fn`` abstractly; it must return float per-example losses ``(b,)`` or ``(b, T)``."""
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable loss_fn(params, batch), got {loss_fn!r}")
    try:
        out = jax.eval_shape(loss_fn, params, _example_batch(data, batch_size))
    except Exception as error:  # re-raise with what we called it with
        raise type(error)(
            f"loss_fn(params, batch) failed on a batch of {batch_size} examples: {error}"
        ) from error
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


def _check_key(key):
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


def _chain_keys(key, num_chains):
    key = _check_key(key)
    if key.ndim == 0:
        return jax.random.split(key, num_chains)
    if key.shape != (num_chains,):
        raise ValueError(
            f"key must be one key or an array of num_chains={num_chains} keys, got shape {key.shape}"
        )
    return key


def _check_observables(observables, params):
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
            raise type(error)(f"observable {name!r} failed on params: {error}") from error
        items.append((name, fn))
    return tuple(items)


def _auto_mesh(mesh):
    """The same devices and axis names with every axis in Auto (GSPMD) mode."""
    auto = (jax.sharding.AxisType.Auto,) * len(mesh.axis_names)
    if tuple(getattr(mesh, "axis_types", auto)) == auto:
        return mesh
    return jax.sharding.Mesh(mesh.devices, mesh.axis_names, axis_types=auto)


def _check_mesh(mesh, chain_axis, data_axis, num_chains, batch_size):
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


# --------------------------------------------------------------------------------------------
# Progress (host callback every k draws, off by default)
# --------------------------------------------------------------------------------------------

_ACTIVE_PROGRESS = [None]


def _report_progress(steps_done):
    bar = _ACTIVE_PROGRESS[0]
    if bar is not None and int(steps_done) > bar.n:
        bar.update(int(steps_done) - bar.n)  # respects tqdm's mininterval


def _blocked_scan(body, carry, length, block, report):
    """``lax.scan(body, carry, None, length)`` with ``report(carry)`` after every ``block``
    iterations (and at the end), without a per-iteration branch: an outer scan over blocks of
    an inner scan. ``block <= 0`` is a plain scan. Outputs are stacked as by ``lax.scan``.
    """
    if block <= 0 or length == 0:
        return jax.lax.scan(body, carry, None, length=length)
    block = min(block, length)
    blocks, remainder = divmod(length, block)

    def block_body(carry, _):
        carry, outputs = jax.lax.scan(body, carry, None, length=block)
        report(carry)
        return carry, outputs

    carry, outputs = jax.lax.scan(block_body, carry, None, length=blocks)
    outputs = jax.tree.map(lambda x: x.reshape((blocks * block,) + x.shape[2:]), outputs)
    if remainder:
        carry, rest = jax.lax.scan(body, carry, None, length=remainder)
        report(carry)
        outputs = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), outputs, rest)
    return carry, outputs


# --------------------------------------------------------------------------------------------
# The compiled program
# --------------------------------------------------------------------------------------------


def _build_transform(config: _Config, hyperparameters, mask):
    if config.sampler_factory is None:
        return config.sampler_transform
    return config.sampler_factory(**hyperparameters, **dict(config.sampler_static), mask=mask)


def _constrain(tree, config: _Config, *axes):
    """Pin the leading axes of every leaf to mesh axes (no-op without a mesh)."""
    if config.mesh is None:
        return tree
    sharding = jax.sharding.NamedSharding(config.mesh, jax.sharding.PartitionSpec(*axes))
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)


def _make_step(config: _Config, transform, data):
    """One step of every chain: ``(state, chain_keys, step) -> (state, losses)``.

    The minibatch gather runs over all chains at once, producing a ``(chains, b, ...)`` batch
    that can be sharded over chains and, for data parallelism, over its example axis.
    """

    def mean_loss(params, batch):
        return jnp.mean(config.loss_fn(params, batch))

    value_and_grad = jax.value_and_grad(mean_loss)

    def step_keys(chain_key, step):
        return jax.random.split(jax.random.fold_in(chain_key, step))

    def draw_indices(batch_key):
        return jax.random.randint(batch_key, (config.batch_size,), 0, config.num_samples)

    def update(grads, sampler_state, params, noise_key):
        return transform.update(grads, sampler_state, params, key=noise_key)

    def step_all_chains(state, chain_keys, step):
        params, sampler_state, first_nonfinite = state
        keys = jax.vmap(step_keys, in_axes=(0, None))(chain_keys, step)
        batch_keys, noise_keys = keys[:, 0], keys[:, 1]
        if config.batch_size is None:
            loss, grads = jax.vmap(value_and_grad, in_axes=(0, None))(params, data)
        else:
            indices = jax.vmap(draw_indices)(batch_keys)  # (chains, b)
            indices = _constrain(indices, config, config.chain_axis, config.data_axis)
            batch = jax.tree.map(lambda x: jnp.take(x, indices, axis=0), data)
            batch = _constrain(batch, config, config.chain_axis, config.data_axis)
            loss, grads = jax.vmap(value_and_grad)(params, batch)
        updates, sampler_state = jax.vmap(update)(grads, sampler_state, params, noise_keys)
        params = optax.apply_updates(params, updates)
        first_nonfinite = jnp.where(
            (first_nonfinite < 0) & ~jnp.isfinite(loss), step, first_nonfinite
        )
        state = _constrain((params, sampler_state, first_nonfinite), config, config.chain_axis)
        return state, loss

    return step_all_chains


@functools.partial(jax.jit, static_argnames=("config",))
def _program(params, data, hyperparameters, mask, chain_keys, *, config: _Config):
    TRACE_COUNT[0] += 1
    transform = _build_transform(config, hyperparameters, mask)
    chain_params = jax.tree.map(
        lambda x: jnp.broadcast_to(x, (config.num_chains,) + jnp.shape(x)), params
    )
    sampler_state = jax.vmap(transform.init)(chain_params)
    first_nonfinite = jnp.full((config.num_chains,), -1, dtype=jnp.int32)
    state = _constrain((chain_params, sampler_state, first_nonfinite), config, config.chain_axis)
    if config.batch_size is None and config.data_axis is not None:
        data = _constrain(data, config, config.data_axis)
    step_all_chains = _make_step(config, transform, data)

    def report(carry):
        jax.debug.callback(_report_progress, carry[1])

    def burnin_body(carry, _):
        state, step = carry
        state, _ = step_all_chains(state, chain_keys, step)
        return (state, step + 1), None

    (state, step), _ = _blocked_scan(
        burnin_body,
        (state, jnp.zeros((), jnp.int32)),
        config.num_burnin,
        config.progress_every * config.steps_per_draw,
        report,
    )

    observe = jax.vmap(lambda p: {name: fn(p) for name, fn in config.observables})

    def inner_body(carry, _):
        state, step = carry
        state, _ = step_all_chains(state, chain_keys, step)
        return (state, step + 1), None

    def draw_body(carry, _):
        state, step = carry
        observed = observe(state[0])
        # the draw's loss is the first step's (at the draw's parameters); the remaining
        # steps_per_draw - 1 steps record nothing, so thinning costs no memory
        state, loss = step_all_chains(state, chain_keys, step)
        (state, step), _ = jax.lax.scan(
            inner_body, (state, step + 1), None, length=config.steps_per_draw - 1
        )
        return (state, step), (loss, observed)

    (state, step), (losses, observed) = _blocked_scan(
        draw_body, (state, step), config.num_draws, config.progress_every, report
    )
    first_nonfinite = state[2]
    trace = Trace(
        loss=jnp.swapaxes(losses, 0, 1),
        observables={
            k: jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), v) for k, v in observed.items()
        },
        diverged=first_nonfinite >= 0,
        first_nonfinite_step=first_nonfinite,
        final_params=state[0],
    )
    return _constrain(trace, config, config.chain_axis)


def _prepare(
    loss_fn, params, data, sampler, *, key, num_chains, num_draws, num_burnin, steps_per_draw,
    batch_size, observables, progress, progress_every, mesh, chain_axis, data_axis,
):
    """Validate everything (before any compilation) and build the program's arguments."""
    if not hasattr(sampler, "init") or not hasattr(sampler, "update"):
        raise TypeError(
            "sampler must be an optax GradientTransformationExtraArgs such as "
            f"slt_jax.samplers.sgld(...), got {sampler!r}"
        )
    num_chains = _check_int("num_chains", num_chains, 1)
    num_draws = _check_int("num_draws", num_draws, 1)
    num_burnin = _check_int("num_burnin", num_burnin, 0)
    steps_per_draw = _check_int("steps_per_draw", steps_per_draw, 1)
    check_params(params)
    n = num_examples(data)
    if batch_size is not None:
        batch_size = _check_int("batch_size", batch_size, 1)
        if batch_size > n:
            raise ValueError(
                f"batch_size must be at most the number of examples n={n}, got {batch_size} "
                "(use batch_size=None for full-batch gradients)"
            )
    check_loss_fn(loss_fn, params, data, n if batch_size is None else batch_size)
    if mesh is None:
        chain_axis = data_axis = None
    else:
        _check_mesh(mesh, chain_axis, data_axis, num_chains, batch_size or n)
        mesh = _auto_mesh(mesh)
    observable_items = _check_observables(observables, params)
    chain_keys = _chain_keys(key, num_chains)

    if isinstance(sampler, Sampler):
        factory, static, transform = sampler.factory, sampler.static, None
        dtype = jnp.result_type(*jax.tree.leaves(params))
        hyperparameters = {
            k: jnp.asarray(v, dtype=dtype) for k, v in sampler.hyperparameters.items()
        }
        mask = mask_as_floats(sampler.mask, params) if sampler.mask is not None else None
    else:
        factory, static, transform = None, (), sampler
        hyperparameters, mask = {}, None

    if progress_every is None:
        # ~25 updates a run: each is a host round trip (measured ≈ 1 ms on CPU)
        progress_every = max(1, num_draws // 25)
    config = _Config(
        loss_fn=loss_fn,
        sampler_factory=factory,
        sampler_static=static,
        sampler_transform=transform,
        observables=observable_items,
        num_chains=num_chains,
        num_draws=num_draws,
        num_burnin=num_burnin,
        steps_per_draw=steps_per_draw,
        batch_size=batch_size,
        num_samples=n,
        progress_every=progress_every if progress else 0,
        mesh=mesh,
        chain_axis=chain_axis,
        data_axis=data_axis,
    )
    arguments = (params, data, hyperparameters, mask, chain_keys)
    return arguments, config


def compiled_memory(loss_fn, params, data, sampler, **sample_kwargs) -> dict:
    """Compile (without running) the program :func:`sample` would run and report its memory.

    Returns XLA's ``memory_analysis`` in bytes: ``arguments`` (params, data, keys), ``output``
    (the stored draws), ``temporary`` (chain states, gradients, activations) and ``total``.
    Use it to check that a model fits before sampling; the temporary memory does not grow with
    ``num_burnin`` or ``steps_per_draw`` (tests/test_memory.py).
    """
    sample_kwargs.setdefault("progress", False)
    sample_kwargs.setdefault("progress_every", None)
    for name, default in (("num_burnin", 0), ("steps_per_draw", 1), ("batch_size", None),
                          ("observables", None), ("mesh", None), ("chain_axis", "chains"),
                          ("data_axis", None)):
        sample_kwargs.setdefault(name, default)
    arguments, config = _prepare(loss_fn, params, data, sampler, **sample_kwargs)
    analysis = _program.lower(*arguments, config=config).compile().memory_analysis()
    result = {
        "arguments": int(analysis.argument_size_in_bytes),
        "output": int(analysis.output_size_in_bytes),
        "temporary": int(analysis.temp_size_in_bytes),
    }
    result["total"] = sum(result.values())
    return result


def sample(
    loss_fn: Callable[[PyTree, PyTree], jax.Array],
    params: PyTree,
    data: PyTree,
    sampler: optax.GradientTransformationExtraArgs,
    *,
    key: jax.Array,
    num_chains: int,
    num_draws: int,
    num_burnin: int = 0,
    steps_per_draw: int = 1,
    batch_size: int | None = None,
    observables: Mapping[str, Callable[[PyTree], jax.Array]] | None = None,
    progress: bool = False,
    progress_every: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    chain_axis: str | None = "chains",
    data_axis: str | None = None,
) -> Trace:
    r"""Run ``num_chains`` SGMCMC chains localized at ``params`` and record draws.

    Each step draws a minibatch of ``batch_size`` example indices uniformly *with replacement*
    (ours; ``batch_size=None`` uses the full data), computes
    :math:`L_B(w), \nabla L_B(w)` of the minibatch mean loss, and applies
    ``sampler.update(grads, state, params, key=...)``. All chains start at ``params``
    (:math:`w^*`, the localization center recorded by ``sampler.init``). After ``num_burnin``
    discarded steps, ``num_draws`` draws are recorded ``steps_per_draw`` steps apart; at each
    draw the minibatch loss at the draw's parameters and every observable ``fn(params)`` are
    stored.

    The whole run is one ``jax.jit``-compiled program: ``lax.scan`` over steps, ``vmap`` over
    chains, data and sampler hyperparameters passed as arguments. A new ``key`` or new
    hyperparameter values (for samplers from :mod:`slt_jax.samplers`) reuse the compiled
    program; a new ``loss_fn``, sampler kind, shape or count recompiles.

    Args:
      loss_fn: ``loss_fn(params, batch) -> (b,)`` or ``(b, T)`` per-example (per-token) losses.
      params: the point :math:`w^*` to localize at (pytree of float arrays).
      data: pytree of arrays sharing a leading axis of length ``n``.
      sampler: a sampler from :mod:`slt_jax.samplers` (or any optax
        ``GradientTransformationExtraArgs`` whose ``update`` takes ``key=``).
      key: a ``jax.random.key``, or an array of ``num_chains`` keys (one per chain).
      num_chains, num_draws, num_burnin, steps_per_draw: chain counts and lengths.
      batch_size: minibatch size ``b`` (``None``: full batch).
      observables: ``{name: fn(params) -> array}`` evaluated at each draw.
      progress: show a tqdm progress bar (a host callback every ``progress_every`` draws;
        off by default, so the loop has no host synchronisation).
      mesh: a ``jax.sharding.Mesh`` to spread the run over devices: chains are sharded over
        the mesh axis ``chain_axis`` and, if ``data_axis`` is given, each chain's minibatch
        (or the full data) is sharded over ``data_axis`` (data-parallel gradients). The same
        code runs on one CPU, several GPUs or a TPU pod slice (multi-host: call
        ``jax.distributed.initialize()`` first and build the mesh from ``jax.devices()``).
        The returned trace stays sharded over chains until you gather it.

    Returns:
      a :class:`Trace`. Non-finite losses are detected per chain (``trace.diverged``).
    """
    arguments, config = _prepare(
        loss_fn, params, data, sampler, key=key, num_chains=num_chains, num_draws=num_draws,
        num_burnin=num_burnin, steps_per_draw=steps_per_draw, batch_size=batch_size,
        observables=observables, progress=progress, progress_every=progress_every, mesh=mesh,
        chain_axis=chain_axis, data_axis=data_axis,
    )
    if not progress:
        return _program(*arguments, config=config)

    from tqdm.auto import tqdm

    total = config.num_burnin + config.num_draws * config.steps_per_draw
    with tqdm(total=total, desc=f"sampling {num_chains} chains", unit="step") as bar:
        _ACTIVE_PROGRESS[0] = bar
        try:
            trace = _program(*arguments, config=config)
            jax.block_until_ready(trace)
        finally:
            _ACTIVE_PROGRESS[0] = None
        if bar.n < total:
            bar.update(total - bar.n)
    return trace


# --------------------------------------------------------------------------------------------
# Full-data loss in chunks
# --------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("loss_fn", "chunk_size"))
def _chunked_mean_loss(params, data, *, loss_fn, chunk_size):
    n = jax.tree.leaves(data)[0].shape[0]
    num_chunks = math.ceil(n / chunk_size)
    indices = jnp.arange(num_chunks * chunk_size).reshape(num_chunks, chunk_size)

    def chunk_total(chunk_indices):
        valid = chunk_indices < n
        batch = jax.tree.map(lambda x: jnp.take(x, jnp.minimum(chunk_indices, n - 1), axis=0), data)
        losses = loss_fn(params, batch)
        weights = valid.reshape((-1,) + (1,) * (losses.ndim - 1)).astype(losses.dtype)
        return jnp.sum(losses * weights), jnp.sum(jnp.broadcast_to(weights, losses.shape))

    totals, counts = jax.lax.map(chunk_total, indices)
    return jnp.sum(totals) / jnp.sum(counts)


def evaluate_loss(
    loss_fn: Callable[[PyTree, PyTree], jax.Array],
    params: PyTree,
    data: PyTree,
    *,
    chunk_size: int = 4096,
) -> jax.Array:
    r""":math:`L_n(w)`: the mean per-example (per-token) loss over *all* of ``data``.

    Computed in chunks of ``chunk_size`` examples (``lax.map``) so memory stays bounded; use
    it for the LLC's :math:`L_n(w^*)`, which must never come from a single minibatch.
    """
    check_params(params)
    n = num_examples(data)
    chunk_size = _check_int("chunk_size", chunk_size, 1)
    chunk_size = min(chunk_size, n)
    check_loss_fn(loss_fn, params, data, chunk_size)
    return _chunked_mean_loss(params, data, loss_fn=loss_fn, chunk_size=chunk_size)
