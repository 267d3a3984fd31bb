r"""The sampling driver: many localized SGMCMC chains, one compiled program.

:func:`sample` advances every chain with one ``jax.jit``-compiled *block program*: a
``lax.scan`` over ``draws_per_block`` draws whose body is the single-chain step ``vmap``-ed over
chains. Minibatch indices are drawn inside the scan; data, query sets, the sampler's state
(which holds its hyperparameters and mask) and the accumulators' states are arguments of the
program, never baked-in constants; the number of valid draws in a block, the thinning and
whether a block records anything are arguments too. So burn-in, draws, the calibration's pilot
runs and a second run with a new key, step size, mask or query set all reuse one compiled
program (per model, chain count, batch size and stream shapes).

Per draw the driver records *streams*: ``"loss"`` (the minibatch loss at the draw), every
observable ``fn(params)``, and the per-example (per-token) losses of ``loss_fn`` on each named
query set, evaluated in chunks. Each stream is stored in the :class:`Trace` (``store=``) and/or
reduced by streaming accumulators (:mod:`slt_jax.accumulators`) whose state lives in the loop
carry, so their memory does not grow with the number of draws.

The host runs the blocks one after another (a Python loop over ``num_draws / draws_per_block``
blocks, asynchronously dispatched; no host synchronisation unless a progress meter is shown).
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from typing import Any, Callable, Mapping, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

from slt_jax._checks import (
    auto_mesh,
    chain_keys as make_chain_keys,
    check_accumulators,
    check_int,
    check_key,
    check_loss_fn,
    check_mesh,
    check_observables,
    check_one_device,
    check_params,
    check_query_data,
    check_initial_state,
    check_store,
    check_stream_names,
    num_examples,
)
from slt_jax._checks import (
    LISTED_INDICES,
    check_finite_at_center,
    raise_for_nonfinite_losses,
    warn_if_step_below_resolution,
)
from slt_jax._chunking import (
    flat_mean_gradient,
    losses_in_chunks,
    mean_loss_and_finite_in_chunks,
    mean_loss_in_chunks,
)
from slt_jax._structural import StructuralKey
from slt_jax.adapters import as_params
from slt_jax.samplers._base import end_of_burnin

PyTree = Any

__all__ = [
    "ChainState",
    "ProgressMeter",
    "SampleOptions",
    "Trace",
    "check_key",
    "check_loss_fn",
    "check_params",
    "compiled_memory",
    "count_compilations",
    "evaluate_loss",
    "num_examples",
    "sample",
]

#: default number of draws per compiled block (fewer when the per-draw streams are large)
DEFAULT_DRAWS_PER_BLOCK = 128
#: memory budget for one block of per-draw streams when choosing ``draws_per_block``
BLOCK_MEMORY_BUDGET = 256 * 2**20
DEFAULT_QUERY_CHUNK_SIZE = 1024


class ChainState(NamedTuple):
    """The state of every chain between steps (leading axis ``num_chains`` except ``step``).

    Attributes:
      params: the chains' parameters.
      sampler_state: the sampler's state (its hyperparameters and mask included).
      step: ``()`` int32, steps taken so far (burn-in included); the noise and minibatch of a
        step come from ``fold_in(chain_key, step)``.
      first_nonfinite_step: ``(num_chains,)`` int32, the first step with a non-finite loss,
        ``-1`` if none.
    """

    params: PyTree
    sampler_state: PyTree
    step: jax.Array
    first_nonfinite_step: jax.Array


class Trace(NamedTuple):
    """What :func:`sample` records.

    Attributes:
      loss: ``(num_chains, num_draws)`` minibatch mean loss at each draw (the full-data mean
        loss when ``batch_size=None``), evaluated at the draw's parameters, in JAX's default
        float type (float32 also for float16/bfloat16 parameters).
      observables: ``{name: (num_chains, num_draws, *out)}`` for each stored observable.
      diverged: ``(num_chains,)`` bool, True where a chain produced a non-finite loss at any
        step (burn-in included).
      first_nonfinite_step: ``(num_chains,)`` int, the first step (counting burn-in) with a
        non-finite loss, ``-1`` if none.
      final_params: the chains' parameters after the last step (the params pytree with a
        leading ``num_chains`` axis), e.g. to inspect where the chains went.
      query_losses: ``{name: (num_chains, num_draws, q)}`` (``(..., q, T)`` for per-token
        losses): ``loss_fn`` on each stored query set at each draw.
      accumulators: ``{name: result}``, each accumulator's ``finalize`` of its state.
      state: the final :class:`ChainState`.
      hyperparameters: the sampler's numeric hyperparameters at the start of the run (read
        from its state), e.g. ``{"step_size": ..., "nbeta": ..., "localization": ...}``, and
        the run's ``num_burnin`` and ``steps_per_draw`` (so the draws can be placed on a step
        axis).
      center_loss: ``(num_chains, num_draws)`` the same minibatch's mean loss at the center
        :math:`w^*` (the ``params`` passed to :func:`sample`), so that
        ``loss - center_loss`` is the paired estimate of :math:`L_n(w_t) - L_n(w^*)`: it has
        the same expectation (the minibatch is drawn uniformly, independently of
        :math:`w_t`), but the minibatch-to-minibatch noise cancels instead of being averaged.
    """

    loss: jax.Array | None
    observables: dict
    diverged: jax.Array
    first_nonfinite_step: jax.Array
    final_params: Any = None
    query_losses: dict = {}
    accumulators: dict = {}
    state: ChainState | None = None
    hyperparameters: dict = {}
    center_loss: jax.Array | None = None

    @property
    def num_chains(self) -> int:
        return self.diverged.shape[0]

    @property
    def num_draws(self) -> int:
        stored = [self.loss, *self.observables.values(), *self.query_losses.values()]
        for array in stored:
            if array is not None:
                return jax.tree.leaves(array)[0].shape[1]
        raise ValueError("this trace stores no stream, so it does not know its number of draws")


class SampleOptions(NamedTuple):
    """The run options of :func:`sample`, validated once (see :func:`sample` for each)."""

    num_chains: int
    num_draws: int
    num_burnin: int = 0
    steps_per_draw: int = 1
    batch_size: int | None = None
    draws_per_block: int | None = None
    query_chunk_size: int = DEFAULT_QUERY_CHUNK_SIZE
    store: tuple | None = None
    mesh: Any = None
    chain_axis: str | None = "chains"
    data_axis: str | None = None
    #: examples gathered at once: a step's minibatch of ``batch_size`` examples (all ``n``
    #: for ``batch_size=None``) is evaluated in ``ceil(batch_size / batch_chunk)`` chunks whose
    #: gradients are summed, so the batch size is data of the program (``None``: one gather of
    #: ``batch_size`` examples, the batch size is part of the program)
    batch_chunk: int | None = None

    def validated(self, num_samples: int) -> "SampleOptions":
        """A copy with every count checked (``ValueError``/``TypeError`` saying what is expected)."""
        counts = dict(
            num_chains=check_int("num_chains", self.num_chains, 1),
            num_draws=check_int("num_draws", self.num_draws, 1),
            num_burnin=check_int("num_burnin", self.num_burnin, 0),
            steps_per_draw=check_int("steps_per_draw", self.steps_per_draw, 1),
            query_chunk_size=check_int("query_chunk_size", self.query_chunk_size, 1),
        )
        if self.draws_per_block is not None:
            counts["draws_per_block"] = check_int("draws_per_block", self.draws_per_block, 1)
        if self.batch_size is not None:
            counts["batch_size"] = check_int("batch_size", self.batch_size, 1)
            if counts["batch_size"] > num_samples:
                raise ValueError(
                    f"batch_size must be at most the number of examples n={num_samples}, got "
                    f"{self.batch_size} (use batch_size=None for full-batch gradients)"
                )
        if self.batch_chunk is not None:
            counts["batch_chunk"] = min(check_int("batch_chunk", self.batch_chunk, 1), num_samples)
        options = self._replace(**counts)
        if options.mesh is None:
            return options._replace(chain_axis=None, data_axis=None)
        check_mesh(options.mesh, options.chain_axis, options.data_axis, options.num_chains,
                   options.batch_chunk or options.batch_size or num_samples)
        return options._replace(mesh=auto_mesh(options.mesh))


# --------------------------------------------------------------------------------------------
# Progress meters (passed in as objects; nothing process-wide)
# --------------------------------------------------------------------------------------------


class ProgressMeter(Protocol):
    """What :func:`sample` calls to report progress: ``start`` once, ``update`` after each block
    with the number of steps it ran (``phase`` is ``"compiling"``, ``"burn-in"`` or
    ``"sampling"``), ``close`` at the end (also after an error)."""

    def start(self, total_steps: int, description: str) -> None: ...

    def update(self, steps: int, phase: str) -> None: ...

    def close(self) -> None: ...


class TqdmProgress:
    """A :class:`ProgressMeter` drawing a tqdm bar (``sample(progress=True)``)."""

    def __init__(self, **tqdm_options):
        self.tqdm_options = tqdm_options
        self.bar = None

    def start(self, total_steps, description):
        with warnings.catch_warnings():  # Jupyter without ipywidgets: tqdm falls back to text
            warnings.filterwarnings("ignore", message="IProgress not found")
            from tqdm.auto import tqdm

        self.description = description
        self.bar = tqdm(total=total_steps, desc=description, unit="step", **self.tqdm_options)

    def update(self, steps, phase):
        self.bar.set_description(f"{self.description} ({phase})", refresh=False)
        self.bar.update(steps)

    def close(self):
        if self.bar is not None:
            self.bar.close()


class _NoProgress:
    def start(self, total_steps, description):
        pass

    def update(self, steps, phase):
        pass

    def close(self):
        pass


def _progress_meter(progress) -> ProgressMeter:
    if progress is True:
        return TqdmProgress()
    if progress is False or progress is None:
        return _NoProgress()
    if all(hasattr(progress, name) for name in ("start", "update", "close")):
        return progress
    raise TypeError(
        f"progress must be True, False or a ProgressMeter (start/update/close), got {progress!r}"
    )


# --------------------------------------------------------------------------------------------
# The compiled block program
# --------------------------------------------------------------------------------------------


class _Program(NamedTuple):
    """Everything static about a block program (hashable: the jit cache key)."""

    loss_fn: StructuralKey
    update: StructuralKey
    observables: StructuralKey  # ((name, fn), ...)
    accumulators: StructuralKey  # ((name, streams, update), ...): init and finalize run outside
    query_names: tuple
    stored: tuple
    num_chains: int
    batch_size: int | None
    num_samples: int
    draws_per_block: int
    query_chunk_size: int
    mesh: Any = None
    chain_axis: str | None = None
    data_axis: str | None = None
    #: ``batch_size`` is the chunk gathered at once and the step's batch is data (``_Controls``)
    chunked: bool = False
    #: evaluate each recorded draw's minibatch at w* too (only where a stream reads
    #: ``"center_loss"``: stored, or read by an accumulator)
    pair: bool = True


class _Controls(NamedTuple):
    """Per-block values passed as data (never recompile)."""

    num_valid: jax.Array  # draws of this block that run (the rest of the scan is skipped)
    steps_per_draw: jax.Array
    record: jax.Array  # False during burn-in: nothing is observed or accumulated
    # chunked programs only: examples per step (n for the full batch), chunks per step, and
    # whether the chunks walk through the data in order (full batch) instead of drawing
    examples: jax.Array = np.int32(1)
    num_chunks: jax.Array = np.int32(1)
    full_batch: jax.Array = np.bool_(False)


def _constrain(tree, program: _Program, *axes):
    """Pin the leading axes of every leaf to mesh axes (no-op without a mesh)."""
    if program.mesh is None:
        return tree
    sharding = jax.sharding.NamedSharding(program.mesh, jax.sharding.PartitionSpec(*axes))
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)


def _make_step(program: _Program, data, chain_keys, center, controls=None):
    """One step of every chain:
    ``(ChainState, at_center) -> (ChainState, losses (num_chains,), center losses (num_chains,))``.

    The minibatch gather runs over all chains at once, producing a ``(chains, b, ...)`` batch
    that can be sharded over chains and, for data parallelism, over its example axis. When
    ``at_center`` (a traced bool) is true and the program pairs (``program.pair``) the same
    minibatch is also evaluated at the center :math:`w^*` (one extra forward pass), for the
    paired LLC estimator :math:`n\\beta(L_B(w_t) - L_B(w^*))`; otherwise the center losses
    are zeros. A chunked program (``program.chunked``) takes the batch from ``controls``
    (:func:`_chunked_gradients`).
    """
    loss_fn, update = program.loss_fn.value, program.update.value
    mean_loss = lambda params, batch: jnp.mean(loss_fn(params, batch))  # noqa: E731
    value_and_grad = jax.value_and_grad(mean_loss)
    float_type = jnp.result_type(float)
    zeros = lambda *_: jnp.zeros(chain_keys.shape[:1], float_type)  # noqa: E731

    def center_losses(at_center, batch, batched):
        def evaluate(batch):
            if batched:  # one minibatch per chain
                return jax.vmap(mean_loss, in_axes=(None, 0))(center, batch).astype(float_type)
            return jnp.full(chain_keys.shape[:1], mean_loss(center, batch), float_type)

        if not program.pair:
            return zeros()
        return jax.lax.cond(at_center, evaluate, zeros, batch)

    def minibatch(step_keys):
        indices = jax.vmap(
            lambda key: jax.random.randint(key, (program.batch_size,), 0, program.num_samples)
        )(step_keys)
        indices = _constrain(indices, program, program.chain_axis, program.data_axis)
        batch = jax.tree.map(lambda x: jnp.take(x, indices, axis=0), data)
        return _constrain(batch, program, program.chain_axis, program.data_axis)

    def losses_and_gradients(state, step_keys, at_center):
        if program.chunked:
            return _chunked_gradients(program, data, center, controls, state.params, step_keys,
                                      at_center)
        if program.batch_size is None:
            loss, grads = jax.vmap(value_and_grad, in_axes=(0, None))(state.params, data)
            return loss, grads, center_losses(at_center, data, False)
        batch = minibatch(step_keys)
        loss, grads = jax.vmap(value_and_grad)(state.params, batch)
        return loss, grads, center_losses(at_center, batch, True)

    def step_all_chains(state: ChainState, at_center):
        keys = jax.vmap(lambda key: jax.random.split(jax.random.fold_in(key, state.step)))(
            chain_keys
        )
        loss, grads, at_w_star = losses_and_gradients(state, keys[:, 0], at_center)
        updates, sampler_state = jax.vmap(
            lambda g, s, p, k: update(g, s, p, key=k)
        )(grads, state.sampler_state, state.params, keys[:, 1])
        first = state.first_nonfinite_step
        first = jnp.where((first < 0) & ~jnp.isfinite(loss), state.step, first)
        params, sampler_state, first = _constrain(
            (optax.apply_updates(state.params, updates), sampler_state, first), program,
            program.chain_axis,
        )
        new_state = ChainState(params, sampler_state, state.step + 1, first)
        return new_state, loss.astype(float_type), at_w_star.astype(float_type)

    return step_all_chains


def _chunked_gradients(program, data, center, controls, params, step_keys, at_center):
    r"""The minibatch mean loss and its gradient for every chain, with the batch as *data*.

    A step's batch of :math:`b` = ``controls.examples`` examples is gathered in
    ``controls.num_chunks`` chunks of ``c = program.batch_size`` examples: chunk :math:`k`
    draws its indices uniformly with replacement from ``fold_in(step key, k)`` (chunk 0 from
    the step key itself, as an unchunked program does), or, for the full batch, walks through
    the data in order. Positions :math:`kc + i \ge b` are masked out, so the loss is
    :math:`\frac1b\sum_{i<b}\ell_i` exactly and its gradient is the sum of the chunks'
    gradients. A larger batch, or the full batch, then runs in the same compiled program
    (the cost per step is :math:`\lceil b/c\rceil c` examples).
    """
    loss_fn, chunk = program.loss_fn.value, program.batch_size
    float_type = jnp.result_type(float)
    count = controls.examples

    def weighted_mean(p, batch, valid):
        losses = loss_fn(p, batch)
        per_example = jnp.mean(losses.reshape(losses.shape[0], -1), axis=1)
        total = jnp.sum(jnp.where(valid, per_example, jnp.zeros_like(per_example)))
        return total / count.astype(per_example.dtype)

    value_and_grad = jax.vmap(jax.value_and_grad(weighted_mean), in_axes=(0, 0, None))

    def one_chunk(index, keys):
        positions = index * chunk + jnp.arange(chunk)
        valid = positions < count
        drawn = jax.vmap(
            lambda key: jax.random.randint(key, (chunk,), 0, program.num_samples)
        )(keys)
        in_order = jnp.broadcast_to(jnp.minimum(positions, program.num_samples - 1), drawn.shape)
        indices = jnp.where(controls.full_batch, in_order, drawn)
        indices = _constrain(indices, program, program.chain_axis, program.data_axis)
        batch = jax.tree.map(lambda x: jnp.take(x, indices, axis=0), data)
        batch = _constrain(batch, program, program.chain_axis, program.data_axis)
        loss, grads = value_and_grad(params, batch, valid)
        if program.pair:
            at_w_star = jax.lax.cond(
                at_center,
                lambda b: jax.vmap(weighted_mean, in_axes=(None, 0, None))(center, b, valid),
                lambda b: jnp.zeros(loss.shape, loss.dtype), batch,
            )
        else:
            at_w_star = jnp.zeros(loss.shape, loss.dtype)
        return loss.astype(float_type), grads, at_w_star.astype(float_type)

    def add_chunk(index, carry):
        keys = jax.lax.cond(  # chunk 0 draws from the step key itself (as without chunks)
            index == 0, lambda: step_keys,
            lambda: jax.vmap(lambda key: jax.random.fold_in(key, index))(step_keys),
        )
        return jax.tree.map(jnp.add, carry, one_chunk(index, keys))

    zeros = jnp.zeros(step_keys.shape[:1], float_type)
    start = (zeros, jax.tree.map(jnp.zeros_like, params), zeros)
    return jax.lax.fori_loop(0, controls.num_chunks, add_chunk, start)


def _make_observer(program: _Program, query_data):
    """``params (chains, ...) -> {stream: (chains, ...)}`` for observables and query sets."""
    loss_fn = program.loss_fn.value

    def observe_one_chain(params):
        streams = {name: fn(params) for name, fn in program.observables.value}
        for name in program.query_names:
            streams[name] = losses_in_chunks(
                loss_fn, params, query_data[name], program.query_chunk_size
            )
        return streams

    return jax.vmap(observe_one_chain)


def _advance(step_all_chains, state: ChainState, num_steps, record):
    """``num_steps`` steps (a traced count); returns the state and the first step's losses
    at the chains and (when ``record``) at the center on the same minibatch."""

    def body(index, carry):
        state, first_loss, first_center = carry
        state, loss, center_loss = step_all_chains(state, record & (index == 0))
        first = index == 0
        return (state, jnp.where(first, loss, first_loss),
                jnp.where(first, center_loss, first_center))

    zeros = jnp.zeros(state.first_nonfinite_step.shape, jnp.result_type(float))
    return jax.lax.fori_loop(0, num_steps, body, (state, zeros, zeros))


def _zeros_like_shapes(shapes):
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _scan_draws(program, state, data, query_data, chain_keys, center, controls):
    """The block's draws: ``(state, records {stream: (draws, chains, ...)}, weights (draws, chains))``."""
    step_all_chains = _make_step(program, data, chain_keys, center, controls)
    observe = _make_observer(program, query_data)
    observed_shapes = jax.eval_shape(observe, state.params)

    def draw(state, index):
        active = index < controls.num_valid
        observed = jax.lax.cond(
            active & controls.record, observe,
            lambda params: _zeros_like_shapes(observed_shapes), state.params,
        )
        zeros = jnp.zeros(state.first_nonfinite_step.shape, jnp.result_type(float))
        state, loss, center_loss = jax.lax.cond(
            active,
            lambda s: _advance(step_all_chains, s, controls.steps_per_draw, controls.record),
            lambda s: (s, zeros, zeros),
            state,
        )
        healthy = active & controls.record & (state.first_nonfinite_step < 0)
        return state, ({"loss": loss, "center_loss": center_loss, **observed}, healthy)

    return jax.lax.scan(draw, state, jnp.arange(program.draws_per_block))


class _InProgram(NamedTuple):
    """The part of an accumulator the compiled program runs (``finalize`` runs on the host
    afterwards, so constants it closes over, e.g. a BIF's β, never recompile the program)."""

    name: str
    streams: tuple
    update: Callable


def _update_accumulators(program, accumulator_states, records, weights, record):
    def update_all(states):
        return {
            item.name: item.update(
                states[item.name], {stream: records[stream] for stream in item.streams}, weights
            )
            for item in program.accumulators.value
        }

    return jax.lax.cond(record, update_all, lambda states: states, accumulator_states)


@functools.partial(jax.jit, static_argnames=("program",))
def _run_block(state, accumulator_states, data, query_data, chain_keys, center, controls, *,
               program):
    """One block of ``draws_per_block`` draws: ``(state, accumulator states, stored streams)``."""
    if program.batch_size is None and program.data_axis is not None:
        data = _constrain(data, program, program.data_axis)
    state, (records, healthy) = _scan_draws(
        program, state, data, query_data, chain_keys, center, controls
    )
    # scan stacks draws first: (draws, chains, ...) -> (chains, draws, ...)
    records = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), records)
    weights = jnp.swapaxes(healthy, 0, 1).astype(jnp.result_type(float))
    accumulator_states = _update_accumulators(
        program, accumulator_states, records, weights, controls.record
    )
    stored = _constrain({name: records[name] for name in program.stored}, program,
                        program.chain_axis)
    return state, accumulator_states, stored


# --------------------------------------------------------------------------------------------
# Preparing a run (validation first, then the program's arguments)
# --------------------------------------------------------------------------------------------


class _Prepared(NamedTuple):
    program: _Program
    options: SampleOptions
    state: ChainState
    accumulator_states: dict
    data: PyTree
    query_data: dict
    chain_keys: jax.Array
    hyperparameters: dict
    accumulators: tuple  # ((name, Accumulator), ...), for finalize
    center: PyTree = None  # w*, where the paired estimator evaluates each minibatch


def _check_sampler(sampler):
    if not hasattr(sampler, "init") or not hasattr(sampler, "update"):
        raise TypeError(
            "sampler must be an optax GradientTransformationExtraArgs such as "
            f"slt_jax.samplers.sgld(...), got {sampler!r}"
        )


def _stream_shapes(options, loss_fn, params, observables, query_data):
    """Per-draw shapes ``{stream: ShapeDtypeStruct((num_chains, *event))}``."""
    chains = options.num_chains
    scalar = jax.ShapeDtypeStruct((chains,), jnp.result_type(float))
    shapes = {"loss": scalar, "center_loss": scalar}
    for name, fn in observables:
        out = jax.eval_shape(fn, params)
        shapes[name] = jax.tree.map(
            lambda s: jax.ShapeDtypeStruct((chains,) + s.shape, s.dtype), out
        )
    for name, query in query_data.items():
        out = jax.eval_shape(
            lambda p, q: losses_in_chunks(loss_fn, p, q, options.query_chunk_size), params, query
        )
        shapes[name] = jax.ShapeDtypeStruct((chains,) + out.shape, out.dtype)
    return shapes


def _draws_per_block(options, stream_shapes) -> int:
    if options.draws_per_block is not None:
        return options.draws_per_block
    per_draw = sum(
        math.prod(s.shape) * np.dtype(s.dtype).itemsize for s in jax.tree.leaves(stream_shapes)
    )
    return int(max(1, min(DEFAULT_DRAWS_PER_BLOCK, BLOCK_MEMORY_BUDGET // max(per_draw, 1))))


@functools.partial(jax.jit, static_argnames=("num_chains",))
def _broadcast_over_chains(tree, *, num_chains):
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (num_chains,) + jnp.shape(x)), tree)


@functools.partial(jax.jit, static_argnames=("num_chains",))
def _start_chains(tree, key, *, num_chains):
    """``tree`` broadcast over chains and the chains' keys (``split(key, num_chains)`` of one
    key; an array of keys is passed through), as one program."""
    keys = jax.random.split(key, num_chains) if key.ndim == 0 else key
    return _broadcast_over_chains(tree, num_chains=num_chains), keys


def _initial_chain_state(sampler_state, params, options, key=None):
    """Every chain starts at ``params`` with the sampler's initial state (made eagerly by
    ``sampler.init``, so the sampler's hyperparameters enter the program as data). With a
    ``key`` (one key or ``num_chains`` keys, checked), returns ``(state, chain keys)``."""
    chains = options.num_chains
    if key is None:
        params, sampler_state = _broadcast_over_chains((params, sampler_state), num_chains=chains)
    else:
        (params, sampler_state), key = _start_chains((params, sampler_state), key,
                                                     num_chains=chains)
    state = ChainState(
        params=params,
        sampler_state=sampler_state,
        step=np.zeros((), np.int32),
        first_nonfinite_step=np.full((chains,), -1, np.int32),
    )
    return state if key is None else (state, key)


def recorded_hyperparameters(sampler_state) -> dict:
    """The numeric hyperparameters held in a sampler state (``hyperparameters`` fields of
    slt_jax samplers, ``hyperparams`` of ``optax.inject_hyperparams``), as floats."""
    found = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(sampler_state):
        for index, entry in enumerate(path[:-1]):
            if getattr(entry, "name", None) in ("hyperparameters", "hyperparams"):
                name = getattr(path[index + 1], "key", None)
                if isinstance(name, str) and jnp.size(leaf) == 1:
                    value = np.asarray(leaf).reshape(())[()]  # shortest repr in its precision
                    found.setdefault(name, float(np.format_float_positional(value, unique=True)))
    return found


class _CenterCheck(NamedTuple):
    finite: jax.Array  # () bool: w*, data, losses and gradient at w* all finite
    lost_steps: jax.Array  # () int: coordinates whose typical step rounds to zero
    mean_loss: jax.Array  # () L_n(w*) over all of data (0 unless full_data)
    nonfinite_count: jax.Array  # () examples whose loss is non-finite (full_data)
    first_nonfinite: jax.Array  # (LISTED_INDICES + 1,) their first indices, -1 padded
    gradient_norm: jax.Array  # () ‖∇L_n(w*)‖ over all of data (0 unless gradient)


def _all_finite_leaves(tree) -> jax.Array:
    flags = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)
             if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


#: the query sets' finiteness, apart from :func:`_center_check` so that a run with query sets and
#: one without (``estimate_bif``'s :math:`L_n(w^*)`, then its run) share that program
_query_sets_finite = jax.jit(_all_finite_leaves)


@functools.partial(jax.jit, static_argnames=("loss_fn", "chunk_size", "check_size"))
def _center_check(params, data, displacement, full_data, gradient=False, *, loss_fn,
                  chunk_size, check_size) -> _CenterCheck:
    """Every check of the inputs at :math:`w^*` as one program (one compilation per model,
    shared by ``sample``'s runs, with or without query sets, and ``estimate_llc``'s
    :math:`L_n(w^*)`): the finiteness that
    :func:`slt_jax._checks.check_finite_at_center` checks, the coordinates on which
    :func:`slt_jax._checks.warn_if_step_below_resolution`'s displacement is lost, and (when
    ``full_data``, a traced flag) the full-data mean loss with its non-finite examples, and
    (when ``gradient``, traced too) the norm of the full-data gradient."""
    function = loss_fn.value
    batch = jax.tree.map(lambda x: x[:check_size], data)

    def mean_loss(p):
        losses = function(p, batch)
        return jnp.mean(losses), losses

    (_, losses), grads = jax.value_and_grad(mean_loss, has_aux=True)(params)
    finite = (_all_finite_leaves(params) & _all_finite_leaves(data)
              & jnp.all(jnp.isfinite(losses))
              & _all_finite_leaves(grads))
    lost = sum(jnp.sum(displacement < (jnp.nextafter(jnp.abs(leaf), jnp.full_like(leaf, jnp.inf))
                                       - jnp.abs(leaf)).astype(jnp.float32) / 2)
               for leaf in jax.tree.leaves(params))

    def full_pass(_):
        mean, per_example = mean_loss_and_finite_in_chunks(function, params, data, chunk_size)
        (first,) = jnp.nonzero(~per_example, size=LISTED_INDICES + 1, fill_value=-1)
        return (mean.astype(jnp.result_type(float)), jnp.sum(~per_example).astype(jnp.int32),
                first.astype(jnp.int32))

    def skipped(_):
        return (jnp.zeros((), jnp.result_type(float)), jnp.zeros((), jnp.int32),
                jnp.full((LISTED_INDICES + 1,), -1, jnp.int32))

    mean, count, first = jax.lax.cond(full_data, full_pass, skipped, None)
    norm = jax.lax.cond(gradient, lambda _: _full_gradient_norm(function, params, data, chunk_size),
                        lambda _: jnp.zeros((), jnp.result_type(float)), None)
    return _CenterCheck(finite, jnp.asarray(lost, jnp.int32), mean, count, first, norm)


def _full_gradient_norm(loss_fn, params, data, chunk_size):
    """‖∇L_n(w)‖ of the mean per-example loss over all of ``data``, summed over chunks."""
    from jax.flatten_util import ravel_pytree

    flat, unravel = ravel_pytree(params)
    gradient = flat_mean_gradient(loss_fn, unravel, data, chunk_size)(flat)
    return jnp.linalg.norm(gradient).astype(jnp.result_type(float))


def _step_displacement(sampler_name, hyperparameters) -> float:
    """The typical per-step displacement that ``warn_if_step_below_resolution`` compares
    (``inf`` where it makes no claim, so no coordinate counts as lost)."""
    from slt_jax._checks import _STEP_DISPLACEMENTS

    _, rule = _STEP_DISPLACEMENTS.get(sampler_name, (None, lambda h: math.sqrt(h["step_size"])))
    try:
        displacement = float(rule(hyperparameters))
    except (KeyError, TypeError, ValueError):
        return math.inf
    return displacement if displacement > 0 and math.isfinite(displacement) else math.inf


def _check_at_center(loss_fn, params, data, query_data=None, sampler_name=None,
                     hyperparameters=None, *, full_data=False, chunk_size=4096,
                     gradient=False) -> _CenterCheck:
    """:func:`slt_jax._checks.check_finite_at_center` and
    :func:`slt_jax._checks.warn_if_step_below_resolution` with one compiled program: the
    program says whether anything is wrong, and only then do the detailed checks run (and
    raise or warn with their messages). ``full_data``: also :math:`L_n(w^*)` (and its
    non-finite examples); ``gradient``: also :math:`\\lVert\\nabla L_n(w^*)\\rVert` (the same
    program: both are traced flags)."""
    from slt_jax._checks import FINITE_CHECK_EXAMPLES, LOST_STEP_FRACTION

    n = num_examples(data)
    displacement = (_step_displacement(sampler_name, hyperparameters)
                    if hyperparameters is not None else math.inf)
    result = _center_check(
        params, data, np.float32(displacement), np.bool_(full_data),
        np.bool_(gradient), loss_fn=StructuralKey(loss_fn), chunk_size=min(chunk_size, n),
        check_size=min(n, FINITE_CHECK_EXAMPLES),
    )
    finite = bool(result.finite) and (not query_data or bool(_query_sets_finite(dict(query_data))))
    if not finite:
        check_finite_at_center(loss_fn, params, data, query_data)  # raises, naming what and where
    total = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(params))
    if int(result.lost_steps) >= LOST_STEP_FRACTION * total and hyperparameters is not None:
        warn_if_step_below_resolution(params, sampler_name, hyperparameters, stacklevel=5)
    return result


def _prepare(loss_fn, params, data, sampler, *, key, options, observables=None,
             query_data=None, accumulators=None, initial_state=None) -> _Prepared:
    """Validate everything (before any compilation) and build the program's arguments."""
    _check_sampler(sampler)
    check_params(params)
    n = num_examples(data)
    check_one_device({"params": params, "data": data, "query_data": query_data},
                     "params, data and query_data")
    options = options.validated(n)
    check_loss_fn(loss_fn, params, data, n if options.batch_size is None else options.batch_size)
    observable_items = check_observables(observables, params)
    query_shapes = check_query_data(query_data, loss_fn, params)
    streams = check_stream_names(observable_items, query_shapes)
    accumulator_items = check_accumulators(accumulators, streams)
    stored = check_store(options.store, streams)
    if "loss" in stored and "center_loss" not in stored:
        stored = tuple(name for name in streams if name in stored or name == "center_loss")
    # the pairing forward pass at w* only where a stream reads it
    pair = "center_loss" in stored or any(
        "center_loss" in tuple(accumulator.streams) for _, accumulator in accumulator_items
    )
    key = check_key(key)
    if key.ndim:  # an array of keys, one per chain (its shape checked); one key is split later
        make_chain_keys(key, options.num_chains)
    sampler_state = sampler.init(params)
    _check_at_center(loss_fn, params, data, query_data, getattr(sampler, "name", None),
                     recorded_hyperparameters(sampler_state))
    shapes = _stream_shapes(options, loss_fn, params, observable_items, dict(query_data or {}))
    block = _draws_per_block(options, {name: shapes[name] for name in streams})
    program = _Program(
        loss_fn=StructuralKey(loss_fn), update=StructuralKey(sampler.update),
        observables=StructuralKey(observable_items),
        accumulators=StructuralKey(tuple(
            _InProgram(name, tuple(accumulator.streams), accumulator.update)
            for name, accumulator in accumulator_items
        )),
        query_names=tuple(name for name, _ in query_shapes), stored=stored,
        num_chains=options.num_chains,
        batch_size=options.batch_size if options.batch_chunk is None else options.batch_chunk,
        num_samples=n, draws_per_block=block, query_chunk_size=options.query_chunk_size,
        mesh=options.mesh, chain_axis=options.chain_axis, data_axis=options.data_axis,
        chunked=options.batch_chunk is not None, pair=pair,
    )
    state, keys = _initial_chain_state(sampler_state, params, options, key)
    if initial_state is not None:
        state = check_initial_state(initial_state, state)
        sampler_state = jax.tree.map(lambda x: np.asarray(x)[0], state.sampler_state)
    accumulator_states = {
        name: accumulator.init({stream: shapes[stream] for stream in accumulator.streams})
        for name, accumulator in accumulator_items
    }
    return _Prepared(
        program, options, state, accumulator_states, data, dict(query_data or {}), keys,
        recorded_hyperparameters(sampler_state), accumulator_items, params,
    )


# --------------------------------------------------------------------------------------------
# Running the blocks
# --------------------------------------------------------------------------------------------


def _controls(num_valid, steps_per_draw, record, prepared=None) -> _Controls:
    """The per-block data; with ``prepared``, its batch (chunked programs: examples and chunks
    per step, full batch or drawn)."""
    examples, chunks, full = 1, 1, False
    if prepared is not None and prepared.program.chunked:
        full = prepared.options.batch_size is None
        examples = prepared.program.num_samples if full else prepared.options.batch_size
        chunks = -(-examples // prepared.program.batch_size)
    return _Controls(
        np.asarray(num_valid, np.int32), np.asarray(steps_per_draw, np.int32),
        np.asarray(record, bool), np.asarray(examples, np.int32), np.asarray(chunks, np.int32),
        np.asarray(full, bool),
    )


def _run_phase(prepared, state, accumulator_states, count, steps_per_draw, meter):
    """Run and record ``count`` draws of ``steps_per_draw`` steps block by block; returns the
    new states and the stored blocks ``[(stored dict, valid draws), ...]``."""
    block, blocks = prepared.program.draws_per_block, []
    while count > 0:
        valid = min(block, count)
        state, accumulator_states, stored = _run_block(
            state, accumulator_states, prepared.data, prepared.query_data, prepared.chain_keys,
            prepared.center, _controls(valid, steps_per_draw, True, prepared),
            program=prepared.program,
        )
        blocks.append((stored, valid))
        if not isinstance(meter, _NoProgress):
            jax.block_until_ready(state.step)  # the bar shows real progress
        meter.update(valid * steps_per_draw, "sampling")
        count -= valid
    return state, accumulator_states, blocks


def _burn_in(prepared, state, accumulator_states, num_steps, meter):
    """Burn-in as a few blocks of many steps each (nothing recorded): about four dispatches
    of the block program whatever ``num_steps`` and the block size are."""
    block = prepared.program.draws_per_block
    while num_steps > 0:
        steps_per_draw = max(1, num_steps // (4 * block))
        valid = min(block, num_steps // steps_per_draw)
        state, accumulator_states, _ = _run_block(
            state, accumulator_states, prepared.data, prepared.query_data, prepared.chain_keys,
            prepared.center, _controls(valid, steps_per_draw, False, prepared),
            program=prepared.program,
        )
        if not isinstance(meter, _NoProgress):
            jax.block_until_ready(state.step)
        meter.update(valid * steps_per_draw, "burn-in")
        num_steps -= valid * steps_per_draw
    return state, accumulator_states


def _concatenate(blocks, sharded: bool):
    """Stored blocks ``(chains, block, ...)`` joined along draws, the last block's padding cut.

    Without a mesh the blocks are joined on the host (NumPy) and put back on the device, which
    compiles nothing, so a run of another length reuses everything; a sharded trace is joined
    on the devices and stays sharded.
    """
    if not blocks:
        return {}
    if len(blocks) == 1 and blocks[0][1] == _block_length(blocks[0][0]):
        return blocks[0][0]

    def join(*parts):
        if sharded:
            return jnp.concatenate([part[:, :valid] for part, (_, valid) in zip(parts, blocks)], 1)
        host = [np.asarray(part)[:, :valid] for part, (_, valid) in zip(parts, blocks)]
        return jax.device_put(np.concatenate(host, axis=1))

    return jax.tree.map(join, *[stored for stored, _ in blocks])


def _block_length(stored) -> int:
    leaves = jax.tree.leaves(stored)
    return leaves[0].shape[1] if leaves else 0


def _trace(prepared, state, accumulator_states, stored) -> Trace:
    program = prepared.program
    observable_names = [name for name, _ in program.observables.value]
    return Trace(
        loss=stored.get("loss"),
        center_loss=stored.get("center_loss"),
        observables={name: stored[name] for name in observable_names if name in stored},
        diverged=jax.device_put(np.asarray(state.first_nonfinite_step) >= 0),
        first_nonfinite_step=state.first_nonfinite_step,
        final_params=state.params,
        query_losses={name: stored[name] for name in program.query_names if name in stored},
        accumulators={
            name: accumulator.finalize(accumulator_states[name])
            for name, accumulator in prepared.accumulators
        },
        state=state,
        hyperparameters={
            **prepared.hyperparameters,
            "num_burnin": prepared.options.num_burnin,
            "steps_per_draw": prepared.options.steps_per_draw,
        },
    )


def _run(prepared: _Prepared, meter: ProgressMeter) -> Trace:
    if prepared.options.num_burnin == 0 and not np.any(np.asarray(prepared.state.step)):
        # fresh chains stand at w*: a draw records the state before its steps, so without
        # one step first the first draw would be w* itself (an exact-zero LLC draw)
        prepared = prepared._replace(options=prepared.options._replace(num_burnin=1))
    options = prepared.options
    total = options.num_burnin + options.num_draws * options.steps_per_draw
    meter.start(total, f"sampling {options.num_chains} chains")
    meter.update(0, "compiling")  # until the first block returns
    try:
        state, accumulator_states = _burn_in(
            prepared, prepared.state, prepared.accumulator_states, options.num_burnin, meter
        )
        # adaptive samplers (e.g. RMSProp-SGLD's preconditioner) stop adapting: data, no compile
        state = state._replace(sampler_state=end_of_burnin(state.sampler_state))
        state, accumulator_states, blocks = _run_phase(
            prepared, state, accumulator_states, options.num_draws, options.steps_per_draw, meter
        )
    finally:
        meter.close()
    return _trace(
        prepared, state, accumulator_states, _concatenate(blocks, options.mesh is not None)
    )


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
    query_data: Mapping[str, PyTree] | None = None,
    accumulators: Mapping[str, Any] | None = None,
    store: tuple | None = None,
    progress: bool | ProgressMeter = False,
    progress_every: int | None = None,
    draws_per_block: int | None = None,
    query_chunk_size: int = DEFAULT_QUERY_CHUNK_SIZE,
    mesh: jax.sharding.Mesh | None = None,
    chain_axis: str | None = "chains",
    data_axis: str | None = None,
    initial_state: ChainState | None = None,
    batch_chunk: int | None = None,
) -> Trace:
    r"""Run ``num_chains`` SGMCMC chains localized at ``params`` and record draws.

    Each step draws a minibatch of ``batch_size`` example indices uniformly *with replacement*
    (ours; ``batch_size=None`` uses the full data), computes
    :math:`L_B(w), \nabla L_B(w)` of the minibatch mean loss, and applies
    ``sampler.update(grads, state, params, key=...)``. All chains start at ``params``
    (:math:`w^*`, the localization center recorded by ``sampler.init``). After ``num_burnin``
    discarded steps, ``num_draws`` draws are recorded ``steps_per_draw`` steps apart. When
    burn-in ends (also with ``num_burnin=0``, and in a continued run, where it changes nothing)
    the sampler state's adaptation is switched off (:func:`slt_jax.samplers.end_of_burnin`:
    every ``"adapting"`` hyperparameter is set to 0, as data, so nothing recompiles): the
    preconditioner of RMSProp-/Adam-SGLD (``adapt="burnin"``) adapts during burn-in and is
    constant for the draws.

    Streams recorded at each draw (at the draw's parameters): ``"loss"`` (the minibatch loss),
    each observable ``fn(params)``, and for each query set ``loss_fn(params, query)`` on all
    of its examples (in chunks of ``query_chunk_size``; shape ``(q,)`` or ``(q, T)`` per draw).

    The chains advance in blocks of ``draws_per_block`` draws, each one call of a single
    ``jax.jit``-compiled program (``lax.scan`` over draws, ``vmap`` over chains). Data, query
    sets, the sampler's state (and with it its hyperparameters and mask), run lengths and keys
    are arguments of that program, so a new key, step size, nβ, mask, query data of the same
    shapes, ``num_draws``, ``num_burnin`` or ``steps_per_draw`` reuses it; a new ``loss_fn``
    (compared by code and closure), sampler kind, chain count, batch size (unless
    ``batch_chunk`` makes it data) or shape recompiles.
    Samplers are compared by their ``update`` function's code and closure, so a sampler
    rebuilt with new hyperparameters, also inside ``optax.chain``, is the same program.

    Args:
      loss_fn: ``loss_fn(params, batch) -> (b,)`` or ``(b, T)`` per-example (per-token) losses.
      params: the point :math:`w^*` to localize at (pytree of float arrays).
      data: pytree of arrays sharing a leading axis of length ``n``.
      sampler: a sampler from :mod:`slt_jax.samplers` (or any optax
        ``GradientTransformationExtraArgs`` whose ``update`` takes ``key=``, e.g. a sampler
        inside ``optax.chain``). Freeze weights with the sampler's ``mask=``, not
        ``optax.masked`` (which moves the leaves it skips by the raw gradient).
      key: a ``jax.random.key``, or an array of ``num_chains`` keys (one per chain).
      num_chains, num_draws, num_burnin, steps_per_draw: chain counts and lengths. Each draw
        records the chains' state before its ``steps_per_draw`` steps, so fresh chains with
        ``num_burnin=0`` take one step first (``trace.hyperparameters["num_burnin"]`` is 1):
        no draw is :math:`w^*` itself. A continued run (``initial_state``) starts where the
        previous one stopped, a state no draw has recorded.
      batch_size: minibatch size ``b`` (``None``: full batch).
      observables: ``{name: fn(params) -> array}`` evaluated at each draw.
      query_data: ``{name: data pytree}``, each with its own leading example axis; the trace
        gets ``query_losses[name]`` of shape ``(num_chains, num_draws, q[, T])``.
      accumulators: ``{name: Accumulator}`` (:mod:`slt_jax.accumulators`) reducing streams
        inside the program; their finalized results are ``trace.accumulators[name]``. Their
        memory does not grow with ``num_draws``. Draws of a chain after it diverged are
        excluded (weight 0).
      store: names of the streams to keep in the trace (default: all). A stream left out is
        only seen by the accumulators, e.g. ``store=("loss",)`` with a covariance accumulator
        on a large query set. Each recorded minibatch is also evaluated at :math:`w^*`
        (``"center_loss"``, one more forward pass per draw) only when ``"loss"`` or
        ``"center_loss"`` is stored or an accumulator reads ``"center_loss"``: ``store=()``
        and query-only runs skip it.
      progress: ``True`` for a tqdm bar, or a :class:`ProgressMeter` object; off by default
        (with a meter, the host waits for each block, so the bar shows real progress,
        including a "compiling" phase).
      progress_every: alias of ``draws_per_block`` (the progress granularity).
      draws_per_block: draws per compiled block (default ``DEFAULT_DRAWS_PER_BLOCK``, fewer
        when one block of the per-draw streams would exceed ``BLOCK_MEMORY_BUDGET``).
      query_chunk_size: examples of a query set evaluated at once.
      mesh: a ``jax.sharding.Mesh`` to spread the run over devices: chains are sharded over
        the mesh axis ``chain_axis`` and, if ``data_axis`` is given, each chain's minibatch
        (or the full data) is sharded over ``data_axis`` (data-parallel gradients). The same
        code runs on one CPU, several GPUs or a TPU pod slice (multi-host: call
        ``jax.distributed.initialize()`` first and build the mesh from ``jax.devices()``).
        The returned trace stays sharded over chains until you gather it.
      initial_state: continue chains where a previous run stopped: pass its ``trace.state``
        (a :class:`ChainState` of the same shapes). The chains resume from its parameters
        and sampler state (with the hyperparameters that state holds, so ``sampler`` only
        fixes the program) and step count, so with the same ``key`` the continuation draws
        fresh noise and minibatches; ``params`` stays the center :math:`w^*`. Run lengths
        are free, so extending a run compiles nothing (usually with ``num_burnin=0``).
      batch_chunk: make the batch size *data* of the program: each step gathers its
        ``batch_size`` examples (all ``n``, in order, for ``batch_size=None``) in chunks of
        ``batch_chunk`` and sums the chunks' gradients of :math:`\frac1b\sum_i \ell_i`
        (padding masked out; chunk :math:`k` draws from ``fold_in(step key, k)``), so runs
        with any batch size, or the full batch, share one compiled program; a step costs
        :math:`\lceil b/c\rceil c` examples. ``None`` (default): one gather of ``batch_size``
        examples, the batch size is part of the program. ``estimate_llc`` runs its
        calibration, main run and noise rerun in chunks of its base batch.

    Returns:
      a :class:`Trace`. Non-finite losses are detected per chain (``trace.diverged``).
    """
    options = SampleOptions(
        num_chains=num_chains, num_draws=num_draws, num_burnin=num_burnin,
        steps_per_draw=steps_per_draw, batch_size=batch_size,
        draws_per_block=draws_per_block if draws_per_block is not None else progress_every,
        query_chunk_size=query_chunk_size, store=store, mesh=mesh, chain_axis=chain_axis,
        data_axis=data_axis, batch_chunk=batch_chunk,
    )
    meter = _progress_meter(progress)
    params = as_params(loss_fn, params)  # TrainResult, nnx.State, ... for adapters' loss_fns
    prepared = _prepare(
        loss_fn, params, data, sampler, key=key, options=options, observables=observables,
        query_data=query_data, accumulators=accumulators, initial_state=initial_state,
    )
    return _run(prepared, meter)


def compiled_memory(loss_fn, params, data, sampler, *, key, num_chains, num_draws,
                    observables=None, query_data=None, accumulators=None, **options) -> dict:
    """Compile (without running) the block program :func:`sample` would run; report its memory.

    Returns bytes: ``arguments`` (params, data, chain and accumulator states), ``output`` (one
    block's stored streams and the new states), ``temporary`` (gradients, activations, one
    block of per-draw streams), ``stored`` (the whole trace the run keeps: ``num_draws`` draws
    of the stored streams) and ``total``. The program does not depend on ``num_draws``,
    ``num_burnin`` or ``steps_per_draw``, so only ``stored`` grows with them; accumulators
    keep their memory fixed (tests/test_memory.py).
    """
    options.pop("progress", None)
    params = as_params(loss_fn, params)
    prepared = _prepare(
        loss_fn, params, data, sampler, key=key,
        options=SampleOptions(num_chains=num_chains, num_draws=num_draws, **options),
        observables=observables, query_data=query_data, accumulators=accumulators,
    )
    arguments = (prepared.state, prepared.accumulator_states, prepared.data, prepared.query_data,
                 prepared.chain_keys, prepared.center, _controls(1, 1, True, prepared))
    lowered = _run_block.lower(*arguments, program=prepared.program)
    analysis = lowered.compile().memory_analysis()
    stored_shapes = jax.eval_shape(
        lambda *args: _run_block(*args, program=prepared.program)[2], *arguments
    )
    per_block = sum(s.size * np.dtype(s.dtype).itemsize for s in jax.tree.leaves(stored_shapes))
    result = {
        "arguments": int(analysis.argument_size_in_bytes),
        "output": int(analysis.output_size_in_bytes),
        "temporary": int(analysis.temp_size_in_bytes),
        "stored": int(per_block * num_draws // prepared.program.draws_per_block),
    }
    result["total"] = sum(result.values())
    return result


# --------------------------------------------------------------------------------------------
# Full-data loss in chunks; compilation counting
# --------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("loss_fn", "chunk_size"))
def _chunked_mean_loss(params, data, *, loss_fn, chunk_size):
    return mean_loss_in_chunks(loss_fn, params, data, chunk_size)


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
    params = as_params(loss_fn, params)  # TrainResult, nnx.State, ... for adapters' loss_fns
    check_params(params)
    n = num_examples(data)
    chunk_size = min(check_int("chunk_size", chunk_size, 1), n)
    check_loss_fn(loss_fn, params, data, chunk_size)
    return _chunked_mean_loss(params, data, loss_fn=loss_fn, chunk_size=chunk_size)


@functools.partial(jax.jit, static_argnames=("loss_fn", "chunk_size"))
def _checked_mean_loss(params, data, *, loss_fn, chunk_size):
    mean, finite = mean_loss_and_finite_in_chunks(loss_fn.value, params, data, chunk_size)
    (first,) = jnp.nonzero(~finite, size=LISTED_INDICES + 1, fill_value=-1)
    return mean, jnp.sum(~finite), first


def checked_loss_at_center(loss_fn, params, data, *, chunk_size: int = 4096,
                           full_data: bool = True) -> float | None:
    r"""Validate ``loss_fn``, ``params`` (:math:`w^*`) and ``data`` as :func:`sample` does
    (:func:`slt_jax._checks.check_finite_at_center` included) and return :math:`L_n(w^*)` as
    :func:`evaluate_loss` (all of ``data``, in chunks), raising a ``ValueError`` that names the
    examples whose loss is non-finite (found in the same pass). ``full_data=False`` skips the
    full pass (returns ``None``)."""
    check_params(params)
    n = num_examples(data)
    chunk_size = min(check_int("chunk_size", chunk_size, 1), n)
    check_loss_fn(loss_fn, params, data, chunk_size)
    # one program with the checks sample() makes at w* (compiled once for both)
    result = _check_at_center(loss_fn, params, data, full_data=full_data, chunk_size=chunk_size)
    if not full_data:
        return None
    first = np.asarray(result.first_nonfinite)
    raise_for_nonfinite_losses(first[first >= 0], int(result.nonfinite_count))
    return float(result.mean_loss)


class CompilationCounter:
    """Counts XLA compilations (``count``) while registered as a ``jax.monitoring`` listener.

    A program loaded from JAX's persistent compilation cache
    (:func:`slt_jax.enable_compilation_cache`) counts too (JAX times the cache lookup as the
    compilation): it was traced and lowered again and only XLA's part was skipped, so "compiles
    nothing" means the same with a cache or without.
    """

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.count = 0

    def __call__(self, event, duration, **kwargs):
        if event == self.EVENT:
            self.count += 1


@contextlib.contextmanager
def count_compilations():
    """Count the XLA compilations inside a ``with`` block (e.g. to check a sweep compiles once).

    Example:
      >>> import jax, jax.numpy as jnp, slt_jax as slt
      >>> f = jax.jit(lambda x: x + 1)
      >>> with slt.count_compilations() as counter:
      ...     _ = f(jnp.ones(3)); _ = f(jnp.zeros(3))
      >>> counter.count
      1
    """
    counter = CompilationCounter()
    jax.monitoring.register_event_duration_secs_listener(counter)
    try:
        yield counter
    finally:
        jax.monitoring.unregister_event_duration_listener(counter)
