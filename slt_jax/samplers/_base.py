"""Pytree primitives shared by every sampler: localization, noise, masks, validation.

All functions here are pure and operate leaf-wise on parameter pytrees, so a sampler is
a short composition of them (see :mod:`slt_jax.samplers._langevin`).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

PyTree = Any


class Sampler(optax.GradientTransformationExtraArgs):
    """An optax ``GradientTransformationExtraArgs`` that also remembers how it was built.

    ``init(params)`` records the localization center ``w*``, the hyperparameters (as float
    arrays) and the mask in the state; ``update(grads, state, params, *, key)`` returns updates
    for ``optax.apply_updates`` and reads every numeric hyperparameter from the state, never
    from a closure. So two samplers of one kind with different step sizes have the same
    ``update`` code and closure contents: :func:`slt_jax.sample` compiles one program for both,
    also when the sampler sits inside ``optax.chain`` (after ``optax.clip_by_global_norm``,
    say), and ``optax.tree_utils.tree_get(state, "step_size")`` / ``tree_set`` reach them.

    On top of the optax protocol a ``Sampler`` carries ``name``, ``factory``,
    ``hyperparameters`` (the numeric values it was built with), ``static`` (non-numeric
    options) and ``mask``. Freeze weights with ``mask=`` (or ``optax.multi_transform`` with
    ``optax.set_to_zero()``), not ``optax.masked``: ``optax.masked`` passes the raw gradient
    through to the leaves it skips, so it moves frozen weights.
    """

    def __new__(cls, init, update, *, name, factory, hyperparameters, static=(), mask=None):
        self = super().__new__(cls, init, update)
        self.name = name
        self.factory = factory
        self.hyperparameters = dict(hyperparameters)
        self.static = tuple(static)
        self.mask = mask
        return self

    def replace(self, **hyperparameters):
        """A copy with some hyperparameters changed, e.g. ``sampler.replace(step_size=1e-5)``."""
        unknown = set(hyperparameters) - set(self.hyperparameters)
        if unknown:
            raise TypeError(
                f"{self.name} has no hyperparameter(s) {sorted(unknown)}; "
                f"expected some of {sorted(self.hyperparameters)}"
            )
        merged = {**self.hyperparameters, **hyperparameters}
        return self.factory(**merged, **dict(self.static), mask=self.mask)

    def __repr__(self):
        values = ", ".join(f"{k}={_format(v)}" for k, v in self.hyperparameters.items())
        statics = "".join(f", {k}={v!r}" for k, v in self.static)
        masked = ", mask=..." if self.mask is not None else ""
        return f"{self.name}({values}{statics}{masked})"


def hyperparameter_arrays(hyperparameters: dict) -> dict:
    """Numeric hyperparameters as arrays of JAX's default float type (float32, or float64 with
    ``jax_enable_x64``), whatever the parameters' dtype: a step size of 1e-8 or an nβ of 1e5
    must not be rounded to the parameters' float16 (to 0 or to inf)."""
    dtype = jnp.result_type(float)
    # NumPy scalars: host-side, nothing is compiled to make them
    return {
        name: value if isinstance(value, jax.core.Tracer) else np.asarray(value, dtype=dtype)
        for name, value in hyperparameters.items()
    }


class SamplerFamily(NamedTuple):
    r"""Everything the calibration and :func:`slt_jax.estimate_llc` need to know about a sampler.

    Adding a sampler is one new record in :data:`slt_jax.samplers.SAMPLER_FAMILIES`.

    Attributes:
      name: the sampler's name (``estimate_llc(sampler=name)``).
      factory: ``factory(step_size, nbeta, localization, **options) -> Sampler``.
      step_size_rule: ``(base, options) -> step_size`` where ``base = κ / λ_max(nβH + γ)`` is
        SGLD's step size with the target stationary-variance bias; the rule returns this
        sampler's step size with the same bias on the stiffest direction.
      calibrated_options: ``(step_size, options) -> dict`` of the factory's keyword options that
        the rule assumes (e.g. SGNHT's ``diffusion = friction / step_size``).
      calibration_defaults: defaults of the ``options`` the rules read (``friction``,
        ``stability``).
      gradient_noise_heating: ``(step_size, noise, options) -> float`` LLC excess from minibatch
        gradient noise, ``noise = nβ² tr V / B`` (``None`` when no model covers the sampler).
      rescale_step: ``(hyperparameters, factor) -> dict`` of the hyperparameter changes when the
        step size is multiplied by ``factor`` after a divergence (SGNHT keeps its friction per
        step).
      tunes_friction: whether the calibration may raise ``friction`` to tame gradient noise.
      preconditioner_value: for a preconditioned sampler, ``(sampler_state) -> P`` (one
        chain's state; a pytree like the params) the preconditioner that state applies, which
        is constant once adaptation has ended; ``base`` in ``step_size_rule`` is then
        :math:`\kappa/\lambda_{max}(P^{1/2}(n\beta H + \gamma)P^{1/2})`, measured with the
        :math:`P` the calibration's pilots ended with (``None``: not preconditioned).
      initial_preconditioner: ``(options) -> float``, the preconditioner before any gradient
        is seen (a constant; the calibration's round at :math:`w^*` uses it).
    """

    name: str
    factory: Callable[..., Sampler]
    step_size_rule: Callable[[float, dict], float]
    calibrated_options: Callable[[float, dict], dict]
    calibration_defaults: dict
    gradient_noise_heating: Callable[[float, float, dict], float] | None = None
    rescale_step: Callable[[dict, float], dict] | None = None
    tunes_friction: bool = False
    preconditioner_value: Callable[[Any], Any] | None = None
    initial_preconditioner: Callable[[dict], float] | None = None

    def rescaled(self, hyperparameters: dict, factor: float) -> dict:
        """Hyperparameter changes for a step size multiplied by ``factor``."""
        if self.rescale_step is not None:
            return self.rescale_step(hyperparameters, factor)
        return {"step_size": float(hyperparameters["step_size"]) * factor}


def _format(value):
    if isinstance(value, (float, int, np.floating, np.integer)):
        return f"{float(value):.4g}"
    return "<traced>"


def _is_concrete(value) -> bool:
    return not isinstance(value, jax.core.Tracer)


def zeros_like_tree(tree: PyTree) -> PyTree:
    """Zeros shaped and typed like every leaf of ``tree`` (a sampler state's momenta and
    moments). Concrete leaves get them from the host (``np.zeros``, then ``jax.device_put``: a
    transfer; ``jnp.asarray`` of a NumPy array compiles), so a
    sampler's ``init`` compiles nothing: ``jnp.zeros_like`` compiled one ``broadcast_in_dim``
    per distinct leaf shape, 3 of an MLP's 10 compilations in a cold ``estimate_llc``
    (issue 20). Traced leaves (``init`` inside ``jit``) keep ``jnp.zeros_like``."""

    def zeros(leaf):
        if _is_concrete(leaf):
            return jax.device_put(np.zeros(jnp.shape(leaf), jnp.result_type(leaf)))
        return jnp.zeros_like(leaf)

    return jax.tree.map(zeros, tree)


def scalar_zero(dtype=jnp.int32) -> jax.Array:
    """A scalar 0 made on the host (no compilation): a sampler state's step counters."""
    return jax.device_put(np.zeros((), dtype))


def check_positive(name: str, value, allow_zero: bool = False) -> None:
    """Raise ``ValueError`` if a concrete hyperparameter is not (strictly) positive."""
    if not _is_concrete(value):
        return
    array = np.asarray(value)
    if array.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real number, got {value!r}")
    bad = (array < 0) if allow_zero else (array <= 0)
    if np.any(bad) or not np.all(np.isfinite(array)):
        relation = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {relation}, got {value!r}")
    largest = float(jnp.finfo(jnp.result_type(float)).max)  # hyperparameters are held in it
    if np.any(np.abs(array.astype(np.float64)) > largest):
        raise ValueError(
            f"{name} must be finite in {jnp.result_type(float)} (at most {largest:.3g}), got "
            f"{value!r}, which would be inf in the sampler's state"
        )


def check_unit_interval(name: str, value) -> None:
    """Raise ``ValueError`` if a concrete value is not in [0, 1)."""
    if not _is_concrete(value):
        return
    if not (0.0 <= float(value) < 1.0):
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def add_localization(drift: PyTree, params: PyTree, center: PyTree, localization) -> PyTree:
    r"""Add the localization (prior) force :math:`\gamma (w - w^*)` to a drift pytree."""
    return jax.tree.map(lambda d, w, c: d + localization * (w - c), drift, params, center)


def scale_by_nbeta(grads: PyTree, nbeta) -> PyTree:
    r""":math:`n\beta \cdot g`: the tempered likelihood force from the mean-loss gradient."""
    return jax.tree.map(lambda g: nbeta * g, grads)


def standard_normal_like(key: jax.Array, tree: PyTree) -> PyTree:
    """Independent ``N(0, 1)`` noise with the structure, shapes and dtypes of ``tree``.

    One flat draw for the whole tree, split and reshaped per leaf: on CPU each
    ``jax.random.normal`` call compiles its own threefry loop, so one call instead of one per
    leaf cuts both run time (~20% of the noise cost) and compile time
    (benchmarks/sampler_overhead.py).
    """
    leaves, treedef = jax.tree.flatten(tree)
    sizes = [int(np.prod(jnp.shape(x), dtype=np.int64)) for x in leaves]
    dtype = jnp.result_type(*leaves)
    flat = jax.random.normal(key, (sum(sizes),), dtype)
    offsets = np.cumsum([0] + sizes)
    noise = [
        flat[start:stop].reshape(jnp.shape(x)).astype(jnp.result_type(x))
        for start, stop, x in zip(offsets[:-1], offsets[1:], leaves)
    ]
    return jax.tree.unflatten(treedef, noise)


def mask_as_floats(mask: PyTree | None, params: PyTree) -> PyTree | None:
    """Turn a boolean mask (per leaf or per element) into float arrays shaped like ``params``.

    Leaves wrapped in :class:`slt_jax.adapters.Frozen` (state an adapter carries as data, e.g.
    BatchNorm statistics) are always frozen, with or without a mask. Raises
    ``ValueError``/``TypeError`` when the mask does not match ``params``.
    """
    frozen = _frozen_leaves_mask(params)
    if mask is None:
        if frozen is None:
            return None
        mask = frozen
    validate_mask(mask, params)
    if frozen is not None:
        mask = jax.tree.map(lambda m, keep: m if keep else False, mask, frozen)

    def as_floats(m, p):
        dtype = jnp.result_type(p)
        if _is_concrete(m):  # on the host: nothing is compiled to make it
            return np.broadcast_to(np.asarray(m, dtype=dtype), jnp.shape(p))
        return jnp.broadcast_to(jnp.asarray(m, dtype=dtype), jnp.shape(p))

    return jax.tree.map(as_floats, mask, params)


def _frozen_leaves_mask(params: PyTree) -> PyTree | None:
    """``True`` for every leaf, ``False`` inside :class:`~slt_jax.adapters.Frozen` nodes
    (``None`` when there are none)."""
    from slt_jax.adapters import Frozen  # the adapters import the samplers

    is_frozen = lambda node: isinstance(node, Frozen)  # noqa: E731
    if not any(map(is_frozen, jax.tree.leaves(params, is_leaf=is_frozen))):
        return None
    return jax.tree.map(
        lambda node: jax.tree.map(lambda _: False, node) if is_frozen(node) else True,
        params, is_leaf=is_frozen,
    )


def validate_mask(mask: PyTree, params: PyTree) -> None:
    """Check that ``mask`` has the tree structure of ``params`` and leaf shapes () or the leaf's."""
    mask_structure = jax.tree.structure(mask)
    params_structure = jax.tree.structure(params)
    if mask_structure != params_structure:
        raise ValueError(
            "mask must be a pytree of booleans with the same structure as params; "
            f"got mask structure {mask_structure} but params structure {params_structure}"
        )
    for path_and_mask, p in zip(jax.tree_util.tree_leaves_with_path(mask), jax.tree.leaves(params)):
        path, m = path_and_mask
        m_shape = jnp.shape(m)
        if m_shape not in ((), jnp.shape(p)):
            raise ValueError(
                f"mask leaf at {jax.tree_util.keystr(path)} has shape {m_shape}; expected () "
                f"(whole leaf) or the parameter's shape {jnp.shape(p)}"
            )
        if _is_concrete(m):
            values = np.asarray(m)
            if values.dtype.kind not in "bfiu":
                raise TypeError(
                    f"mask leaf at {jax.tree_util.keystr(path)} must be boolean, got dtype "
                    f"{values.dtype}"
                )
            if values.dtype.kind != "b" and not np.all((values == 0) | (values == 1)):
                odd = values[(values != 0) & (values != 1)].ravel()[0].item()
                raise TypeError(
                    f"mask leaf at {jax.tree_util.keystr(path)} must be boolean (True: sampled, "
                    f"False: frozen at w*), got {values.dtype} values such as {odd!r}; a mask "
                    "selects coordinates, it does not scale them (0/1 numbers are accepted)"
                )


def apply_mask(tree: PyTree, mask: PyTree | None) -> PyTree:
    """Zero the masked-out coordinates (``mask`` already converted by :func:`mask_as_floats`).

    ``where`` rather than a product, so a non-finite value can never leak into a frozen
    coordinate.
    """
    if mask is None:
        return tree
    return jax.tree.map(lambda x, m: jnp.where(m > 0, x, jnp.zeros_like(x)), tree, mask)


def tree_sum_of_squares(tree: PyTree):
    return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))


def tree_size(tree: PyTree, mask: PyTree | None = None):
    """Number of (unmasked) coordinates."""
    if mask is None:
        return sum(jnp.size(x) for x in jax.tree.leaves(tree))
    return sum(jnp.sum(m) for m in jax.tree.leaves(mask))


class Preconditioner(NamedTuple):
    """A diagonal preconditioner for Langevin dynamics.

    ``init(params) -> state``;
    ``update(grads, state, hyperparameters) -> (drift_grads, preconditioner, state)`` where
    ``hyperparameters`` is the sampler's dict of hyperparameter arrays (the preconditioner reads
    its own, e.g. ``decay`` and ``stability``), ``drift_grads`` replaces the loss gradient in the
    drift (e.g. Adam's bias-corrected first moment) and ``preconditioner`` is a pytree (or the
    float ``1.0``) :math:`P` multiplying drift and noise variance.

    An adaptive preconditioner reads the 0/1 float hyperparameter ``"adapting"`` when the
    sampler's state holds one (``adapt="burnin"``): while it is 1 the preconditioner follows the
    gradients, at 0 it is frozen (its state no longer changes, so :math:`P` is a constant).
    ``value(state, hyperparameters) -> P`` is the preconditioner a frozen state applies
    (``None`` for a preconditioner without state).
    """

    init: Callable[[PyTree], Any]
    update: Callable[[PyTree, Any, dict], tuple[PyTree, PyTree, Any]]
    value: Callable[[Any, dict], PyTree] | None = None


#: the sampler-state hyperparameter that :func:`end_of_burnin` switches off
ADAPTING = "adapting"


def end_of_burnin(sampler_state: PyTree) -> PyTree:
    r"""The sampler state with every adaptation switched off: burn-in has ended.

    Sets each hyperparameter named ``"adapting"`` held in a ``hyperparameters`` field of the
    state (anywhere in it, e.g. inside ``optax.chain``'s tuple of states) to 0, keeping its
    shape, dtype and placement (so the compiled sampling program is reused as is; nothing is
    computed on a device). :func:`slt_jax.sample` calls it when its burn-in ends (also with
    ``num_burnin=0`` and for a continued run, where it changes nothing). States without such a
    hyperparameter are returned unchanged. RMSProp-/Adam-SGLD with ``adapt="burnin"`` (the
    default) hold ``"adapting" = 1`` from ``init``: their preconditioner adapts during burn-in
    and is constant during the draws, where preconditioned Langevin dynamics sample the target
    (without the :math:`\Gamma` correction term a moving preconditioner needs).

    Examples:
      >>> import jax.numpy as jnp, slt_jax as slt
      >>> sampler = slt.samplers.rmsprop_sgld(1e-4, 100.0)
      >>> state = sampler.init({"w": jnp.zeros(2)})
      >>> float(state.hyperparameters["adapting"])
      1.0
      >>> float(slt.samplers.end_of_burnin(state).hyperparameters["adapting"])
      0.0
    """

    def switch_off(path, leaf):
        if not (len(path) >= 2 and getattr(path[-2], "name", None) == "hyperparameters"
                and getattr(path[-1], "key", None) == ADAPTING):
            return leaf
        if not isinstance(leaf, jax.Array):
            return np.zeros_like(np.asarray(leaf))
        # a transfer, not a computation; committed (e.g. sharded) stays committed where it was,
        # uncommitted stays uncommitted: the same compiled program takes it
        zeros = np.zeros(leaf.shape, leaf.dtype)
        return jax.device_put(zeros, leaf.sharding if leaf.committed else None)

    return jax.tree_util.tree_map_with_path(switch_off, sampler_state)
