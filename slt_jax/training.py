r"""Train a model with optax in one compiled ``lax.scan`` and keep log-spaced checkpoints.

:func:`train` minimizes the minibatch mean of a per-example (per-token) loss,

.. math::

    w_{t+1} = w_t + \mathrm{optimizer}\big(\nabla_w \tfrac1b \textstyle\sum_{i\in B_t}
    \ell_i(w_t)\big),

with ``B_t`` drawn uniformly with replacement inside the scan, and saves :math:`w_t` at
``num_checkpoints`` log-spaced steps (:func:`log_spaced_steps`, step 0 = the initialization
included) into a *stacked* pytree whose leading axis is the checkpoint: the input of
:func:`slt_jax.llc_over_checkpoints` (developmental interpretability: LLCs over training,
arXiv 2402.02364, 2410.02984).

Flax NNX modules are split into their ``nnx.Param`` state (trained, checkpointed) and the rest
(passed through unchanged); plain pytrees are trained as they are.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from slt_jax._checks import check_int, check_key, check_params, num_examples
from slt_jax._structural import StructuralKey

PyTree = Any

__all__ = ["TrainResult", "log_spaced_steps", "train"]


def log_spaced_steps(num_steps: int, num_checkpoints: int, *, include_zero: bool = True) -> np.ndarray:
    """``num_checkpoints`` distinct integer steps in ``[0, num_steps]``, log-spaced.

    The steps follow ``geomspace(1, num_steps)`` (after a leading 0 with ``include_zero``);
    where rounding would repeat a step, the next free integer is used, so early checkpoints are
    consecutive and the last one is always ``num_steps``.

    Example:
      >>> log_spaced_steps(1000, 5).tolist()
      [0, 1, 10, 100, 1000]
    """
    num_steps = check_int("num_steps", num_steps, 1)
    num_checkpoints = check_int("num_checkpoints", num_checkpoints, 1)
    low = 0 if include_zero else 1
    if num_checkpoints > num_steps + 1 - low:
        raise ValueError(
            f"num_checkpoints={num_checkpoints} distinct steps do not fit in [{low}, {num_steps}]"
        )
    count = num_checkpoints - int(include_zero)
    candidates = np.rint(np.geomspace(1, num_steps, count)).astype(np.int64) if count else []
    steps = ([0] if include_zero else []) + [int(c) for c in candidates]
    for i in range(1, len(steps)):  # distinct, increasing
        steps[i] = max(steps[i], steps[i - 1] + 1)
    for i in range(len(steps) - 1, -1, -1):  # and within range, the last at num_steps
        steps[i] = min(steps[i], num_steps - (len(steps) - 1 - i))
    return np.asarray(steps, np.int64)


class TrainResult(NamedTuple):
    """What :func:`train` returns.

    Attributes:
      checkpoints: the parameter pytree at each checkpoint, stacked along a leading axis of
        length ``num_checkpoints`` (an ``nnx.State`` for NNX models).
      steps: ``(num_checkpoints,)`` the optimizer step of each checkpoint (0 = initialization).
      losses: ``(num_steps,)`` the minibatch mean loss at each step (before its update).
      params: the final parameters (equal to the last checkpoint when it is ``num_steps``).
      graphdef, rest: for NNX models the graph definition and the non-``Param`` state
        (``None`` for plain pytrees); :meth:`model` rebuilds a module.
    """

    checkpoints: PyTree
    steps: np.ndarray
    losses: np.ndarray
    params: PyTree
    graphdef: Any = None
    rest: Any = None

    @property
    def num_checkpoints(self) -> int:
        """The number of saved checkpoints."""
        return len(self.steps)

    def checkpoint(self, index: int) -> PyTree:
        """The parameters of checkpoint ``index``."""
        return jax.tree.map(lambda leaf: leaf[index], self.checkpoints)

    def model(self, index: int | None = None):
        """The NNX module at checkpoint ``index`` (``None``: the final parameters)."""
        if self.graphdef is None:
            raise TypeError("model() needs an NNX model; this run trained a plain pytree")
        from flax import nnx

        params = self.params if index is None else self.checkpoint(index)
        return nnx.merge(self.graphdef, params, self.rest)


class _TrainProgram(NamedTuple):
    """Static description of a training program (hashable: the jit cache key)."""

    loss: StructuralKey
    graphdef: Any
    update: StructuralKey
    num_steps: int
    batch_size: int | None
    num_samples: int
    num_checkpoints: int


def _split(model_or_params, loss):
    """``(params, rest, graphdef)``; NNX modules are split into Params and everything else."""
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover - flax is a dependency
        nnx = None
    if nnx is not None and isinstance(model_or_params, nnx.Module):
        graphdef, params, rest = nnx.split(model_or_params, nnx.Param, ...)
        return params, rest, graphdef
    return model_or_params, None, None


def _mean_loss(program: _TrainProgram, params, rest, batch):
    loss = program.loss.value
    if program.graphdef is not None:
        from flax import nnx

        return jnp.mean(loss(nnx.merge(program.graphdef, params, rest), batch))
    return jnp.mean(loss(params, batch))


def _save(buffer, params, slot):
    """Write ``params`` into ``buffer[slot]`` when ``slot >= 0``."""

    def write(buffer):
        return jax.tree.map(lambda b, p: b.at[slot].set(p.astype(b.dtype)), buffer, params)

    return jax.lax.cond(slot >= 0, write, lambda buffer: buffer, buffer)


@functools.partial(jax.jit, static_argnames=("program",))
def _train_program(params, optimizer_state, rest, data, key, slots, *, program: _TrainProgram):
    update = program.update.value
    value_and_grad = jax.value_and_grad(functools.partial(_mean_loss, program))
    buffer = jax.tree.map(
        lambda p: jnp.zeros((program.num_checkpoints,) + jnp.shape(p), jnp.result_type(p)), params
    )
    buffer = _save(buffer, params, slots[0])

    def step(carry, index):
        params, optimizer_state, buffer = carry
        if program.batch_size is None:
            batch = data
        else:
            rows = jax.random.randint(
                jax.random.fold_in(key, index), (program.batch_size,), 0, program.num_samples
            )
            batch = jax.tree.map(lambda x: jnp.take(x, rows, axis=0), data)
        loss, grads = value_and_grad(params, rest, batch)
        updates, optimizer_state = update(grads, optimizer_state, params)
        params = optax.apply_updates(params, updates)
        buffer = _save(buffer, params, slots[index + 1])
        return (params, optimizer_state, buffer), loss

    (params, _, buffer), losses = jax.lax.scan(
        step, (params, optimizer_state, buffer), jnp.arange(program.num_steps)
    )
    return buffer, losses, params


def train(
    model_or_params: Any,
    loss: Callable[[Any, PyTree], jax.Array],
    data: PyTree,
    optimizer: optax.GradientTransformation,
    *,
    key: jax.Array,
    num_steps: int,
    batch_size: int | None = 32,
    num_checkpoints: int = 10,
    checkpoint_steps: Any = None,
) -> TrainResult:
    r"""Train with ``optimizer`` for ``num_steps`` steps in one compiled ``lax.scan``.

    Each step draws ``batch_size`` example indices uniformly with replacement (``None``: the
    full data), takes the gradient of the minibatch mean of ``loss`` and applies the optax
    update. The parameters are saved at ``checkpoint_steps`` (default
    :func:`log_spaced_steps` ``(num_steps, num_checkpoints)``: step 0 and log-spaced steps up to
    ``num_steps``). Keys, data and checkpoint steps are arguments of the program: a new seed or
    new checkpoint steps reuse it.

    Args:
      model_or_params: a Flax NNX module (its ``nnx.Param`` variables are trained, any other
        state is held fixed) or a parameter pytree.
      loss: ``loss(model, batch)`` for an NNX module, ``loss(params, batch)`` for a pytree;
        per-example ``(b,)`` or per-token ``(b, T)`` losses (or a scalar).
      data: pytree of arrays with a common leading example axis.
      optimizer: an optax ``GradientTransformation`` (e.g. ``optax.adam(1e-3)``).
      key: a ``jax.random.key`` for the minibatches.
      checkpoint_steps: increasing steps in ``[0, num_steps]`` to save instead of log-spaced.

    Returns:
      a :class:`TrainResult` with the stacked ``checkpoints``, their ``steps`` and the
      per-step training ``losses``. An NNX module passed in is **not** changed (unlike
      ``nnx.Optimizer``): the trained model is ``result.model()``, and every estimator takes
      ``result`` itself as its ``params`` (:func:`slt_jax.adapters.as_params`);
      ``from_nnx(model, ...)[1]`` are the untrained parameters (two of this project's own
      benchmarks timed an untrained transformer that way, whose head LLCs read about −600).

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> data = {"x": jnp.linspace(-1, 1, 64)[:, None]}
      >>> loss = lambda w, batch: jnp.square(batch["x"][:, 0] * w["a"] - 2 * batch["x"][:, 0])
      >>> result = train({"a": jnp.zeros(())}, loss, data, optax.sgd(0.5), key=jax.random.key(0),
      ...                num_steps=200, batch_size=16, num_checkpoints=4)
      >>> result.steps.tolist(), round(float(result.params["a"]), 3)
      ([0, 1, 14, 200], 2.0)
    """
    params, rest, graphdef = _split(model_or_params, loss)
    check_params(params)
    key = check_key(key)
    num_steps = check_int("num_steps", num_steps, 1)
    n = num_examples(data)
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, 1)
    steps = _checkpoint_steps(checkpoint_steps, num_steps, num_checkpoints)
    slots = np.full((num_steps + 1,), -1, np.int32)
    slots[steps] = np.arange(len(steps), dtype=np.int32)
    program = _TrainProgram(
        loss=StructuralKey(loss), graphdef=graphdef, update=StructuralKey(optimizer.update),
        num_steps=num_steps, batch_size=batch_size, num_samples=n, num_checkpoints=len(steps),
    )
    checkpoints, losses, final = _train_program(
        params, optimizer.init(params), rest, data, key, slots, program=program
    )
    return TrainResult(checkpoints, steps, np.asarray(losses), final, graphdef, rest)


def _checkpoint_steps(checkpoint_steps, num_steps, num_checkpoints) -> np.ndarray:
    if checkpoint_steps is None:
        return log_spaced_steps(num_steps, num_checkpoints)
    steps = np.asarray(checkpoint_steps, np.int64).reshape(-1)
    if steps.size == 0 or np.any(np.diff(steps) <= 0) or steps[0] < 0 or steps[-1] > num_steps:
        raise ValueError(
            f"checkpoint_steps must be increasing steps in [0, num_steps={num_steps}], got "
            f"{steps.tolist()}"
        )
    return steps
