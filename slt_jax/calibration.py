r"""Step-size calibration from the curvature at :math:`w^*`.

On a quadratic with curvature matrix :math:`A = n\beta H + \gamma I`, SGLD is stable only for
:math:`\epsilon < 4/\lambda_{max}(A)` and its stationary variance along an eigendirection with
precision :math:`P` is :math:`1/(P(1 - \epsilon P/4))` (MATH.md §1, §7): the relative bias of the
stiffest direction is :math:`\approx \epsilon\lambda_{max}/4`. We measure :math:`\lambda_{max}(H)`
with power iteration on Hessian-vector products of the full-data (or a large random subset's)
mean loss and set :math:`\epsilon = \kappa/\lambda_{max}(A)` with a safety factor
:math:`\kappa` (``0.1`` by default: about 2.5% variance bias on the stiffest direction, far
inside the stability bound, which leaves room for the curvature growing where the chains go:
on deep linear networks the chains drift along the flat directions of the set of true parameters
into regions where :math:`\lambda_{max}` is several times larger, and a fixed step size's bias
grows with it; ``docs/calibration_findings.md``).

Preconditioned and momentum samplers get the step size with the same stationary-variance bias
on the stiffest direction:

* RMSProp-/Adam-SGLD: :math:`P \le 1/a`, so :math:`\epsilon = \kappa a / \lambda_{max}(A)`.
* SGHMC (learning rate :math:`\eta`, friction :math:`\alpha`): on a quadratic with precision
  :math:`P` its stationary position variance is exactly SGLD's with
  :math:`\epsilon = 2\eta/(2-\alpha)` (:func:`slt_jax.truth.sghmc_stationary_variance`), so
  :math:`\eta = \kappa(2-\alpha)/(2\lambda_{max}(A))`. In the overdamped regime its relaxation
  and diffusion are :math:`(2-\alpha)/\alpha \approx 2/\alpha` times faster than SGLD's at the same bias.
* SGNHT: with :math:`v = \epsilon p` it is SGHMC with :math:`\eta = \epsilon^2` and friction
  :math:`\alpha = \xi\epsilon` (thermostat :math:`\xi`, started at the ``diffusion``
  :math:`A`): :math:`\epsilon = \sqrt{\kappa(2-\alpha)/(2\lambda_{max}(A))}` and
  :math:`A = \alpha/\epsilon`, so the friction per step starts at :math:`\alpha`. (A fixed
  :math:`A = 0.01` gives a friction per step of :math:`\sim 10^{-5}` at the step sizes these
  models need: the thermostat then takes ~:math:`10^5` steps to react and the chain heats up.)
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from slt_jax.sampling import check_loss_fn, check_params, num_examples

PyTree = Any

DEFAULT_SAFETY_FACTOR = 0.1
DEFAULT_FRICTION = 0.1
DEFAULT_NOISE_TOLERANCE = 0.01


class Calibration(NamedTuple):
    """The chosen step size and the evidence for it."""

    step_size: float
    sampler: str
    max_hessian_eigenvalue: float
    max_curvature: float
    stability_bound: float
    safety_factor: float
    nbeta: float
    localization: float
    rounds: tuple = ()
    options: tuple = ()
    pilot_llc: float | None = None
    gradient_noise_bias: float | None = None

    def table(self) -> str:
        """The calibration rounds as a small text table (the evidence for the choice)."""
        lines = [f"{'round':>5} {'where':>26} {'lambda_max(H)':>14} {'step_size':>10}"]
        for row in self.rounds:
            eigen = row.get("max_hessian_eigenvalue")
            eigen_text = f"{eigen:.4g}" if eigen is not None else "-"
            lines.append(
                f"{row['round']:>5} {row['where']:>26} {eigen_text:>14} {row['step_size']:>10.3g}"
            )
        return "\n".join(lines)

    def summary(self) -> str:
        options = "".join(f", {k}={v:.3g}" for k, v in self.options)
        noise = (
            f"; estimated gradient-noise bias of the LLC {100 * self.gradient_noise_bias:+.2g}%"
            if self.gradient_noise_bias is not None
            else ""
        )
        return (
            f"{self.sampler}: step_size={self.step_size:.3g}{options} from lambda_max(H)="
            f"{self.max_hessian_eigenvalue:.4g}, lambda_max(nbeta*H + gamma)="
            f"{self.max_curvature:.4g} (SGLD stability bound 4/lambda_max = "
            f"{self.stability_bound:.3g}, safety factor {self.safety_factor}){noise}"
        )


@functools.partial(jax.jit, static_argnames=("loss_fn", "num_iterations", "chunk_size"))
def _power_iteration(params, data, key, *, loss_fn, num_iterations, chunk_size):
    flat, unravel = ravel_pytree(params)
    n = jax.tree.leaves(data)[0].shape[0]
    num_chunks = math.ceil(n / chunk_size)
    indices = jnp.arange(num_chunks * chunk_size).reshape(num_chunks, chunk_size)

    def gradient(flat_params):
        def chunk_gradient(chunk_indices):
            valid = (chunk_indices < n).astype(flat.dtype)
            batch = jax.tree.map(
                lambda x: jnp.take(x, jnp.minimum(chunk_indices, n - 1), axis=0), data
            )

            def weighted_sum(p):
                losses = loss_fn(unravel(p), batch)
                per_example = losses.reshape(losses.shape[0], -1).mean(axis=1)
                return jnp.sum(per_example * valid)

            return jax.grad(weighted_sum)(flat_params)

        return jnp.sum(jax.lax.map(chunk_gradient, indices), axis=0) / n

    def hessian_vector_product(vector):
        return jax.jvp(gradient, (flat,), (vector,))[1]

    vector = jax.random.normal(key, flat.shape, flat.dtype)
    vector = vector / jnp.linalg.norm(vector)

    def body(_, carry):
        vector, _ = carry
        product = hessian_vector_product(vector)
        eigenvalue = jnp.vdot(vector, product)
        norm = jnp.linalg.norm(product)
        vector = jnp.where(norm > 0, product / jnp.where(norm > 0, norm, 1.0), vector)
        return vector, eigenvalue

    _, eigenvalue = jax.lax.fori_loop(
        0, num_iterations, body, (vector, jnp.zeros((), flat.dtype))
    )
    return eigenvalue


def top_hessian_eigenvalue(
    loss_fn: Callable,
    params: PyTree,
    data: PyTree,
    *,
    key: jax.Array,
    num_iterations: int = 50,
    max_examples: int = 4096,
    chunk_size: int = 1024,
) -> float:
    r"""Largest eigenvalue of the Hessian of :math:`L_n` at ``params`` by power iteration.

    Hessian-vector products are forward-over-reverse (``jax.jvp`` of ``jax.grad``) on the mean
    loss over ``max_examples`` randomly chosen examples (all of them if ``n`` is smaller),
    accumulated in chunks of ``chunk_size``. Returns the Rayleigh quotient of the last iterate
    (a lower bound that converges to :math:`\lambda_{max}` when it dominates in magnitude).
    """
    check_params(params)
    subset_key, vector_key = jax.random.split(key)
    data = _subsample(data, subset_key, max_examples)
    chunk_size = min(chunk_size, num_examples(data))
    check_loss_fn(loss_fn, params, data, chunk_size)
    eigenvalue = _power_iteration(
        params,
        data,
        vector_key,
        loss_fn=loss_fn,
        num_iterations=num_iterations,
        chunk_size=chunk_size,
    )
    return float(eigenvalue)


def step_size_for(
    sampler_name: str,
    max_curvature: float,
    *,
    safety_factor: float = DEFAULT_SAFETY_FACTOR,
    stability: float = 0.1,
    friction: float = 0.1,
) -> float:
    """The step size of ``sampler_name`` with SGLD's bias at ``safety_factor / max_curvature``.

    See the module docstring for each rule; ``stability`` is RMSProp/Adam's :math:`a`,
    ``friction`` is SGHMC's :math:`\\alpha` (and SGNHT's friction per step).
    """
    if max_curvature <= 0 or not math.isfinite(max_curvature):
        raise ValueError(f"max_curvature must be finite and > 0, got {max_curvature}")
    if not 0 < friction <= 1:
        raise ValueError(f"friction must be in (0, 1], got {friction}")
    base = safety_factor / max_curvature
    if sampler_name == "sgld":
        return base
    if sampler_name in ("rmsprop_sgld", "adam_sgld"):
        return base * stability
    if sampler_name == "sghmc":
        return base * (2.0 - friction) / 2.0
    if sampler_name == "sgnht":
        return math.sqrt(base * (2.0 - friction) / 2.0)
    raise ValueError(
        f"no step-size rule for sampler {sampler_name!r}; expected one of sgld, rmsprop_sgld, "
        "adam_sgld, sghmc, sgnht (or pass step_size= yourself)"
    )


def sampler_options_for(
    sampler_name: str, step_size: float, *, stability: float = 0.1, friction: float = 0.1
) -> dict:
    """The non-step hyperparameters that :func:`step_size_for`'s rule assumes."""
    if sampler_name in ("rmsprop_sgld", "adam_sgld"):
        return {"stability": stability}
    if sampler_name == "sghmc":
        return {"friction": friction}
    if sampler_name == "sgnht":
        return {"diffusion": friction / step_size}
    return {}


def _subsample(data, key, max_examples):
    n = num_examples(data)
    if n <= max_examples:
        return data
    subset = jax.random.choice(key, n, (max_examples,), replace=False)
    return jax.tree.map(lambda x: jnp.take(x, subset, axis=0), data)


def _top_eigenvalues_at(loss_fn, chain_params, data, key, num_iterations, chunk_size):
    """λ_max(H) at each of a batch of parameter points (leading axis = chains)."""
    power = functools.partial(
        _power_iteration, loss_fn=loss_fn, num_iterations=num_iterations, chunk_size=chunk_size
    )
    return jax.vmap(power, in_axes=(0, None, None))(chain_params, data, key)


@functools.partial(jax.jit, static_argnames=("loss_fn", "chunk_size"))
def _gradient_variance_sum(params, data, *, loss_fn, chunk_size):
    r""":math:`\operatorname{tr} V = \sum_j \operatorname{Var}_i[\partial_j \ell_i(w)]` over ``data``.

    One pass over per-example gradients, shifted by the batch gradient for numerical accuracy:
    :math:`\big(\sum_i \lVert g_i - s\rVert^2 - \lVert\sum_i (g_i - s)\rVert^2/m\big)/(m-1)`.
    """
    flat, unravel = ravel_pytree(params)
    m = jax.tree.leaves(data)[0].shape[0]
    num_chunks = math.ceil(m / chunk_size)
    indices = jnp.arange(num_chunks * chunk_size).reshape(num_chunks, chunk_size)

    def per_example_losses(p, batch):
        losses = loss_fn(unravel(p), batch)
        return losses.reshape(losses.shape[0], -1).mean(axis=1)

    shift = jax.grad(lambda p: per_example_losses(p, data).mean())(flat)

    def chunk_sums(chunk_indices):
        valid = (chunk_indices < m).astype(flat.dtype)
        batch = jax.tree.map(lambda x: jnp.take(x, jnp.minimum(chunk_indices, m - 1), axis=0), data)
        gradients = jax.jacrev(per_example_losses)(flat, batch) - shift[None, :]
        gradients = gradients * valid[:, None]
        return jnp.sum(jnp.square(gradients)), jnp.sum(gradients, axis=0)

    squares, sums = jax.lax.map(chunk_sums, indices)
    total = jnp.sum(squares) - jnp.sum(jnp.square(jnp.sum(sums, axis=0))) / m
    return total / max(m - 1, 1)


def gradient_noise_heating(
    sampler_name: str,
    *,
    step_size: float,
    gradient_variance: float,
    nbeta: float,
    batch_size: int,
    friction: float = DEFAULT_FRICTION,
) -> float | None:
    r"""The LLC excess from minibatch gradient noise, to first order in the step size.

    A minibatch of :math:`B` examples drawn with replacement adds noise of covariance
    :math:`V/B` to the gradient (:math:`V` the per-example gradient covariance,
    :math:`\operatorname{tr} V` = ``gradient_variance``). SGLD's update then carries
    :math:`(\epsilon/2)^2 n\beta^2 V_{jj}/B` on top of the injected :math:`\epsilon`, raising
    the temperature of coordinate :math:`j` by :math:`h_j = \epsilon\, n\beta^2 V_{jj}/(4B)`;
    SGHMC's velocity carries :math:`\eta^2 n\beta^2 V_{jj}/B` on top of :math:`2\alpha\eta`:
    :math:`h_j = \eta\, n\beta^2 V_{jj}/(2\alpha B)` (Chen et al. 2014 correct this with
    :math:`\hat\beta`). Each quadratic direction holds :math:`\tfrac12` of the LLC, so the
    excess is about :math:`\sum_j h_j / 2` (an upper bound where :math:`\gamma` dominates a
    direction). Returns ``None`` for samplers this model does not cover (the preconditioned
    ones; SGNHT's thermostat absorbs the heat).
    """
    if batch_size <= 0:
        return None
    total = nbeta**2 * gradient_variance / batch_size
    if sampler_name == "sgld":
        return step_size * total / 8.0
    if sampler_name == "sghmc":
        return step_size * total / (4.0 * friction)
    return None


def gradient_noise_bias(
    sampler_name: str,
    *,
    step_size: float,
    gradient_variance: float,
    nbeta: float,
    batch_size: int,
    llc: float,
    friction: float = DEFAULT_FRICTION,
) -> float | None:
    """Relative LLC bias from minibatch gradient noise: :func:`gradient_noise_heating` / ``llc``."""
    heating = gradient_noise_heating(
        sampler_name, step_size=step_size, gradient_variance=gradient_variance, nbeta=nbeta,
        batch_size=batch_size, friction=friction,
    )
    if heating is None or llc <= 0:
        return None
    return heating / llc


def _friction_for_noise(coefficient, tolerance):
    r"""Smallest friction in [DEFAULT_FRICTION, 1] with SGHMC's noise bias ``K(2-α)/α`` ≤ tolerance.

    At a fixed curvature the learning rate scales as :math:`\eta \propto (2-\alpha)`, so the
    bias :math:`\eta\,n\beta^2\operatorname{tr}V/(4\alpha B\lambda)` is :math:`K(2-\alpha)/\alpha`.
    """
    required = 2.0 * coefficient / (tolerance + coefficient)
    return float(min(1.0, max(DEFAULT_FRICTION, required)))


def calibrate_step_size(
    loss_fn: Callable,
    params: PyTree,
    data: PyTree,
    *,
    key: jax.Array,
    nbeta: float,
    localization: float,
    sampler_name: str = "sgld",
    safety_factor: float = DEFAULT_SAFETY_FACTOR,
    stability: float = 0.1,
    friction: float | None = None,
    noise_tolerance: float = DEFAULT_NOISE_TOLERANCE,
    noise_examples: int = 256,
    pilot_steps: int = 500,
    max_pilot_rounds: int = 3,
    max_pilot_halvings: int = 20,
    num_chains: int = 4,
    batch_size: int | None = None,
    num_iterations: int = 30,
    max_examples: int = 4096,
    init_loss: float | None = None,
) -> Calibration:
    r"""Choose a step size from the curvature :math:`\lambda_{max}(n\beta H + \gamma I)`.

    Round 0 measures :math:`\lambda_{max}(H)` at :math:`w^*` (power iteration on HVPs). The
    curvature of a singular model grows away from :math:`w^*` (e.g. a deep linear network's
    Hessian grows with its weights), so each further round runs ``num_chains`` pilot chains
    for ``pilot_steps`` steps at the current step size, measures :math:`\lambda_{max}` where
    they end, and lowers the step size to :math:`\kappa/\lambda_{max}` of the stiffest point
    seen; it stops when a round raises the curvature by less than 25% (at most
    ``max_pilot_rounds`` measured rounds; ``pilot_steps=0`` disables pilots). A pilot whose
    chains diverge halves the step size and is run again without counting as a round (at most
    ``max_pilot_halvings`` times), so a model that is flat at :math:`w^*` (zero Hessian) still
    gets its curvature measured where the chains go. The rounds are recorded in
    ``Calibration.rounds``.

    Where the last pilot chains end, it also measures the per-example gradient variance
    (on ``noise_examples`` examples); the last pilot's loss over its second half gives the
    pilots' LLC (``init_loss`` is :math:`L_n(w^*)`, computed if not given), less the pilots' own
    predicted heating. It bounds the relative LLC bias that minibatch gradient noise adds
    (:func:`gradient_noise_heating`; reported in ``Calibration.gradient_noise_bias``). SGHMC is
    2/α times more sensitive to it than SGLD: with ``friction=None`` (the default) SGHMC's
    friction becomes the smallest value in [0.1, 1] that keeps the bias below
    ``noise_tolerance`` (1%), and where that is not enough (or for SGLD) the step size is cut
    in proportion. Measured on the DLN suite: a 46k-parameter network was overestimated by
    8-15% at friction 0.1 and batch 500; the calibration chose friction 0.46 and gave −0.1%.
    """
    from slt_jax.samplers import SAMPLERS
    from slt_jax.sampling import evaluate_loss, sample

    check_params(params)
    subset_key, vector_key, pilot_key = jax.random.split(key, 3)
    subset = _subsample(data, subset_key, max_examples)
    chunk_size = min(1024, num_examples(subset))
    check_loss_fn(loss_fn, params, subset, chunk_size)
    eigenvalue = float(
        _power_iteration(
            params, subset, vector_key, loss_fn=loss_fn, num_iterations=num_iterations,
            chunk_size=chunk_size,
        )
    )

    chosen_friction = DEFAULT_FRICTION if friction is None else float(friction)

    def step_for(largest):
        curvature = nbeta * max(largest, 0.0) + localization
        if curvature <= 0:
            raise ValueError(
                "the loss has no positive curvature at params and localization is 0: the "
                "localized posterior is improper; pass localization > 0 or a step_size"
            )
        rule = step_size_for(
            sampler_name, curvature, safety_factor=safety_factor, stability=stability,
            friction=chosen_friction,
        )
        return rule, curvature

    def options_for(step):
        return sampler_options_for(
            sampler_name, step, stability=stability, friction=chosen_friction
        )

    largest = eigenvalue
    step_size, max_curvature = step_for(largest)
    rounds = [dict(round=0, where="w*", max_hessian_eigenvalue=eigenvalue, step_size=step_size)]
    factory = SAMPLERS[sampler_name]
    measured_rounds, halvings, round_index = 0, 0, 0
    endpoints = None
    while pilot_steps > 0 and measured_rounds < max_pilot_rounds:
        round_index += 1
        pilot_key, round_key = jax.random.split(pilot_key)
        used_step = step_size
        # the second half of each pilot is recorded (its loss trace gives the pilots' LLC)
        pilot_draws = max(1, pilot_steps // 2)
        trace = sample(
            loss_fn, params, data,
            factory(step_size, nbeta, localization, **options_for(step_size)), key=round_key,
            num_chains=num_chains, num_draws=pilot_draws, num_burnin=pilot_steps - pilot_draws,
            batch_size=batch_size,
        )
        if bool(trace.diverged.any()):
            # a diverged pilot does not count as a measurement: halve until one survives
            halvings += 1
            if halvings > max_pilot_halvings:
                raise RuntimeError(
                    f"pilot chains still diverge after {max_pilot_halvings} halvings of the step "
                    f"size (now {step_size:.3g}); the loss may be unbounded below near w*, or "
                    "pass step_size= yourself"
                )
            step_size = step_size / 2.0
            rounds.append(dict(round=round_index, where="pilot diverged", step_size=step_size))
            continue
        measured_rounds += 1
        pilot_step = used_step
        pilot_losses = trace.loss
        endpoints = trace.final_params
        pilot_eigenvalues = _top_eigenvalues_at(
            loss_fn, endpoints, subset, vector_key, num_iterations, chunk_size
        )
        pilot_largest = float(jnp.max(pilot_eigenvalues))
        grown = pilot_largest > 1.25 * largest
        largest = max(largest, pilot_largest)
        if grown:
            step_size, max_curvature = step_for(largest)
        rounds.append(
            dict(round=round_index, where=f"{pilot_steps}-step pilot ends",
                 max_hessian_eigenvalue=pilot_largest, step_size=step_size)
        )
        if not grown:
            break

    pilot_llc = noise_bias = None
    if endpoints is not None and batch_size is not None:
        if init_loss is None:
            init_loss = float(evaluate_loss(loss_fn, params, data))
        measured_llc = nbeta * (float(jnp.mean(pilot_losses)) - float(init_loss))
        variance = _mean_gradient_variance(
            loss_fn, endpoints, _subsample(subset, jax.random.fold_in(subset_key, 1), noise_examples)
        )

        def heating_at(step):
            return gradient_noise_heating(
                sampler_name, step_size=step, gradient_variance=variance, nbeta=nbeta,
                batch_size=batch_size, friction=chosen_friction,
            )

        # the pilots ran hot by their own heating: remove it from their LLC
        pilot_heating = heating_at(pilot_step) or 0.0
        pilot_llc = measured_llc - pilot_heating
        if measured_llc <= 0:
            warnings.warn(
                f"the pilot chains' LLC is {measured_llc:.3g} <= 0: w* may not be a local "
                "minimum; the gradient-noise check is skipped",
                RuntimeWarning,
                stacklevel=2,
            )
            pilot_llc = None
        elif pilot_llc < 0.1 * measured_llc:
            warnings.warn(
                f"minibatch gradient noise dominates the pilot chains' loss (pilot LLC "
                f"{measured_llc:.3g}, of which {pilot_heating:.3g} is predicted heating at "
                f"batch_size={batch_size}); the step size is reduced to compensate, but a larger "
                "batch_size would be cheaper and more accurate",
                RuntimeWarning,
                stacklevel=2,
            )
            pilot_llc = 0.1 * measured_llc
        heating = heating_at(step_size) if pilot_llc is not None else None
        step_before_noise = step_size
        if heating is not None:
            bias = heating / pilot_llc
            if sampler_name == "sghmc" and friction is None:
                coefficient = bias * chosen_friction / (2.0 - chosen_friction)
                new_friction = _friction_for_noise(coefficient, noise_tolerance)
                if new_friction != chosen_friction:
                    step_size *= (2.0 - new_friction) / (2.0 - chosen_friction)
                    chosen_friction = new_friction
                    bias = heating_at(step_size) / pilot_llc
                    rounds.append(
                        dict(round=len(rounds), where=f"friction {new_friction:.2g} (grad. noise)",
                             step_size=step_size)
                    )
            if bias > noise_tolerance:
                step_size *= noise_tolerance / bias
                bias = noise_tolerance
                rounds.append(
                    dict(round=len(rounds), where="step cut (grad. noise)", step_size=step_size)
                )
            noise_bias = bias
            if step_size < 0.5 * step_before_noise:
                warnings.warn(
                    f"minibatch gradient noise at batch_size={batch_size} forced the step size "
                    f"down {step_before_noise / step_size:.3g}x (to keep the predicted LLC bias "
                    f"at {noise_tolerance:.0%}); the chains mix that much slower, and a larger "
                    "batch_size would be cheaper",
                    RuntimeWarning,
                    stacklevel=2,
                )
    return Calibration(
        step_size=step_size,
        sampler=sampler_name,
        max_hessian_eigenvalue=largest,
        max_curvature=max_curvature,
        stability_bound=4.0 / max_curvature,
        safety_factor=safety_factor,
        nbeta=nbeta,
        localization=localization,
        rounds=tuple(rounds),
        options=tuple(options_for(step_size).items()),
        pilot_llc=pilot_llc,
        gradient_noise_bias=noise_bias,
    )


def _mean_gradient_variance(loss_fn, chain_params, data):
    """``tr V`` (:func:`_gradient_variance_sum`) averaged over a batch of chain positions."""
    chunk = min(32, num_examples(data))
    variance = functools.partial(_gradient_variance_sum, loss_fn=loss_fn, chunk_size=chunk)
    return float(jnp.mean(jax.lax.map(lambda p: variance(p, data), chain_params)))
