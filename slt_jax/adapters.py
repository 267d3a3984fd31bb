r"""Adapters from Flax NNX, Flax Linen and Equinox models to ``(loss_fn, params)``.

slt_jax samples a pure ``loss_fn(params, batch) -> per-example losses`` at a pytree of float
``params``. A neural-network library's model holds more than the weights: BatchNorm running
statistics, RNG counters and keys, caches. Passed straight in as params, those would be sampled
as if they were weights (``slt.sample`` refuses an NNX module that holds such state). The
adapters split a model into

* **sampled** leaves: the weights selected by ``wrt`` (``nnx.Param``, the ``"params"``
  collection, ``eqx.is_inexact_array``), plain arrays in ``params``;
* **frozen** float leaves (BatchNorm statistics, weights excluded by ``wrt``): also in
  ``params``, wrapped in :class:`Frozen`. They are *data* of the compiled program, so a new
  checkpoint of the same shapes compiles nothing, and they never move:
  :func:`slt_jax.estimate_llc` freezes them by itself, and for a hand-built sampler
  ``mask=adapted.mask`` (:func:`slt_jax.masks.trainable`) does. The loss sees them through
  ``lax.stop_gradient``, so gradients, Hessians and influence scores ignore them;
* **constants**: everything that is not a float array (RNG keys, integer counters, activation
  functions, static configuration). They are ``None`` in ``params`` and part of the loss
  function's closure. NNX RNG streams are reset (key 0, count 0) in the loss: in evaluation
  mode no layer draws from them, and a model that does draws the same numbers at every
  evaluation, so the loss stays a deterministic function of the weights; checkpoints then
  share the constants whatever their seeds and training steps. ``to_model`` keeps the
  model's own RNG state.

The returned ``loss_fn`` is cached on the model's structure, the constants and the user's loss
(compared as :class:`slt_jax._structural.StructuralKey` compares callables), so calling the
adapter again on another checkpoint returns the *same* function object: ``slt.sample`` and
``slt.estimate_llc`` then reuse their compiled programs (checked with
``slt.count_compilations()`` in tests/test_adapters.py).

Each adapter returns an :class:`Adapted`, which unpacks as ``loss_fn, params`` and also has
``mask`` and ``to_model(params)`` (the way back to a model, e.g. at the chains' final points).
The ``loss_fn`` records the parameter structure it takes (``loss_fn.params_structure``), so
:func:`as_params`, which every entry point (``sample``, ``estimate_llc``, ``estimate_bif``,
``llc_over_checkpoints``) applies, can take what :func:`slt_jax.training.train` returns (an
``nnx.State`` checkpoint, the ``TrainResult``) or the model itself in place of ``params``.
"""

from __future__ import annotations

import collections
import hashlib
import sys
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from slt_jax._frozen import Frozen
from slt_jax._structural import StructuralKey

PyTree = Any

__all__ = ["Adapted", "Frozen", "as_params", "from_equinox", "from_linen", "from_nnx"]

_CACHE_SIZE = 128
_LOSS_FUNCTIONS: "collections.OrderedDict[Any, Callable]" = collections.OrderedDict()


class Adapted:
    """What an adapter returns: unpacks as ``loss_fn, params``.

    Attributes:
      loss_fn: ``loss_fn(params, batch) -> (b,)`` or ``(b, T)`` per-example (per-token) losses.
      params: the model's float arrays: sampled leaves plain, frozen ones as :class:`Frozen`,
        constants as ``None``.
      mask: the mask that samples exactly the sampled leaves (``None`` when nothing is frozen):
        pass it to a hand-built sampler, ``slt.samplers.sgld(..., mask=adapted.mask)``, or
        intersect it with a selection from :mod:`slt_jax.masks`.
    """

    def __init__(self, loss_fn, params, to_model):
        self.loss_fn = loss_fn
        self.params = params
        self._to_model = to_model

    @property
    def mask(self) -> PyTree | None:
        from slt_jax.masks import trainable

        return trainable(self.params)

    def to_model(self, params: PyTree | None = None):
        """The model with the weights ``params`` (``self.params`` if omitted), e.g. one chain's
        ``jax.tree.map(lambda x: x[c], trace.final_params)``; frozen state and constants come
        from the model the adapter was given (NNX/Linen: in its original train/eval mode)."""
        params = self.params if params is None else params
        return self._to_model(params)

    def __iter__(self):
        return iter((self.loss_fn, self.params))

    def __len__(self):
        return 2

    def __getitem__(self, index):
        return (self.loss_fn, self.params)[index]

    def __repr__(self):
        sampled = sum(int(np.size(x)) for x in jax.tree.leaves(self.params))
        return f"Adapted(loss_fn={self.loss_fn!r}, {sampled} float coordinates)"


# --------------------------------------------------------------------------------------------
# The shared machinery: leaves classified as sampled / frozen / constant
# --------------------------------------------------------------------------------------------

_SAMPLED, _FROZEN, _CONSTANT = "sampled", "frozen", "constant"


def _is_float_array(leaf) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray)) and jnp.issubdtype(
        jnp.result_type(leaf), jnp.floating
    )


def _host_constant(leaf):
    """A constant as something :class:`StructuralKey` compares by content and a trace can use:
    JAX arrays become NumPy arrays (PRNG keys: ``("key", impl, data)``)."""
    if isinstance(leaf, jax.Array):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return ("prng_key", str(jax.random.key_impl(leaf)), np.asarray(jax.random.key_data(leaf)))
        return np.asarray(leaf)
    return leaf


def _traced_constant(constant):
    if isinstance(constant, tuple) and len(constant) == 3 and constant[0] == "prng_key":
        return jax.random.wrap_key_data(jnp.asarray(constant[2]), impl=constant[1])
    if isinstance(constant, np.ndarray):
        return jnp.asarray(constant)
    return constant


def _params_from(leaves, kinds, treedef):
    """``params``: sampled leaves as they are, frozen ones wrapped, constants ``None``."""
    values = [
        leaf if kind == _SAMPLED else Frozen(leaf) if kind == _FROZEN else None
        for leaf, kind in zip(leaves, kinds)
    ]
    return jax.tree.unflatten(treedef, values)


def _leaves_from(params, kinds, constants, expected_structure):
    """The inverse of :func:`_params_from` inside the loss: every leaf, frozen ones behind
    ``stop_gradient`` and constants put back."""
    structure = jax.tree.structure(params)
    if structure != expected_structure:
        raise ValueError(
            "params do not have the structure the adapter returned: expected "
            f"{expected_structure}, got {structure}"
        )
    values = iter(jax.tree.leaves(params))
    constants = iter(constants)
    leaves = []
    for kind in kinds:
        if kind == _SAMPLED:
            leaves.append(next(values))
        elif kind == _FROZEN:
            leaves.append(jax.lax.stop_gradient(next(values)))
        else:
            leaves.append(_traced_constant(next(constants)))
    return leaves


def _cached_loss_fn(key, build: Callable[[], Callable]) -> Callable:
    """One loss function per structurally equal model/loss (so programs are reused)."""
    try:
        hash(key)
    except TypeError:  # an unhashable static field: no reuse, still correct
        return build()
    if key in _LOSS_FUNCTIONS:
        _LOSS_FUNCTIONS.move_to_end(key)
        return _LOSS_FUNCTIONS[key]
    function = build()
    _LOSS_FUNCTIONS[key] = function
    while len(_LOSS_FUNCTIONS) > _CACHE_SIZE:
        _LOSS_FUNCTIONS.popitem(last=False)
    return function


def _constants_key(constants) -> tuple:
    """The constants by content: arrays by dtype, shape and bytes, other objects by hash
    (module-level functions such as ``jax.nn.relu`` are the same object in every model)."""

    def one(constant):
        if isinstance(constant, tuple) and len(constant) == 3 and constant[0] == "prng_key":
            return ("prng_key", constant[1], one(constant[2]))
        if isinstance(constant, np.ndarray):
            digest = hashlib.blake2b(np.ascontiguousarray(constant).tobytes(), digest_size=16)
            return ("array", constant.shape, str(constant.dtype), digest.hexdigest())
        try:
            hash(constant)
            return ("object", constant)
        except TypeError:  # kept alive by the cached function's closure: ids stay unique
            return ("identity", id(constant))

    return tuple(one(constant) for constant in constants)


def _takes(loss_fn: Callable, params_structure) -> Callable:
    """Record on an adapter's ``loss_fn`` the parameter structure it takes (read by
    :func:`as_params`)."""
    loss_fn.params_structure = params_structure
    return loss_fn


def _leaves_by_path(*trees) -> dict:
    """``{key path: array}`` of every array in ``trees`` (NNX modules and states, dicts, Equinox
    modules, ...): NNX variables and :class:`Frozen` leaves by their value, paths as tuples of
    plain keys (``("layers", 0, "kernel")``)."""
    nnx = sys.modules.get("flax.nnx")  # not imported: no NNX object can be among the trees
    found = {}
    for tree in trees:
        if nnx is not None and isinstance(tree, nnx.Module):
            tree = nnx.state(tree)
        is_leaf = lambda x: isinstance(x, Frozen) or (  # noqa: E731
            nnx is not None and isinstance(x, nnx.Variable))
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]:
            if isinstance(leaf, Frozen):
                leaf = leaf.value
            elif nnx is not None and isinstance(leaf, nnx.Variable):
                leaf = _nnx_variable_value(leaf)
            found[_dict_key_path(path)] = leaf
    return found


def as_params(loss_fn: Callable, params: Any, *, rest: Any = None) -> PyTree:
    r"""``params`` in the form ``loss_fn`` takes: every estimator's entry point calls this.

    * A :class:`slt_jax.training.TrainResult` stands for its final parameters (``run.params``,
      with ``run.rest``, the non-``Param`` state of an NNX model).
    * A ``loss_fn`` from an adapter (:func:`from_nnx`, :func:`from_linen`,
      :func:`from_equinox`) records the parameter structure it takes
      (``loss_fn.params_structure``). What the adapter was given or what
      :func:`slt_jax.training.train` saves is rearranged into it by key path: an
      ``nnx.Module``, an ``nnx.State`` (e.g. ``run.checkpoint(i)``), ``nnx.Variable`` leaves,
      pure dicts (``nnx.to_pure_dict``), Linen variables, Equinox modules. Sampled leaves
      become plain arrays, frozen ones :class:`Frozen` (their values from ``params`` or, where
      ``params`` lacks them, from ``rest``: BatchNorm statistics are not in ``run.checkpoints``),
      constants ``None``; arrays already in that form pass through unchanged.
    * Any other ``loss_fn`` gets ``params`` unchanged (a loss of your own may take an
      ``nnx.State``).

    Raises:
      ValueError: naming the leaves ``loss_fn`` needs that ``params`` (and ``rest``) lack, or
        float leaves it does not know.

    Example:
      >>> import jax.numpy as jnp, optax, slt_jax as slt
      >>> from flax import nnx
      >>> model = slt.models.MLP([2, 4, 1], rngs=nnx.Rngs(0))
      >>> data = {"x": jnp.ones((8, 2)), "y": jnp.zeros((8, 1))}
      >>> run = slt.training.train(model, slt.models.mse_loss, data, optax.sgd(0.1),
      ...                          key=jax.random.key(0), num_steps=4, num_checkpoints=2)
      >>> loss_fn, params = slt.adapters.from_nnx(model, slt.models.mse_loss)
      >>> type(run.checkpoint(1)).__name__, type(as_params(loss_fn, run.checkpoint(1))).__name__
      ('State', 'dict')
    """
    from slt_jax.training import TrainResult

    if isinstance(params, TrainResult):
        params, rest = params.params, params.rest if rest is None else rest
    structure = getattr(loss_fn, "params_structure", None)
    if structure is None or (rest is None and jax.tree.structure(params) == structure):
        return params
    given = _leaves_by_path(params)
    spare = _leaves_by_path(rest) if rest is not None else {}
    template = jax.tree.unflatten(structure, range(structure.num_leaves))
    is_frozen = lambda x: isinstance(x, Frozen)  # noqa: E731
    expected = jax.tree_util.tree_flatten_with_path(template, is_leaf=is_frozen)[0]
    values, missing = [], []
    for path, slot in expected:
        key = _dict_key_path(path)
        value = given.get(key, spare.get(key) if is_frozen(slot) else None)
        if value is None:
            missing.append("/".join(map(str, key)))
        values.append(Frozen(value) if is_frozen(slot) else value)
    known = {_dict_key_path(path) for path, _ in expected}
    unknown = ["/".join(map(str, key)) for key, leaf in given.items()
               if key not in known and _is_float_array(leaf)]
    if missing or unknown:
        hint = (" A TrainResult's checkpoints hold only the nnx.Param variables: pass the "
                "TrainResult itself (its .rest holds the rest of the state)."
                if missing and rest is None else "")
        raise ValueError(
            "params do not fit the parameters this adapter's loss_fn takes"
            + (f"; missing: {missing[:8]}" if missing else "")
            + (f"; not parameters of the model: {unknown[:8]}" if unknown else "")
            + f".{hint}"
        )
    return jax.tree.unflatten(jax.tree.structure(template, is_leaf=is_frozen), values)


def _check_sampled(kinds, description: str) -> None:
    if _SAMPLED not in kinds:
        raise ValueError(f"{description} selects no float array to sample")


# --------------------------------------------------------------------------------------------
# Flax NNX
# --------------------------------------------------------------------------------------------


def _nnx_variable_value(variable):
    return variable.get_value() if hasattr(variable, "get_value") else variable.value


def from_nnx(
    model,
    loss: Callable[[Any, PyTree], jax.Array],
    *,
    wrt=None,
    eval_mode: bool = True,
) -> Adapted:
    r"""``(loss_fn, params)`` for a Flax NNX model; only the ``wrt`` variables are sampled.

    Args:
      model: an ``nnx.Module`` at :math:`w^*` (not modified).
      loss: ``loss(model, batch) -> (b,)`` or ``(b, T)`` per-example (per-token) losses, e.g.
        ``lambda m, batch: optax.softmax_cross_entropy_with_integer_labels(m(batch[0]), batch[1])``.
      wrt: an NNX filter of the variables to sample (default ``nnx.Param``). Other float
        variables (``nnx.BatchStat``, ...) are :class:`Frozen`; RNG keys, counters and other
        non-float variables are constants (RNG streams reset to key 0, count 0).
      eval_mode: evaluate the loss on ``nnx.view(model, deterministic=True,
        use_running_average=True)`` (default): Dropout off and BatchNorm on its running
        statistics, so the loss is a deterministic function of the weights, as the LLC needs.
        ``False`` uses the model's modes as they are (a BatchNorm in training mode then
        normalizes each minibatch by its own statistics; updates to its running statistics
        are discarded).

    Returns:
      an :class:`Adapted`: ``loss_fn, params = from_nnx(model, loss)``. ``params`` is
      ``nnx.state(model, wrt).to_pure_dict()`` with the other float variables added as
      :class:`Frozen` leaves and the non-float ones as ``None``, so :mod:`slt_jax.masks` paths
      are NNX paths (``"blocks/0/attn/query/kernel"``). ``adapted.to_model(params)`` rebuilds
      the module. Calling ``from_nnx`` on another checkpoint of the same architecture returns
      the same ``loss_fn`` object, so nothing recompiles.

    Example:
      >>> import jax, jax.numpy as jnp, optax, slt_jax as slt
      >>> from flax import nnx
      >>> model = nnx.Sequential(nnx.Linear(3, 8, rngs=nnx.Rngs(0)), nnx.BatchNorm(8, rngs=nnx.Rngs(0)),
      ...                        nnx.Linear(8, 1, rngs=nnx.Rngs(1)))
      >>> loss = lambda m, batch: 0.5 * ((m(batch[0]) - batch[1]) ** 2).sum(-1)
      >>> loss_fn, params = slt.adapters.from_nnx(model, loss)
      >>> sorted(slt.masks.paths(params))[:3]
      ['layers/0/bias', 'layers/0/kernel', 'layers/1/bias']
      >>> type(params["layers"][1]["mean"]).__name__        # BatchNorm statistics: frozen
      'Frozen'
    """
    from flax import nnx

    wrt = nnx.Param if wrt is None else wrt
    if not isinstance(model, nnx.Module):
        raise TypeError(f"from_nnx expects an nnx.Module, got {type(model).__name__}")
    run_model = (
        nnx.view(model, deterministic=True, use_running_average=True, raise_if_not_found=False)
        if eval_mode else model
    )
    graphdef, sampled_state, rest_state = nnx.split(run_model, wrt, ...)
    original_graphdef = nnx.split(model, wrt, ...)[0]

    is_variable = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    entries = []  # (path string, kind, leaf, value for the loss)
    for state, sampled in ((sampled_state, True), (rest_state, False)):
        for path, variable in jax.tree_util.tree_flatten_with_path(state, is_leaf=is_variable)[0]:
            value = _nnx_variable_value(variable) if is_variable(variable) else variable
            if jax.tree.structure(value).num_leaves != 1:
                raise TypeError(f"nnx variable at {jax.tree_util.keystr(path)} holds a pytree")
            if sampled and not _is_float_array(value):
                raise TypeError(
                    f"wrt selects the non-float variable {type(variable).__name__} at "
                    f"{jax.tree_util.keystr(path)} (dtype {jnp.result_type(value)}); only float "
                    "arrays can be sampled"
                )
            kind = _SAMPLED if sampled else _FROZEN if _is_float_array(value) else _CONSTANT
            loss_value = value
            if kind == _CONSTANT and isinstance(variable, nnx.RngCount):
                loss_value = np.zeros(np.shape(value), jnp.result_type(value))
            elif kind == _CONSTANT and isinstance(variable, nnx.RngKey):
                loss_value = _reset_key(value)
            entries.append((tuple(path), kind, value, loss_value))
    _check_sampled([kind for _, kind, _, _ in entries], f"wrt={wrt!r}")
    # model order: sampled_state leaves then rest_state leaves; params order: a nested dict
    pure = _nested_dict([(path, value) for path, _, value, _ in entries])
    pure_paths = [tuple(path) for path, _ in jax.tree_util.tree_flatten_with_path(pure)[0]]
    position = {_nnx_key_path(path): index for index, (path, *_) in enumerate(entries)}
    order = tuple(position[_dict_key_path(path)] for path in pure_paths)  # params -> model
    kinds = tuple(entries[index][1] for index in order)
    pure_treedef = jax.tree.structure(pure)
    params = _params_from([entries[index][2] for index in order], kinds, pure_treedef)
    params_structure = jax.tree.structure(params)
    constants = tuple(
        _host_constant(entries[index][3]) for index in order if entries[index][1] == _CONSTANT
    )
    sampled_treedef = jax.tree.structure(sampled_state)
    rest_treedef = jax.tree.structure(rest_state)
    num_sampled = sampled_treedef.num_leaves
    inverse = tuple(np.argsort(order))  # model position -> params position

    def states_of(leaves_in_params_order):
        in_model_order = [leaves_in_params_order[inverse[i]] for i in range(len(inverse))]
        return (jax.tree.unflatten(sampled_treedef, in_model_order[:num_sampled]),
                jax.tree.unflatten(rest_treedef, in_model_order[num_sampled:]))

    def build():
        def loss_fn(params, batch):
            leaves = _leaves_from(params, kinds, constants, params_structure)
            return loss(nnx.merge(graphdef, *states_of(leaves)), batch)

        return _takes(loss_fn, params_structure)

    key = ("nnx", graphdef, pure_treedef, kinds, order, sampled_treedef, rest_treedef,
           StructuralKey(loss), _constants_key(constants))
    loss_fn = _cached_loss_fn(key, build)
    original_constants = [
        entries[index][2] for index in order if entries[index][1] == _CONSTANT
    ]

    def to_model(new_params):
        leaves = _leaves_from(new_params, kinds, [_host_constant(c) for c in original_constants],
                              params_structure)
        return nnx.merge(original_graphdef, *states_of(leaves))

    return Adapted(loss_fn, params, to_model)


def _reset_key(key):
    """Key 0 of ``key``'s implementation, in ``key``'s shape (an RNG stream's reset key)."""
    impl = str(jax.random.key_impl(key))
    data = jax.random.key_data(jax.random.key(0, impl=impl))
    return jax.random.wrap_key_data(jnp.broadcast_to(data, key.shape + data.shape), impl=impl)


def _key_name(entry):
    for attribute in ("key", "name", "idx"):
        if hasattr(entry, attribute):
            return getattr(entry, attribute)
    return entry


def _nnx_key_path(path) -> tuple:
    """The keys of an ``nnx.State`` path (a trailing ``.value`` dropped)."""
    keys = [_key_name(entry) for entry in path]
    return tuple(keys[:-1] if keys and isinstance(path[-1], jax.tree_util.GetAttrKey) else keys)


def _dict_key_path(path) -> tuple:
    return tuple(_key_name(entry) for entry in path)


def _nested_dict(items) -> dict:
    """``{"a": {"b": leaf}}`` from ``[(path, leaf)]`` (``nnx.State`` paths, ``.value`` dropped)."""
    root: dict = {}
    for path, leaf in items:
        keys = _nnx_key_path(path)
        node = root
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = leaf
    return root


# --------------------------------------------------------------------------------------------
# Flax Linen
# --------------------------------------------------------------------------------------------


def from_linen(
    module,
    variables: PyTree,
    loss: Callable[[Any, PyTree, PyTree], jax.Array],
    *,
    wrt: str | Sequence[str] = "params",
) -> Adapted:
    r"""``(loss_fn, params)`` for a Flax Linen module and its variables.

    Args:
      module: the ``flax.linen.Module`` (its configuration; hashable).
      variables: ``module.init(...)``'s output at :math:`w^*`, e.g.
        ``{"params": ..., "batch_stats": ...}``.
      loss: ``loss(module, variables, batch) -> (b,)`` or ``(b, T)`` per-example losses; it calls
        ``module.apply(variables, x, ...)`` itself, in evaluation mode (Linen modes are call
        arguments, e.g. ``train=False`` so BatchNorm uses its running statistics and Dropout is
        off). Do not ask for ``mutable=`` collections: their updates would be discarded.
      wrt: the collection(s) to sample (default ``"params"``). Float leaves of the other
        collections are :class:`Frozen`; non-float leaves are constants.

    Returns:
      an :class:`Adapted`; ``params`` has the structure of ``variables`` (dicts), and
      ``to_model(params)`` returns the variables dict for ``module.apply``.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn, slt_jax as slt
      >>> module = nn.Dense(1)
      >>> variables = module.init(jax.random.key(0), jnp.ones((1, 3)))
      >>> loss = lambda module, variables, batch: 0.5 * ((module.apply(variables, batch[0]) - batch[1]) ** 2).sum(-1)
      >>> loss_fn, params = slt.adapters.from_linen(module, variables, loss)
      >>> slt.masks.paths(params)
      ['params/bias', 'params/kernel']
    """
    collections_to_sample = (wrt,) if isinstance(wrt, str) else tuple(wrt)
    variables = _as_plain_dicts(variables)
    if not isinstance(variables, dict):
        raise TypeError(f"variables must be a dict of collections, got {type(variables).__name__}")
    missing = [name for name in collections_to_sample if name not in variables]
    if missing:
        raise ValueError(
            f"wrt names collection(s) {missing} that variables does not have; it has "
            f"{sorted(variables)}"
        )
    flat, treedef = jax.tree_util.tree_flatten_with_path(variables)
    kinds = []
    for path, leaf in flat:
        if path[0].key in collections_to_sample:
            if not _is_float_array(leaf):
                raise TypeError(
                    f"the leaf at {jax.tree_util.keystr(path)} has dtype {jnp.result_type(leaf)}; "
                    "only float arrays can be sampled"
                )
            kinds.append(_SAMPLED)
        else:
            kinds.append(_FROZEN if _is_float_array(leaf) else _CONSTANT)
    kinds = tuple(kinds)
    leaves = [leaf for _, leaf in flat]
    _check_sampled(kinds, f"wrt={wrt!r}")
    params = _params_from(leaves, kinds, treedef)
    params_structure = jax.tree.structure(params)
    constants = tuple(_host_constant(leaf) for leaf, kind in zip(leaves, kinds) if kind == _CONSTANT)

    def build():
        def loss_fn(params, batch):
            full = _leaves_from(params, kinds, constants, params_structure)
            return loss(module, jax.tree.unflatten(treedef, full), batch)

        return _takes(loss_fn, params_structure)

    key = ("linen", _hashable_or_identity(module), treedef, kinds, StructuralKey(loss),
           _constants_key(constants))
    loss_fn = _cached_loss_fn(key, build)

    def to_model(new_params):
        return jax.tree.unflatten(
            treedef, _leaves_from(new_params, kinds, constants, params_structure)
        )

    return Adapted(loss_fn, params, to_model)


def _as_plain_dicts(tree):
    """Flax ``FrozenDict`` -> ``dict`` (recursively), anything else unchanged."""
    if isinstance(tree, dict) or type(tree).__name__ == "FrozenDict":
        return {key: _as_plain_dicts(value) for key, value in tree.items()}
    return tree


def _hashable_or_identity(value):
    try:
        hash(value)
        return value
    except TypeError:
        return ("identity", id(value))


# --------------------------------------------------------------------------------------------
# Equinox
# --------------------------------------------------------------------------------------------


def from_equinox(
    model,
    loss: Callable[[Any, PyTree], jax.Array],
    *,
    wrt: Callable[[Any], bool] | None = None,
) -> Adapted:
    r"""``(loss_fn, params)`` for an Equinox model (``pip install slt_jax[equinox]``).

    Args:
      model: an ``eqx.Module`` at :math:`w^*`, in inference mode if it has modes (e.g.
        ``eqx.nn.inference_mode(model)`` for Dropout/BatchNorm).
      loss: ``loss(model, batch) -> (b,)`` or ``(b, T)`` per-example losses; vmap over examples
        inside it as usual in Equinox.
      wrt: ``leaf -> bool`` selecting the leaves to sample (default ``eqx.is_inexact_array``,
        i.e. ``eqx.partition(model, eqx.is_inexact_array)``). Float arrays it rejects are
        :class:`Frozen`; everything else (activation functions, integer arrays) is constant.

    Returns:
      an :class:`Adapted`; ``params`` has the model's structure with ``None`` at the constants
      (as ``eqx.filter`` returns it), ``to_model(params)`` is ``eqx.combine`` with the rest.

    Example:
      >>> import jax, equinox as eqx, slt_jax as slt
      >>> model = eqx.nn.Linear(3, 1, key=jax.random.key(0))
      >>> loss = lambda m, batch: 0.5 * ((jax.vmap(m)(batch[0]) - batch[1]) ** 2).sum(-1)
      >>> loss_fn, params = slt.adapters.from_equinox(model, loss)
      >>> slt.masks.paths(params)
      ['weight', 'bias']
    """
    import equinox as eqx

    wrt = eqx.is_inexact_array if wrt is None else wrt
    leaves, treedef = jax.tree.flatten(model)
    kinds = []
    for leaf in leaves:
        if wrt(leaf):
            if not _is_float_array(leaf):
                raise TypeError(f"wrt selects a leaf that is not a float array: {leaf!r}")
            kinds.append(_SAMPLED)
        else:
            kinds.append(_FROZEN if _is_float_array(leaf) else _CONSTANT)
    kinds = tuple(kinds)
    _check_sampled(kinds, "wrt")
    params = _params_from(leaves, kinds, treedef)
    params_structure = jax.tree.structure(params)
    constants = tuple(_host_constant(leaf) for leaf, kind in zip(leaves, kinds) if kind == _CONSTANT)
    original_constants = tuple(leaf for leaf, kind in zip(leaves, kinds) if kind == _CONSTANT)

    def build():
        def loss_fn(params, batch):
            full = _leaves_from(params, kinds, constants, params_structure)
            return loss(jax.tree.unflatten(treedef, full), batch)

        return _takes(loss_fn, params_structure)

    key = ("equinox", treedef, kinds, StructuralKey(loss), _constants_key(constants))
    loss_fn = _cached_loss_fn(key, build)

    def to_model(new_params):
        if jax.tree.structure(new_params) != params_structure:
            raise ValueError("params do not have the structure from_equinox returned")
        values, rest = iter(jax.tree.leaves(new_params)), iter(original_constants)
        full = [next(rest) if kind == _CONSTANT else next(values) for kind in kinds]
        return jax.tree.unflatten(treedef, full)

    return Adapted(loss_fn, params, to_model)

