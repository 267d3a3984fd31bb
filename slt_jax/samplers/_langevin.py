r"""Stochastic-gradient MCMC samplers as optax gradient transformations.

Conventions (docs/mathematics.md §1, the SLT convention): step size :math:`\epsilon`, drift
:math:`\epsilon/2`, noise :math:`\sqrt{\epsilon}`. With :math:`g = \nabla L_B(w)` the gradient of
the minibatch *mean* loss, every sampler targets the localized tempered posterior

.. math::

    p(w) \propto \exp\!\big(-n\beta\, L_n(w) - \tfrac{\gamma}{2}\lVert w - w^*\rVert^2\big),

whose potential is :math:`U(w) = n\beta L_n(w) + \tfrac{\gamma}{2}\lVert w - w^*\rVert^2`.
``init(params)`` records :math:`w^*`; ``update(grads, state, params, *, key)`` returns the
updates :math:`\Delta w` for ``optax.apply_updates``. A ``mask`` (booleans per leaf or per
element) multiplies drift and noise, so masked-out coordinates never move.

Every numeric hyperparameter (step size, nβ, γ, friction, decay, ...) and the mask live in the
sampler's *state* (``state.hyperparameters``, ``state.mask``), put there by ``init``; ``update``
reads them from the state. The compiled sampling program therefore takes them as data: a new
step size, or a new mask of the same shape, never recompiles, also inside ``optax.chain``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from slt_jax.samplers._base import (
    ADAPTING,
    Preconditioner,
    Sampler,
    SamplerFamily,
    hyperparameter_arrays,
    add_localization,
    apply_mask,
    check_positive,
    check_unit_interval,
    mask_as_floats,
    scalar_zero,
    scale_by_nbeta,
    standard_normal_like,
    tree_size,
    tree_sum_of_squares,
    zeros_like_tree,
)

PyTree = Any


def default_nbeta(num_samples: int) -> float:
    r"""The default inverse temperature :math:`n\beta = n / \log n` (docs/mathematics.md §0, ours).

    ``num_samples`` is the dataset size ``n`` (devinterp v1 uses the batch size instead).

    Args:
      num_samples: the dataset size :math:`n \ge 2`.

    Returns:
      :math:`n / \log n` as a float.

    Examples:
      >>> import slt_jax as slt
      >>> round(slt.default_nbeta(10_000), 1)
      1085.7
    """
    num_samples = int(num_samples)
    if num_samples < 2:
        raise ValueError(f"default_nbeta needs a dataset size n >= 2, got {num_samples}")
    return num_samples / math.log(num_samples)


def _check_common(step_size, nbeta, localization):
    check_positive("step_size", step_size)
    check_positive("nbeta", nbeta)
    check_positive("localization", localization, allow_zero=True)


def _cast_like(tree: PyTree, reference: PyTree) -> PyTree:
    """``tree`` with the dtypes of ``reference`` (hyperparameters are float32 even for float16
    parameters; updates and states keep the parameters' dtype)."""
    return jax.tree.map(lambda x, r: x.astype(jnp.result_type(r)), tree, reference)


def _overrides(hyperparameters: dict) -> dict:
    """Hyperparameters given as JAX arrays (e.g. by ``optax.inject_hyperparams``, which rebuilds
    the sampler with its current, possibly scheduled, values at every update): ``update`` uses
    these instead of the values ``init`` stored. Python numbers are read from the state only, so
    a sampler built from numbers closes over none (one compiled program for every value)."""
    return {k: v for k, v in hyperparameters.items() if isinstance(v, (jax.Array, jax.core.Tracer))}


def _initial_state(params, hyperparameters, mask):
    """The fields every sampler state starts with: center, hyperparameter arrays, float mask."""
    center = jax.tree.map(jnp.asarray, params)
    return center, hyperparameter_arrays(hyperparameters), mask_as_floats(mask, params)


# --------------------------------------------------------------------------------------------
# Preconditioners
# --------------------------------------------------------------------------------------------


def identity_preconditioner() -> Preconditioner:
    """:math:`P = 1`: plain SGLD."""

    def init(params):
        return ()

    def update(grads, state, hyperparameters):
        return grads, 1.0, state

    return Preconditioner(init, update)


class RMSPropPreconditionerState(NamedTuple):
    second_moment: PyTree
    count: jax.Array


def _bias_corrected_inverse_root(second_moment, decay, count, stability):
    r""":math:`P_t = 1/(\sqrt{\hat v_t} + a)` with the prior :math:`v_0` counted as one
    observation at step 0 (:func:`rmsprop_preconditioner`):
    :math:`\hat v_t = (v_t + (1-\alpha)\alpha^t v_0)/(1-\alpha^{t+1})`,
    :math:`v_0 = \max(1-a, 0)^2`, so :math:`P_0 = \min(1, 1/a)`."""
    power = decay ** count.astype(decay.dtype)
    prior = (1.0 - decay) * power * jnp.square(jnp.maximum(1.0 - stability, 0.0))
    correction = 1.0 - decay * power
    return jax.tree.map(
        lambda v: 1.0 / (jnp.sqrt((v + prior) / correction) + stability), second_moment
    )


def rmsprop_preconditioner() -> Preconditioner:
    r"""RMSProp preconditioner (pSGLD, Li et al. 2016, arXiv 1512.07666).

    .. math::

        v_t = \alpha v_{t-1} + (1-\alpha) g_t^2,\quad
        P_t = 1 / (\sqrt{\hat v_t} + a)

    with :math:`v_t` an exponential average of :math:`g^2` from :math:`v = 0`, to which a prior
    :math:`v_0 = \max(1-a, 0)^2` is added as one observation at step 0, with Adam-style bias
    correction (ours):

    .. math::

        \hat v_t = \frac{v_t + (1-\alpha)\alpha^t v_0}{1-\alpha^{t+1}}.

    Why the prior: at :math:`w^*` the loss gradient is 0 (exactly, for full-batch gradients),
    so a bias-corrected average of :math:`g^2` alone gives :math:`\hat v_1 = 0` and the first
    steps use the largest preconditioner :math:`P = 1/a`, i.e. steps :math:`1/a` times larger
    than SGLD's at the same step size, however steep the posterior: chains were kicked far out
    (issue 9). With the prior, :math:`P_0 = \min(1, 1/a)`: the chain starts as SGLD with step
    size ``step_size`` (the scale the step size is chosen on) and the preconditioner follows
    the observed gradients as they arrive: the prior weighs like one gradient among
    :math:`t` after :math:`t \ll 1/(1-\alpha)` steps and decays as :math:`\alpha^t` after,
    so the stationary preconditioner is unchanged. The prior is a step-0 value, independent of
    the position, so it does not bias the target. ``g`` is the loss gradient only:
    neither :math:`n\beta` nor the localization force enters :math:`v`. :math:`\alpha` and
    :math:`a` are the hyperparameters ``decay`` and ``stability``.
    """

    def init(params):
        return RMSPropPreconditionerState(
            second_moment=zeros_like_tree(params), count=scalar_zero()
        )

    def update(grads, state, hyperparameters):
        decay, stability = hyperparameters["decay"], hyperparameters["stability"]
        count = state.count + 1
        second_moment = jax.tree.map(
            lambda v, g: (decay * v + (1.0 - decay) * jnp.square(g)).astype(v.dtype),
            state.second_moment,
            grads,
        )
        new_state = _while_adapting(
            hyperparameters, RMSPropPreconditionerState(second_moment, count), state
        )
        return grads, value(new_state, hyperparameters), new_state

    def value(state, hyperparameters):
        return _bias_corrected_inverse_root(
            state.second_moment, hyperparameters["decay"], state.count,
            hyperparameters["stability"],
        )

    return Preconditioner(init, update, value)


def _while_adapting(hyperparameters, adapted, frozen):
    """``adapted`` while the hyperparameter ``"adapting"`` is 1 (or absent: ``adapt="always"``),
    else ``frozen`` (the state before the step): a frozen preconditioner's state never changes."""
    adapting = hyperparameters.get(ADAPTING)
    if adapting is None:
        return adapted
    return jax.tree.map(lambda new, old: jnp.where(adapting > 0, new, old), adapted, frozen)


class AdamPreconditionerState(NamedTuple):
    first_moment: PyTree
    second_moment: PyTree
    count: jax.Array  # steps taken (the first moment's bias correction)
    second_moment_count: jax.Array  # steps that adapted the second moment (its correction)


def adam_preconditioner() -> Preconditioner:
    r"""Adam preconditioner: drift :math:`\hat m_t`, :math:`P_t = 1/(\sqrt{\hat v_t} + a)`.

    .. math::

        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,

    both bias corrected (:math:`m_0 = 0`; :math:`\hat v_t` with the prior
    :math:`v_0 = \max(1-a, 0)^2` of :func:`rmsprop_preconditioner`, so the first steps are
    SGLD's rather than :math:`1/a` times larger); :math:`\beta_1, \beta_2, a` are the
    hyperparameters ``first_decay``, ``second_decay`` and ``stability``.

    Frozen (hyperparameter ``"adapting"`` = 0, :func:`slt_jax.samplers.end_of_burnin`), the
    second moment and its count stop, so :math:`P` is constant, and the drift is the gradient
    :math:`g` itself instead of :math:`\hat m` (ours): the draws come from Langevin dynamics
    with a constant :math:`P` (exact in the small-step limit, SGLD's bias at step
    :math:`\epsilon P`). Why not keep :math:`\hat m` (a constant :math:`m` would be a constant
    force, so the choice is between :math:`\hat m` and :math:`g`): its lag is momentum without
    matching noise, a first-order bias; on a quadratic direction of precision
    :math:`c = n\beta a + \gamma` the variance excess is
    :math:`\epsilon P c\,[\tfrac14 + \tfrac{n\beta a}{c}\tfrac{\beta_1}{2(1-\beta_1)}]`
    (:func:`slt_jax.truth.adam_sgld_stationary_variance`, exact; measured within MCSE), about
    :math:`(1+\beta_1)/(1-\beta_1) = 19` times SGLD's :math:`\epsilon P c/4` at
    :math:`\beta_1 = 0.9`, so at equal bias it needs a 19 times smaller step and mixes 19
    times slower (measured on the DLN suite at 4,000 draws: −2% … −73%, median 39%:
    under-mixed). The first moment still drives the burn-in, where only speed matters.
    """

    def init(params):
        zeros = zeros_like_tree(params)
        count = scalar_zero()
        return AdamPreconditionerState(zeros, zeros, count, count)

    def update(grads, state, hyperparameters):
        first_decay = hyperparameters["first_decay"]
        second_decay = hyperparameters["second_decay"]
        count = state.count + 1
        first = jax.tree.map(
            lambda m, g: (first_decay * m + (1.0 - first_decay) * g).astype(m.dtype),
            state.first_moment,
            grads,
        )
        second = jax.tree.map(
            lambda v, g: (second_decay * v + (1.0 - second_decay) * jnp.square(g)).astype(v.dtype),
            state.second_moment,
            grads,
        )
        first_correction = 1.0 - first_decay ** count.astype(first_decay.dtype)
        drift = jax.tree.map(lambda m: m / first_correction, first)
        # frozen: the drift is the gradient itself (P-frozen SGLD), m only during adaptation
        drift = _while_adapting(hyperparameters, drift, grads)
        second, second_count = _while_adapting(
            hyperparameters, (second, state.second_moment_count + 1),
            (state.second_moment, state.second_moment_count),
        )
        new_state = AdamPreconditionerState(first, second, count, second_count)
        return drift, value(new_state, hyperparameters), new_state

    def value(state, hyperparameters):
        return _bias_corrected_inverse_root(
            state.second_moment, hyperparameters["second_decay"], state.second_moment_count,
            hyperparameters["stability"],
        )

    return Preconditioner(init, update, value)


# --------------------------------------------------------------------------------------------
# Preconditioned Langevin dynamics: SGLD, RMSProp-SGLD, Adam-SGLD
# --------------------------------------------------------------------------------------------


class PreconditionedLangevinState(NamedTuple):
    center: PyTree
    hyperparameters: dict
    mask: PyTree | None
    preconditioner: Any


def _langevin_updates(drift, noise, precondition, hyperparameters):
    step_size = hyperparameters["step_size"]
    temperature = hyperparameters.get("temperature", 1.0)

    def update(d, z, p):
        return -0.5 * step_size * p * d + jnp.sqrt(step_size * p * temperature) * z

    if isinstance(precondition, float):
        return jax.tree.map(lambda d, z: update(d, z, precondition), drift, noise)
    return jax.tree.map(update, drift, noise, precondition)


#: ``adapt=`` values of the adaptive samplers: adapt the preconditioner during burn-in and
#: freeze it for the draws (the default), or adapt at every step (pSGLD as published)
ADAPT_MODES = ("burnin", "always")


def _check_adapt(adapt):
    if adapt not in ADAPT_MODES:
        raise ValueError(
            f"adapt must be 'burnin' (adapt the preconditioner during burn-in, then freeze it) "
            f"or 'always' (adapt at every step, biased), got {adapt!r}"
        )


def preconditioned_langevin(
    hyperparameters: dict, preconditioner: Preconditioner, mask=None, adapt: str = "always"
) -> optax.GradientTransformationExtraArgs:
    r"""Preconditioned Langevin dynamics localized at :math:`w^*`.

    .. math::

        \Delta w = -\frac{\epsilon P}{2}\big[n\beta\, \tilde g + \gamma (w - w^*)\big]
                   + \sqrt{\epsilon P T}\,\eta,\qquad \eta \sim \mathcal N(0, I),

    where :math:`(\tilde g, P)` come from the ``preconditioner`` (identity: :math:`\tilde g = g`,
    :math:`P = 1`, which is SGLD). ``hyperparameters`` holds ``step_size`` :math:`\epsilon`,
    ``nbeta``, ``localization`` :math:`\gamma`, optionally ``temperature`` :math:`T` (scales the
    noise variance; 1 samples the posterior, 0 is preconditioned gradient descent) and the
    preconditioner's own; ``init`` stores them in the state. The correction term
    :math:`\Gamma(w)` of pSGLD is dropped, as in Li et al. (2016) and devinterp: with
    ``adapt="always"`` a preconditioner that follows the chain makes the dynamics sample a
    different law (on a Gaussian, RMSProp's :math:`P = 1/(\sqrt{\hat v}+a)` weighs points by
    about :math:`1/P`, which inflates the LLC, the more so the smaller the step: measured +11%
    to +48%). With ``adapt="burnin"`` the state holds the hyperparameter ``"adapting" = 1``;
    :func:`slt_jax.sample` sets it to 0 when burn-in ends (:func:`end_of_burnin`), after which
    the preconditioner's state no longer changes: a constant :math:`P` samples the target
    exactly in the small-step limit (its discretization bias is SGLD's with step
    :math:`\epsilon P`). The flag is data, so switching compiles nothing.
    """
    _check_adapt(adapt)
    overrides = _overrides(hyperparameters)
    flags = {ADAPTING: 1.0} if adapt == "burnin" else {}

    def init(params):
        center, values, mask_floats = _initial_state(params, {**hyperparameters, **flags}, mask)
        return PreconditionedLangevinState(center, values, mask_floats, preconditioner.init(params))

    def update(grads, state, params=None, *, key, **extra_args):
        if params is None:
            raise ValueError("Langevin samplers need params in update(grads, state, params, key=)")
        values = {**state.hyperparameters, **overrides}
        drift_grads, precondition, preconditioner_state = preconditioner.update(
            grads, state.preconditioner, values
        )
        drift = add_localization(
            scale_by_nbeta(drift_grads, values["nbeta"]), params, state.center,
            values["localization"],
        )
        noise = standard_normal_like(key, params)
        updates = _langevin_updates(drift, noise, precondition, values)
        updates = _cast_like(apply_mask(updates, state.mask), params)
        new_state = state._replace(preconditioner=preconditioner_state)
        return updates, new_state

    return optax.GradientTransformationExtraArgs(init, update)


def _langevin_sampler(name, factory, hyperparameters, preconditioner, mask, adapt=None) -> Sampler:
    transform = preconditioned_langevin(
        hyperparameters, preconditioner, mask, "always" if adapt is None else adapt
    )
    return Sampler(
        transform.init, transform.update, name=name, factory=factory,
        hyperparameters=hyperparameters, mask=mask,
        static=() if adapt is None else (("adapt", adapt),),
    )


def sgld(
    step_size: ArrayLike,
    nbeta: ArrayLike,
    localization: ArrayLike = 1.0,
    *,
    temperature: ArrayLike = 1.0,
    mask: PyTree | None = None,
) -> Sampler:
    r"""Stochastic gradient Langevin dynamics (Welling & Teh 2011), localized (Lau et al. 2023).

    .. math::

        \Delta w = -\frac{\epsilon}{2}\big[n\beta\, \nabla L_B(w) + \gamma (w - w^*)\big]
                   + \sqrt{\epsilon}\,\eta

    blackjax's ``x + h\nabla\log\pi + \sqrt{2h}\xi`` is the same update with ``h = ε/2``.

    Args:
      step_size: :math:`\epsilon > 0`.
      nbeta: :math:`n\beta > 0`; see :func:`default_nbeta`.
      localization: :math:`\gamma \ge 0`.
      temperature: scales the noise variance; ``0`` gives gradient descent with learning rate
        :math:`\epsilon n\beta/2` (a test of the drift), ``1`` (default) samples the posterior.
      mask: optional pytree of booleans (per leaf or per element); ``False`` freezes.

    Returns:
      a :class:`~slt_jax.samplers.Sampler` (an optax ``GradientTransformationExtraArgs``
      whose ``update`` takes ``key=``; ``.name``, ``.hyperparameters``, ``.replace(...)``).

    Examples:
      >>> import jax, jax.numpy as jnp, optax, slt_jax as slt
      >>> sampler = slt.samplers.sgld(step_size=1e-3, nbeta=100.0)
      >>> params = {"w": jnp.zeros(3)}
      >>> state = sampler.init(params)
      >>> updates, state = sampler.update({"w": jnp.ones(3)}, state, params, key=jax.random.key(0))
      >>> optax.apply_updates(params, updates)["w"].shape
      (3,)
    """
    _check_common(step_size, nbeta, localization)
    check_positive("temperature", temperature, allow_zero=True)
    hyperparameters = dict(
        step_size=step_size, nbeta=nbeta, localization=localization, temperature=temperature
    )
    return _langevin_sampler("sgld", sgld, hyperparameters, identity_preconditioner(), mask)


def rmsprop_sgld(
    step_size: ArrayLike,
    nbeta: ArrayLike,
    localization: ArrayLike = 1.0,
    *,
    decay: ArrayLike = 0.99,
    stability: ArrayLike = 0.1,
    adapt: str = "burnin",
    mask: PyTree | None = None,
) -> Sampler:
    r"""RMSProp-preconditioned SGLD (pSGLD; Li et al. 2016; arXiv 2507.21449).

    .. math::

        v \leftarrow \alpha v + (1-\alpha) g^2,\quad P = 1/(\sqrt{\hat v} + a),\quad
        \Delta w = -\frac{\epsilon P}{2}\big[n\beta\, g + \gamma (w - w^*)\big]
                   + \sqrt{\epsilon P}\,\eta

    ``decay`` is :math:`\alpha`, ``stability`` is :math:`a`; see :func:`rmsprop_preconditioner`
    for :math:`v_0` and bias correction. Because :math:`P \le 1/a`, the effective step size is
    at most ``step_size / stability``.

    ``adapt="burnin"`` (the default, ours): :math:`v` follows the gradients during burn-in only;
    :func:`slt_jax.sample` freezes it when burn-in ends (:func:`end_of_burnin`), so the draws
    come from Langevin dynamics with a constant diagonal :math:`P`, which sample the target
    with SGLD's discretization bias at step :math:`\epsilon P` (on a quadratic direction of
    precision :math:`c`, variance :math:`1/(c(1-\epsilon P c/4))`). A run without burn-in
    (``num_burnin=0``) still adapts once: :func:`slt_jax.sample` gives fresh chains one
    burn-in step (so the first draw is not :math:`w^*` itself), and the draws use :math:`P_1`,
    the prior :math:`v_0` (:math:`P_0 = \min(1, 1/a)`) updated by the gradient at :math:`w^*`.
    A continued run (``initial_state=``) keeps its frozen :math:`P`.
    ``adapt="always"`` is pSGLD as published (and devinterp): :math:`P` follows the chain and,
    without the :math:`\Gamma` correction term, the chain samples a law weighted by about
    :math:`1/P`; measured on a Gaussian target and on deep linear networks, the LLC is then
    inflated by +8% to +48%, *more* the smaller the step (the window :math:`1/(1-\alpha)`
    becomes short compared with the relaxation time, so :math:`P` is a function of the position),
    where the same step with :math:`P` frozen is within 0-3%.

    Args:
      step_size: :math:`\epsilon > 0`.
      nbeta: :math:`n\beta > 0`; see :func:`default_nbeta`.
      localization: :math:`\gamma \ge 0`.
      decay: :math:`\alpha \in (0, 1)`, the averaging of :math:`g^2`.
      stability: :math:`a > 0`.
      adapt: ``"burnin"`` (adapt, then freeze for the draws) or ``"always"`` (biased).
      mask: optional pytree of booleans (per leaf or per element); ``False`` freezes.

    Returns:
      a :class:`~slt_jax.samplers.Sampler`.

    Examples:
      >>> import slt_jax as slt
      >>> sampler = slt.samplers.rmsprop_sgld(step_size=1e-4, nbeta=100.0, decay=0.999)
      >>> sampler.name, sampler.hyperparameters["decay"]
      ('rmsprop_sgld', 0.999)
      >>> sampler.static
      (('adapt', 'burnin'),)
    """
    _check_common(step_size, nbeta, localization)
    check_unit_interval("decay", decay)
    check_positive("stability", stability)
    _check_adapt(adapt)
    hyperparameters = dict(
        step_size=step_size, nbeta=nbeta, localization=localization, decay=decay,
        stability=stability,
    )
    return _langevin_sampler(
        "rmsprop_sgld", rmsprop_sgld, hyperparameters, rmsprop_preconditioner(), mask, adapt
    )


def adam_sgld(
    step_size: ArrayLike,
    nbeta: ArrayLike,
    localization: ArrayLike = 1.0,
    *,
    first_decay: ArrayLike = 0.9,
    second_decay: ArrayLike = 0.999,
    stability: ArrayLike = 0.1,
    adapt: str = "burnin",
    mask: PyTree | None = None,
) -> Sampler:
    r"""Adam-preconditioned SGLD: RMSProp-SGLD with the drift :math:`n\beta\,\hat m`.

    .. math::

        \Delta w = -\frac{\epsilon P}{2}\big[n\beta\, \hat m + \gamma (w - w^*)\big]
                   + \sqrt{\epsilon P}\,\eta,\quad P = 1/(\sqrt{\hat v} + a)

    ``adapt`` as in :func:`rmsprop_sgld`: with ``"burnin"`` (the default) the second moment,
    hence :math:`P`, is frozen when burn-in ends, and the draws use the gradient as the drift
    (:func:`adam_preconditioner`): they are preconditioned SGLD with Adam's :math:`P`. The first
    moment lags the gradient by about :math:`\beta_1/(1-\beta_1)` steps, which acts like
    momentum without matching noise: even with :math:`P` constant it inflates the stationary
    variance by :math:`\approx \epsilon P c\,(1+\beta_1)/(4(1-\beta_1))` on a quadratic
    direction of precision :math:`c`, 19 times SGLD's :math:`\epsilon P c/4` at
    :math:`\beta_1 = 0.9` (exact value: :func:`slt_jax.truth.adam_sgld_stationary_variance`);
    with ``adapt="always"`` (published Adam-SGLD) that bias adds to the moving preconditioner's.

    Args:
      step_size: :math:`\epsilon > 0`.
      nbeta: :math:`n\beta > 0`; see :func:`default_nbeta`.
      localization: :math:`\gamma \ge 0`.
      first_decay, second_decay: :math:`\beta_1, \beta_2 \in (0, 1)`.
      stability: :math:`a > 0`.
      adapt: ``"burnin"`` (adapt :math:`P`, then freeze it for the draws) or ``"always"``.
      mask: optional pytree of booleans (per leaf or per element); ``False`` freezes.

    Returns:
      a :class:`~slt_jax.samplers.Sampler`.
    """
    _check_common(step_size, nbeta, localization)
    check_unit_interval("first_decay", first_decay)
    check_unit_interval("second_decay", second_decay)
    check_positive("stability", stability)
    _check_adapt(adapt)
    hyperparameters = dict(
        step_size=step_size, nbeta=nbeta, localization=localization, first_decay=first_decay,
        second_decay=second_decay, stability=stability,
    )
    return _langevin_sampler(
        "adam_sgld", adam_sgld, hyperparameters, adam_preconditioner(), mask, adapt
    )


# --------------------------------------------------------------------------------------------
# Momentum samplers: SGNHT and SGHMC
# --------------------------------------------------------------------------------------------


def _potential_gradient(grads, params, state, values):
    r""":math:`\nabla U = n\beta\, g + \gamma (w - w^*)` with the current nβ and γ."""
    return add_localization(
        scale_by_nbeta(grads, values["nbeta"]), params, state.center, values["localization"]
    )


class SGNHTState(NamedTuple):
    center: PyTree
    hyperparameters: dict
    mask: PyTree | None
    momentum: PyTree
    thermostat: jax.Array


def _sgnht_momentum(state, values, force, noise):
    step_size, diffusion, thermostat = values["step_size"], values["diffusion"], state.thermostat
    return jax.tree.map(
        lambda p, f, z: p - thermostat * p * step_size - step_size * f
        + jnp.sqrt(2.0 * diffusion * step_size) * z,
        state.momentum,
        force,
        noise,
    )


def sgnht(
    step_size: ArrayLike,
    nbeta: ArrayLike,
    localization: ArrayLike = 1.0,
    *,
    diffusion: ArrayLike = 0.01,
    mask: PyTree | None = None,
) -> Sampler:
    r"""Stochastic gradient Nosé–Hoover thermostat (Ding et al. 2014).

    With :math:`U(w) = n\beta L(w) + \tfrac{\gamma}{2}\lVert w - w^*\rVert^2` and :math:`d`
    the number of (unmasked) coordinates:

    .. math::

        p &\leftarrow p - \xi p\,\epsilon - \epsilon\nabla U(w) + \sqrt{2A\epsilon}\,\eta\\
        w &\leftarrow w + \epsilon p\\
        \xi &\leftarrow \xi + \epsilon\,\big(p^\top p / d - 2/(2 - \epsilon\xi)\big)

    :math:`p_0 = 0`, :math:`\xi_0 = A` (``diffusion``). The thermostat is applied at every step
    (devinterp's ``sgnht`` never applies it). Its target :math:`2/(2-\epsilon\xi)` instead of
    Ding et al.'s 1 is a discretization correction (ours): with :math:`v = \epsilon p` the update
    is SGHMC with friction :math:`\alpha = \epsilon\xi`, whose stationary :math:`p^2` at unit
    temperature is :math:`2/(2-\alpha)` (:func:`slt_jax.truth.sghmc_stationary_variance`); a
    target of 1 settles at :math:`\epsilon\xi = 1-\sqrt{1-2\epsilon A}` and cools the
    positions by :math:`\epsilon A/(\epsilon\xi)` (5% at :math:`\epsilon A = 0.1`). The stationary law of :math:`w` is
    :math:`\propto e^{-U}`; its step size is on the scale of :math:`\sqrt{\epsilon_{SGLD}}`.

    Args:
      step_size: :math:`\epsilon > 0`.
      nbeta: :math:`n\beta > 0`; see :func:`default_nbeta`.
      localization: :math:`\gamma \ge 0`.
      diffusion: :math:`A \ge 0`, the injected noise and the thermostat's start.
      mask: optional pytree of booleans (per leaf or per element); ``False`` freezes.

    Returns:
      a :class:`~slt_jax.samplers.Sampler` whose state is an :class:`SGNHTState`
      (momentum and thermostat per chain).
    """
    _check_common(step_size, nbeta, localization)
    check_positive("diffusion", diffusion, allow_zero=True)
    hyperparameters = dict(
        step_size=step_size, nbeta=nbeta, localization=localization, diffusion=diffusion
    )

    overrides = _overrides(hyperparameters)

    def init(params):
        center, values, mask_floats = _initial_state(params, hyperparameters, mask)
        momentum = zeros_like_tree(params)
        thermostat = values["diffusion"]
        return SGNHTState(center, values, mask_floats, momentum, thermostat)

    def update(grads, state, params=None, *, key, **extra_args):
        values = {**state.hyperparameters, **overrides}
        step_size = values["step_size"]
        force = _potential_gradient(grads, params, state, values)
        noise = standard_normal_like(key, params)
        momentum = _sgnht_momentum(state, values, force, noise)
        momentum = _cast_like(apply_mask(momentum, state.mask), params)
        dimension = tree_size(params, state.mask)
        # unit temperature of the discrete dynamics: E[p^2] = 2 / (2 - friction per step)
        target = 2.0 / (2.0 - jnp.clip(step_size * state.thermostat, 0.0, 1.0))
        thermostat = state.thermostat + step_size * (
            tree_sum_of_squares(momentum) / jnp.maximum(dimension, 1) - target
        )
        updates = _cast_like(jax.tree.map(lambda p: step_size * p, momentum), params)
        new_state = state._replace(
            momentum=momentum, thermostat=thermostat.astype(state.thermostat.dtype)
        )
        return updates, new_state

    return Sampler(
        init, update, name="sgnht", factory=sgnht, hyperparameters=hyperparameters, mask=mask
    )


class SGHMCState(NamedTuple):
    center: PyTree
    hyperparameters: dict
    mask: PyTree | None
    velocity: PyTree


SGHMC_SPLITTINGS = ("baoab", "euler")


def sghmc(
    step_size: ArrayLike,
    nbeta: ArrayLike,
    localization: ArrayLike = 1.0,
    *,
    friction: ArrayLike = 0.1,
    splitting: str = "baoab",
    mask: PyTree | None = None,
) -> Sampler:
    r"""Stochastic gradient Hamiltonian Monte Carlo with friction (Chen et al. 2014).

    With :math:`\epsilon` the learning rate, :math:`\alpha` the ``friction`` per step and
    :math:`v` the velocity (:math:`v = h p` for a time step :math:`h = \sqrt\epsilon` and unit
    mass), two integrators of the same Langevin dynamics are offered, both one gradient per
    step:

    ``splitting="euler"`` is Chen et al.'s eq. 15 (with gradient-noise estimate
    :math:`\hat\beta = 0`), as in most SGMCMC code:

    .. math::

        v \leftarrow (1-\alpha) v - \epsilon\nabla U(w) + \sqrt{2\alpha\epsilon}\,\eta,\qquad
        w \leftarrow w + v.

    On a quadratic its position variance is :math:`1/(P(1 - \epsilon P/(2(2-\alpha))))`
    (:func:`slt_jax.truth.sghmc_stationary_variance`): the LLC is biased upwards at first
    order in :math:`\epsilon`. With ``friction=1`` it is SGLD with step size :math:`2\epsilon`.

    ``splitting="baoab"`` (the default) is the BAOAB splitting of Leimkuhler & Matthews
    (2013, *Appl. Math. Res. Express* 2013(1), arXiv 1203.5428): half kick (B), half drift
    (A), an exact Ornstein–Uhlenbeck velocity refresh (O), half drift, half kick. The last
    half kick of one step and the first of the next share a gradient, so a step is

    .. math::

        v \leftarrow v - \epsilon\nabla U(w),\quad
        w \leftarrow w + v/2,\quad
        v \leftarrow c\,v + \sqrt{\epsilon(1 - c^2)}\,\eta,\quad
        w \leftarrow w + v/2,\qquad c = 1 - \alpha.

    Its positions sample a Gaussian target *exactly* (variance :math:`1/P` for every stable
    :math:`\epsilon P < 4`, any friction; :func:`slt_jax.truth.baoab_stationary_variance`) and
    other targets with a bias of second order in the time step and a small constant: on
    :math:`U = u^4` at :math:`\epsilon = 0.04` Euler's :math:`E[U]` is 4.8% high and BAOAB's
    0.1% (measured, ``docs/calibration_findings.md``). With ``friction=1`` it is the
    Leimkuhler–Matthews scheme
    :math:`\Delta w = -\tfrac{\epsilon}{2}\nabla U + \tfrac{\sqrt\epsilon}{2}(\eta_n + \eta_{n+1})`.
    Minibatch gradient noise enters both integrators the same way (through the kick).

    :math:`v_0 = 0`; the state keeps the velocity after the refresh, so a continued run
    (``sample(initial_state=...)``) is the same chain.

    Args:
      step_size: the learning rate :math:`\epsilon > 0`.
      nbeta: :math:`n\beta > 0`; see :func:`default_nbeta`.
      localization: :math:`\gamma \ge 0`.
      friction: :math:`\alpha \in (0, 1]`.
      splitting: ``"baoab"`` (default) or ``"euler"`` (Chen et al.'s update, devinterp-style).
      mask: optional pytree of booleans (per leaf or per element); ``False`` freezes.

    Returns:
      a :class:`~slt_jax.samplers.Sampler` whose state is an :class:`SGHMCState`.

    Examples:
      >>> import jax, jax.numpy as jnp, slt_jax as slt
      >>> sampler = slt.samplers.sghmc(step_size=1e-3, nbeta=100.0, friction=0.2)
      >>> state = sampler.init({"w": jnp.ones(2)})
      >>> state.velocity["w"].tolist(), round(float(state.hyperparameters["friction"]), 3)
      ([0.0, 0.0], 0.2)
      >>> sampler.replace(step_size=5e-4).hyperparameters["step_size"]
      0.0005
      >>> sampler
      sghmc(step_size=0.001, nbeta=100, localization=1, friction=0.2, splitting='baoab')
    """
    _check_common(step_size, nbeta, localization)
    check_positive("friction", friction)
    if _concrete_float(friction) is not None and _concrete_float(friction) > 1.0:
        raise ValueError(f"friction must be in (0, 1], got {friction!r}")
    if splitting not in SGHMC_SPLITTINGS:
        raise ValueError(
            f"splitting must be one of {SGHMC_SPLITTINGS} (BAOAB or Chen et al.'s Euler update), "
            f"got {splitting!r}"
        )
    hyperparameters = dict(
        step_size=step_size, nbeta=nbeta, localization=localization, friction=friction
    )

    overrides = _overrides(hyperparameters)

    def init(params):
        center, values, mask_floats = _initial_state(params, hyperparameters, mask)
        return SGHMCState(center, values, mask_floats, zeros_like_tree(params))

    def euler_update(grads, state, params=None, *, key, **extra_args):
        values = {**state.hyperparameters, **overrides}
        step_size, friction = values["step_size"], values["friction"]
        force = _potential_gradient(grads, params, state, values)
        noise = standard_normal_like(key, params)
        velocity = jax.tree.map(
            lambda v, f, z: (1.0 - friction) * v - step_size * f
            + jnp.sqrt(2.0 * friction * step_size) * z,
            state.velocity,
            force,
            noise,
        )
        velocity = _cast_like(apply_mask(velocity, state.mask), params)
        return velocity, state._replace(velocity=velocity)

    def baoab_update(grads, state, params=None, *, key, **extra_args):
        values = {**state.hyperparameters, **overrides}
        step_size, friction = values["step_size"], values["friction"]
        force = _potential_gradient(grads, params, state, values)
        noise = standard_normal_like(key, params)
        decay = 1.0 - friction
        # sqrt(ε(1 - c²)) keeps N(0, ε) invariant for any c: the O step is exact
        scale = jnp.sqrt(step_size * friction * (2.0 - friction))
        kicked = jax.tree.map(lambda v, f: v - step_size * f, state.velocity, force)  # B B
        refreshed = jax.tree.map(lambda v, z: decay * v + scale * z, kicked, noise)  # O
        updates = jax.tree.map(lambda a, b: 0.5 * (a + b), kicked, refreshed)  # A . A
        updates = _cast_like(apply_mask(updates, state.mask), params)
        velocity = _cast_like(apply_mask(refreshed, state.mask), params)
        return updates, state._replace(velocity=velocity)

    return Sampler(
        init, baoab_update if splitting == "baoab" else euler_update, name="sghmc",
        factory=sghmc, hyperparameters=hyperparameters, static=(("splitting", splitting),),
        mask=mask,
    )


def _concrete_float(value):
    if isinstance(value, jax.core.Tracer):
        return None
    return float(value)


# --------------------------------------------------------------------------------------------
# Sampler families: what the calibration and estimate_llc need to know about each sampler
# --------------------------------------------------------------------------------------------
# With base = κ / λ_max(nβH + γ) (SGLD's step with relative variance bias ≈ κ/4 on the
# stiffest direction), each rule gives the step with the same bias (calibration.py docstring).


def _sgld_heating(step_size, noise, options):
    # SGLD: h_j = ε nβ² V_jj / (4B); the LLC excess is Σ h_j / 2
    return step_size * noise / 8.0


def _sghmc_heating(step_size, noise, options):
    # position temperature excess per coordinate, from the discrete Lyapunov equation of the
    # update on a quadratic with gradient noise of variance N = nβ² V_jj / B, to first order
    # in ηP: Euler (Chen et al.) h_j = η N / (2α); BAOAB h_j = η N (2 − α) / (4α) (the noise
    # enters the kick, which is then half refreshed); the LLC excess is Σ h_j / 2
    friction = options["friction"]
    if options.get("splitting", "baoab") == "euler":
        return step_size * noise / (4.0 * friction)
    return step_size * noise * (2.0 - friction) / (8.0 * friction)


def _sgnht_rescale(hyperparameters, factor):
    # keep the calibrated friction per step (diffusion × step size)
    return {
        "step_size": float(hyperparameters["step_size"]) * factor,
        "diffusion": float(hyperparameters["diffusion"]) / factor,
    }


def _no_options(step_size, options):
    return {}


def _stability_option(step_size, options):
    return {"stability": options["stability"]}


def _rmsprop_value(state):
    """RMSProp-SGLD's preconditioner held in one chain's :class:`PreconditionedLangevinState`."""
    return rmsprop_preconditioner().value(state.preconditioner, state.hyperparameters)


def _adam_value(state):
    """Adam-SGLD's preconditioner held in one chain's :class:`PreconditionedLangevinState`."""
    return adam_preconditioner().value(state.preconditioner, state.hyperparameters)


def _initial_preconditioner(options):
    # P_0 = 1/(max(1 - a, 0) + a) (the prior v_0 of rmsprop_preconditioner)
    return 1.0 / (max(1.0 - options["stability"], 0.0) + options["stability"])




SAMPLER_FAMILIES = {
    family.name: family
    for family in (
        SamplerFamily(
            name="sgld", factory=sgld, step_size_rule=lambda base, options: base,
            calibrated_options=_no_options, calibration_defaults={},
            gradient_noise_heating=_sgld_heating,
        ),
        # preconditioned: base = κ/λ_max(P^½(nβH + γ)P^½) with the P the pilots measured
        # (P_0 at w*); the draws run with P frozen (adapt="burnin"), where SGLD's bias at
        # step εP holds (calibration.py docstring)
        SamplerFamily(
            name="rmsprop_sgld", factory=rmsprop_sgld,
            step_size_rule=lambda base, options: base,
            calibrated_options=_stability_option, calibration_defaults={"stability": 0.1},
            preconditioner_value=_rmsprop_value, initial_preconditioner=_initial_preconditioner,
        ),
        # Adam-SGLD's draws use the gradient as the drift (adapt="burnin"), so RMSProp's rule
        SamplerFamily(
            name="adam_sgld", factory=adam_sgld, step_size_rule=lambda base, options: base,
            calibrated_options=_stability_option, calibration_defaults={"stability": 0.1},
            preconditioner_value=_adam_value, initial_preconditioner=_initial_preconditioner,
        ),
        SamplerFamily(
            name="sgnht", factory=sgnht,
            # SGHMC with η = ε² and friction per step α = ξε (calibration.py docstring)
            step_size_rule=lambda base, options: (base * (2.0 - options["friction"]) / 2.0) ** 0.5,
            calibrated_options=lambda step, options: {"diffusion": options["friction"] / step},
            calibration_defaults={"friction": 0.1}, rescale_step=_sgnht_rescale,
        ),
        SamplerFamily(
            name="sghmc", factory=sghmc,
            step_size_rule=lambda base, options: base * (2.0 - options["friction"]) / 2.0,
            calibrated_options=lambda step, options: {"friction": options["friction"]},
            # 0.03 (BAOAB): soft directions relax ~ ω²/α, so a low friction mixes deep networks
            # (depth-6 DLN −16% at 0.1, +0.9% at 0.03; docs/calibration_findings.md); the
            # calibration raises it where minibatch noise would heat the chains
            calibration_defaults={"friction": 0.03}, gradient_noise_heating=_sghmc_heating,
            tunes_friction=True,
        ),
    )
}
