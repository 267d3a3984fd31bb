r"""Step-size calibration from the curvature at :math:`w^*`.

On a quadratic with curvature matrix :math:`A = n\beta H + \gamma I`, SGLD is stable only for
:math:`\epsilon < 4/\lambda_{max}(A)` and its stationary variance along an eigendirection with
precision :math:`P` is :math:`1/(P(1 - \epsilon P/4))` (docs/mathematics.md §1, §7): the relative bias of the
stiffest direction is :math:`\approx \epsilon\lambda_{max}/4`. We measure :math:`\lambda_{max}(H)`
with Lanczos iterations on Hessian-vector products of the full-data (or a large random subset's)
mean loss and set :math:`\epsilon = \kappa/\lambda_{max}(A)` with a safety factor
:math:`\kappa` (``0.1`` by default: about 2.5% variance bias on the stiffest direction, far
inside the stability bound, which leaves room for the curvature growing where the chains go:
on deep linear networks the chains drift along the flat directions of the set of true parameters
into regions where :math:`\lambda_{max}` is several times larger, and a fixed step size's bias
grows with it; ``docs/calibration_findings.md``).

Preconditioned and momentum samplers get the step size with the same stationary-variance bias
on the stiffest direction:

* RMSProp-/Adam-SGLD: with a constant diagonal preconditioner :math:`P` (they adapt it during
  burn-in and freeze it for the draws, ``adapt="burnin"``), Langevin dynamics with step
  :math:`\epsilon` are SGLD on :math:`P^{-1/2}w` with curvature :math:`P^{1/2} A P^{1/2}`, so
  :math:`\epsilon = \kappa/\lambda_{max}(P^{1/2} A P^{1/2})`. At :math:`w^*` (round 0) that is
  the initial :math:`P_0 = \min(1, 1/a)`; each pilot freezes its chains' :math:`P` at the end
  of its burn-in, and the Lanczos iteration where the pilots end runs on
  :math:`P^{1/2} H P^{1/2}` with each chain's own :math:`P` (plus :math:`\gamma \max P`). The
  measured :math:`P` is recorded in ``Calibration.preconditioner``. (The rule before issue 17
  assumed :math:`P = 1/a`, :math:`\epsilon = \kappa a/\lambda_{max}(A)`: on deep linear
  networks the measured median :math:`P` was 3.4-5.4, not 10, so the chains ran at a small
  step where an always-adapting preconditioner is most biased.) Adam-SGLD's draws use the
  gradient as the drift (its lagging first moment would need a :math:`(1-\beta_1)/(1+\beta_1)`
  times smaller step for the same bias, :func:`slt_jax.truth.adam_sgld_stationary_variance`),
  so it takes RMSProp-SGLD's rule.
* SGHMC (learning rate :math:`\eta`, friction :math:`\alpha`): on a quadratic with precision
  :math:`P` its stationary position variance is exactly SGLD's with
  :math:`\epsilon = 2\eta/(2-\alpha)` (:func:`slt_jax.truth.sghmc_stationary_variance`), so
  :math:`\eta = \kappa(2-\alpha)/(2\lambda_{max}(A))`. In the overdamped regime its relaxation
  and diffusion are :math:`(2-\alpha)/\alpha \approx 2/\alpha` times faster than SGLD's at the same bias.
  That is the rule for Chen et al.'s update (``splitting="euler"``). The default BAOAB splitting
  takes the same learning rate, which keeps the same mixing speed and stability margin
  (:math:`\eta\lambda_{max} \approx 0.1 \ll 4`), but its stationary variance on a quadratic is
  exact (:func:`slt_jax.truth.baoab_stationary_variance`): the first-order bias that
  :math:`\kappa` bounds for the other samplers is gone, and what remains is a second-order
  bias from the loss's anharmonicity.
* SGNHT: with :math:`v = \epsilon p` it is SGHMC with :math:`\eta = \epsilon^2` and friction
  :math:`\alpha = \xi\epsilon` (thermostat :math:`\xi`, started at the ``diffusion``
  :math:`A`): :math:`\epsilon = \sqrt{\kappa(2-\alpha)/(2\lambda_{max}(A))}` and
  :math:`A = \alpha/\epsilon`, so the friction per step starts at :math:`\alpha`. (A fixed
  :math:`A = 0.01` gives a friction per step of :math:`\sim 10^{-5}` at the step sizes these
  models need: the thermostat then takes ~:math:`10^5` steps to react and the chain heats up.)
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from slt_jax._chunking import flat_mean_gradient as _flat_mean_gradient
from slt_jax._chunking import map_chunks
from slt_jax._structural import StructuralKey
from slt_jax.samplers import SAMPLER_FAMILIES, SamplerFamily, mask_as_floats
from slt_jax.sampling import check_loss_fn, check_params, evaluate_loss, num_examples, sample
from slt_jax.sampling import _progress_meter

PyTree = Any

__all__ = [
    "Calibration",
    "calibrate_step_size",
    "gradient_noise_bias",
    "gradient_noise_heating",
    "sampler_family",
    "sampler_options_for",
    "step_size_for",
    "top_hessian_eigenvalue",
]

DEFAULT_SAFETY_FACTOR = 0.1
DEFAULT_FRICTION = 0.03  # SGHMC's (BAOAB) starting friction; raised against gradient noise
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
    #: the batch size the step size was calibrated for: the requested one, or a larger one where
    #: ``max_batch_size`` allowed raising it against gradient noise (``n``: full batch);
    #: ``None`` where no minibatch was involved
    batch_size: int | None = None
    #: preconditioned samplers: the preconditioner P the last pilot froze (min, median, max
    #: over chains and sampled coordinates; ``initial`` is P_0); the step is κ/λ_max of
    #: P^½(nβH + γ)P^½ with it
    preconditioner: dict | None = None

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
        measured = self.preconditioner
        preconditioned = (
            f"; preconditioner P measured at the pilots' ends: median {measured['median']:.3g}, "
            f"max {measured['max']:.3g} (P_0 = {measured['initial']:.3g}), so lambda_max is "
            "that of P^1/2 (nbeta*H + gamma) P^1/2"
            if measured is not None else ""
        )
        return (
            f"{self.sampler}: step_size={self.step_size:.3g}{options} from lambda_max(H)="
            f"{self.max_hessian_eigenvalue:.4g}, lambda_max(nbeta*H + gamma)="
            f"{self.max_curvature:.4g} (SGLD stability bound 4/lambda_max = "
            f"{self.stability_bound:.3g}, safety factor {self.safety_factor}){noise}"
            f"{preconditioned}"
        )


def sampler_family(sampler_name: str) -> SamplerFamily:
    """The :class:`~slt_jax.samplers.SamplerFamily` record of a sampler name."""
    if sampler_name not in SAMPLER_FAMILIES:
        raise ValueError(
            f"no step-size rule for sampler {sampler_name!r}; expected one of "
            f"{', '.join(SAMPLER_FAMILIES)} (or pass step_size= yourself)"
        )
    return SAMPLER_FAMILIES[sampler_name]


def _split(key, num: int) -> list:
    """``jax.random.split(key, num)`` as ``num`` keys, made by ``fold_in(key, i)``: with JAX's
    default (partitionable) threefry these are the same keys, and every count shares one
    compiled program (an eager ``split`` compiles one per count, and unpacking it another)."""
    if jax.config.jax_threefry_partitionable:
        return [jax.random.fold_in(key, i) for i in range(num)]
    return list(jax.random.split(key, num))


def _function(loss_fn):
    """The loss function a program's static ``loss_fn`` stands for: a
    :class:`~slt_jax._structural.StructuralKey` (programs shared by every closure with the same
    code and values) or the function itself (compared by identity)."""
    return loss_fn.value if isinstance(loss_fn, StructuralKey) else loss_fn


def _gather(data, indices):
    """The examples ``indices`` of ``data`` (all of it for ``None``), inside a jitted program."""
    if indices is None:
        return data
    return jax.tree.map(lambda x: jnp.take(x, indices, axis=0), data)


def _lanczos_top_eigenvalue(params, data, key, flat_mask=None, *, loss_fn, num_iterations,
                            chunk_size):
    r"""Largest eigenvalue of the Hessian restricted to the sampled coordinates (:math:`M H M`
    with a 0/1 flat mask :math:`M`, the curvature the masked sampler sees; or :math:`S H S`
    with a diagonal scale) by ``num_iterations`` steps of Lanczos with full
    reorthogonalization.

    Lanczos builds an orthonormal basis :math:`Q_k` of the Krylov space
    :math:`\{v, Hv, \ldots, H^{k-1}v\}` and returns the top eigenvalue of the tridiagonal
    :math:`T_k = Q_k^\top H Q_k` (Golub & Van Loan, *Matrix Computations*, §10.1): a lower bound
    on :math:`\lambda_{max}`, never below the Rayleigh quotient of ``k`` power iterations from
    the same start (their iterate lies in the same space), and converging much faster (error
    :math:`\sim e^{-4k\sqrt{\delta}}` for a relative gap :math:`\delta`, against power
    iteration's :math:`(\lambda_2/\lambda_1)^{2k}`); it is the algebraically largest eigenvalue,
    so a large negative one does not hide it. One Hessian-vector product per step; the basis
    costs ``k`` vectors. A step whose new direction vanishes (an invariant subspace, e.g. a
    mask with fewer coordinates than steps) ends the recurrence there."""
    loss_fn = _function(loss_fn)
    flat, unravel = ravel_pytree(params)
    gradient = _flat_mean_gradient(loss_fn, unravel, data, chunk_size)
    restrict = (lambda v: v) if flat_mask is None else (lambda v: flat_mask * v)

    def hessian_vector_product(vector):
        return restrict(jax.jvp(gradient, (flat,), (restrict(vector),))[1])

    steps = int(num_iterations)
    vector = restrict(jax.random.normal(key, flat.shape, flat.dtype))
    vector = vector / jnp.linalg.norm(vector)
    zeros = jnp.zeros((steps,), flat.dtype)

    def body(j, carry):
        basis, vector, alphas, betas, alive, scale = carry
        basis = basis.at[j].set(vector)
        product = hessian_vector_product(vector)
        alpha = jnp.vdot(vector, product)
        for _ in range(2):  # full reorthogonalization, twice (float32)
            product = product - basis.T @ (basis @ product)
        beta = jnp.linalg.norm(product)
        scale = jnp.maximum(scale, jnp.abs(alpha))
        going_on = alive & (beta > 1e-5 * scale)  # below: an invariant subspace
        alphas = alphas.at[j].set(jnp.where(alive, alpha, 0.0))
        betas = betas.at[j].set(jnp.where(going_on, beta, 0.0))
        vector = jnp.where(going_on, product / jnp.where(going_on, beta, 1.0), 0.0)
        return basis, vector, alphas, betas, going_on, scale

    basis = jnp.zeros((steps,) + flat.shape, flat.dtype)
    start = (basis, vector, zeros, zeros, jnp.asarray(True), jnp.zeros((), flat.dtype))
    _, _, alphas, betas, _, _ = jax.lax.fori_loop(0, steps, body, start)
    # steps after the recurrence ended repeat the first Rayleigh quotient, decoupled (never
    # above the top Ritz value); steps after it are the ones whose own beta is 0 upstream
    used = jnp.concatenate([jnp.ones((1,), bool), betas[:-1] > 0])
    used = jnp.cumprod(used.astype(jnp.int32)).astype(bool)
    diagonal = jnp.where(used, alphas, alphas[0])
    off = jnp.where(used[1:], betas[:-1], 0.0)
    tridiagonal = jnp.diag(diagonal) + jnp.diag(off, 1) + jnp.diag(off, -1)
    return jnp.linalg.eigvalsh(tridiagonal)[-1]


def top_hessian_eigenvalue(
    loss_fn: Callable,
    params: PyTree,
    data: PyTree,
    *,
    key: jax.Array,
    num_iterations: int = 20,
    max_examples: int = 4096,
    chunk_size: int = 1024,
    mask: PyTree | None = None,
) -> float:
    r"""Largest eigenvalue of the Hessian of :math:`L_n` at ``params`` by Lanczos iteration.

    With a ``mask`` (:mod:`slt_jax.masks`), of the Hessian restricted to the masked-in
    coordinates (:math:`M H M`): the curvature a sampler with that mask sees.

    ``num_iterations`` Lanczos steps with full reorthogonalization (Golub & Van Loan,
    *Matrix Computations*, §10.1), one Hessian-vector product each; Hessian-vector products are
    forward-over-reverse (``jax.jvp`` of ``jax.grad``) on the mean loss over ``max_examples``
    randomly chosen examples (all of them if ``n`` is smaller), accumulated in chunks of
    ``chunk_size``. Returns the top eigenvalue of the Lanczos tridiagonal
    :math:`T = Q^\top H Q` (a lower bound on the algebraically largest eigenvalue, converging
    much faster than power iteration; it replaced 50 power iterations).
    """
    check_params(params)
    subset_key, vector_key = jax.random.split(key)
    indices = _subset_indices(num_examples(data), subset_key, max_examples)
    chunk_size = min(chunk_size, num_examples(data), max_examples)
    check_loss_fn(loss_fn, params, data, chunk_size)
    eigenvalues = _top_eigenvalues_at(
        jax.tree.map(lambda x: jnp.asarray(x)[None], params), data, indices, vector_key,
        _sampled_coordinates(params, mask)[1],
        loss_fn=StructuralKey(loss_fn), num_iterations=num_iterations, chunk_size=chunk_size,
    )
    return float(np.asarray(eigenvalues)[0])


def _sampled_coordinates(params, mask):
    """The mask of the sampled coordinates (the user's, less any
    :class:`slt_jax.adapters.Frozen` leaf) and the same as a flat 0/1 array (``None``: all)."""
    from slt_jax.masks import trainable

    mask = trainable(params, mask)
    if mask is None:
        return None, None
    floats = jax.tree.leaves(mask_as_floats(mask, params))  # ravel_pytree's order, on the host
    return mask, np.concatenate([np.ravel(np.asarray(x)) for x in floats])


def step_size_for(
    sampler_name: str,
    max_curvature: float,
    *,
    safety_factor: float = DEFAULT_SAFETY_FACTOR,
    stability: float = 0.1,
    friction: float = DEFAULT_FRICTION,
) -> float:
    """The step size of ``sampler_name`` with SGLD's bias at ``safety_factor / max_curvature``.

    The rule is the sampler family's ``step_size_rule`` (module docstring); ``stability`` is
    RMSProp/Adam's :math:`a`, ``friction`` is SGHMC's :math:`\\alpha` (and SGNHT's friction per
    step). For RMSProp-/Adam-SGLD it is the step at their initial preconditioner
    :math:`P_0 = \\min(1, 1/a)` (:func:`calibrate_step_size` then measures :math:`P`).
    """
    family = sampler_family(sampler_name)
    if max_curvature <= 0 or not math.isfinite(max_curvature):
        raise ValueError(f"max_curvature must be finite and > 0, got {max_curvature}")
    if not 0 < friction <= 1:
        raise ValueError(f"friction must be in (0, 1], got {friction}")
    options = {**family.calibration_defaults, "stability": stability, "friction": friction}
    if family.initial_preconditioner is not None:  # before any gradient: P = P_0
        max_curvature = max_curvature * family.initial_preconditioner(options)
    return family.step_size_rule(safety_factor / max_curvature, options)


def sampler_options_for(
    sampler_name: str, step_size: float, *, stability: float = 0.1,
    friction: float = DEFAULT_FRICTION,
) -> dict:
    """The non-step hyperparameters that :func:`step_size_for`'s rule assumes."""
    options = {"stability": stability, "friction": friction}
    return sampler_family(sampler_name).calibrated_options(step_size, options)


def _subset_indices(n: int, key, max_examples: int) -> np.ndarray | None:
    """Indices of ``max_examples`` distinct examples chosen at random (``None``: all ``n``).

    Drawn with NumPy from the key's bits: a JAX shuffle compiles a sort per size (~1 s on CPU)."""
    if n <= max_examples:
        return None
    seed = np.asarray(jax.random.key_data(key)).ravel()
    return np.sort(np.random.default_rng(seed).choice(n, max_examples, replace=False))


@functools.partial(jax.jit, static_argnames=("loss_fn", "num_iterations", "chunk_size"))
def _top_scaled_eigenvalues_at(chain_params, data, indices, key, chain_scales, *, loss_fn,
                               num_iterations, chunk_size):
    r"""λ_max(S H S) at each of a batch of parameter points, ``S = diag(chain_scales[c])``
    per chain (e.g. :math:`\sqrt P` of a preconditioner, 0 on frozen coordinates)."""
    data = _gather(data, indices)
    power = functools.partial(
        _lanczos_top_eigenvalue, loss_fn=loss_fn, num_iterations=num_iterations,
        chunk_size=chunk_size,
    )
    keys = jax.random.split(key, jax.tree.leaves(chain_params)[0].shape[0])
    return jax.vmap(power, in_axes=(0, None, 0, 0))(chain_params, data, keys, chain_scales)


@functools.partial(jax.jit, static_argnames=("loss_fn", "num_iterations", "chunk_size"))
def _top_eigenvalues_at(chain_params, data, indices, key, flat_mask=None, *, loss_fn,
                        num_iterations, chunk_size):
    """λ_max(H) at each of a batch of parameter points (leading axis = chains), each from its
    own random start vector, on the examples ``indices`` of ``data``."""
    data = _gather(data, indices)
    power = functools.partial(
        _lanczos_top_eigenvalue, loss_fn=loss_fn, num_iterations=num_iterations,
        chunk_size=chunk_size,
    )
    keys = jax.random.split(key, jax.tree.leaves(chain_params)[0].shape[0])
    return jax.vmap(power, in_axes=(0, None, 0, None))(chain_params, data, keys, flat_mask)


@functools.partial(jax.jit, static_argnames=("loss_fn", "chunk_size"))
def _gradient_variance_sum(params, data, *, loss_fn, chunk_size):
    """:func:`_gradient_variance` as its own program."""
    return _gradient_variance(params, data, loss_fn=loss_fn, chunk_size=chunk_size)


def _gradient_variance(params, data, flat_mask=None, *, loss_fn, chunk_size):
    r""":math:`\operatorname{tr} V = \sum_j \operatorname{Var}_i[\partial_j \ell_i(w)]` over ``data``.

    One pass over per-example gradients, shifted by the batch gradient for numerical accuracy:
    :math:`\big(\sum_i \lVert g_i - s\rVert^2 - \lVert\sum_i (g_i - s)\rVert^2/m\big)/(m-1)`.
    """
    flat, unravel = ravel_pytree(params)
    m = num_examples(data)

    def per_example_losses(p, batch):
        losses = loss_fn(unravel(p), batch)
        return losses.reshape(losses.shape[0], -1).mean(axis=1)

    shift = jax.grad(lambda p: per_example_losses(p, data).mean())(flat)
    weights = 1.0 if flat_mask is None else flat_mask[None, :]  # sampled coordinates only

    def chunk_sums(batch, valid):
        gradients = (jax.jacrev(per_example_losses)(flat, batch) - shift[None, :]) * weights
        gradients = jnp.where(valid[:, None], gradients, 0.0)
        return jnp.sum(jnp.square(gradients)), jnp.sum(gradients, axis=0)

    squares, sums = map_chunks(chunk_sums, data, chunk_size)
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
    splitting: str = "baoab",
) -> float | None:
    r"""The LLC excess from minibatch gradient noise, to first order in the step size.

    A minibatch of :math:`B` examples drawn with replacement adds noise of covariance
    :math:`V/B` to the gradient (:math:`V` the per-example gradient covariance,
    :math:`\operatorname{tr} V` = ``gradient_variance``). SGLD's update then carries
    :math:`(\epsilon/2)^2 n\beta^2 V_{jj}/B` on top of the injected :math:`\epsilon`, raising
    the temperature of coordinate :math:`j` by :math:`h_j = \epsilon\, n\beta^2 V_{jj}/(4B)`;
    SGHMC's velocity carries :math:`\eta^2 n\beta^2 V_{jj}/B` on top of :math:`2\alpha\eta`:
    :math:`h_j = \eta\, n\beta^2 V_{jj}/(2\alpha B)` for Chen et al.'s update
    (``splitting="euler"``; they correct it with :math:`\hat\beta`) and
    :math:`h_j = \eta\, n\beta^2 V_{jj}(2-\alpha)/(4\alpha B)` for BAOAB (the default; the
    noisy kick is half refreshed before it moves the position), both from the discrete Lyapunov
    equation of the update on a quadratic, to first order in :math:`\eta P`. Each quadratic direction holds :math:`\tfrac12` of the LLC, so the
    excess is about :math:`\sum_j h_j / 2` (an upper bound where :math:`\gamma` dominates a
    direction). Returns ``None`` for samplers this model does not cover (the preconditioned
    ones; SGNHT's thermostat absorbs the heat): the family's ``gradient_noise_heating``.
    """
    heating = sampler_family(sampler_name).gradient_noise_heating
    if batch_size <= 0 or heating is None:
        return None
    return heating(step_size, nbeta**2 * gradient_variance / batch_size,
                   {"friction": friction, "splitting": splitting})


def gradient_noise_bias(
    sampler_name: str,
    *,
    step_size: float,
    gradient_variance: float,
    nbeta: float,
    batch_size: int,
    llc: float,
    friction: float = DEFAULT_FRICTION,
    splitting: str = "baoab",
) -> float | None:
    """Relative LLC bias from minibatch gradient noise: :func:`gradient_noise_heating` / ``llc``."""
    heating = gradient_noise_heating(
        sampler_name, step_size=step_size, gradient_variance=gradient_variance, nbeta=nbeta,
        batch_size=batch_size, friction=friction, splitting=splitting,
    )
    if heating is None or llc <= 0:
        return None
    return heating / llc


def _friction_for_noise(bias_at, tolerance):
    r"""Smallest friction in [DEFAULT_FRICTION, 1] with SGHMC's predicted noise bias ≤ tolerance.

    ``bias_at(α)`` is the predicted relative LLC bias at friction :math:`\alpha` with the step
    size rescaled by the calibration's rule (:math:`\eta \propto 2-\alpha` at a fixed
    curvature): :math:`K(2-\alpha)/\alpha` for Chen et al.'s update and
    :math:`K(2-\alpha)^2/\alpha` for BAOAB, both decreasing in :math:`\alpha`; solved by
    bisection.
    """
    low, high = DEFAULT_FRICTION, 1.0
    if bias_at(low) <= tolerance:
        return low
    if bias_at(high) > tolerance:
        return high
    for _ in range(60):
        middle = 0.5 * (low + high)
        if bias_at(middle) > tolerance:
            low = middle
        else:
            high = middle
    return float(high)


# --------------------------------------------------------------------------------------------
# calibrate_step_size, in named steps
# --------------------------------------------------------------------------------------------


class _Problem(NamedTuple):
    """What every calibration step needs: the model, the sampler family and its settings."""

    loss_fn: Callable
    params: PyTree
    data: PyTree
    subset: np.ndarray | None  # indices of at most max_examples examples (None: all)
    chunk_size: int
    family: SamplerFamily
    nbeta: float
    localization: float
    safety_factor: float
    num_chains: int
    batch_size: int | None
    num_iterations: int
    progress: Any = False  # sample()'s progress argument: True, False or a ProgressMeter
    mask: Any = None  # the sampled coordinates (pilots' sampler mask), None: all
    flat_mask: Any = None  # the same as a flat 0/1 array for the Hessian (None: all)
    batch_chunk: int | None = None  # the pilots' sample(batch_chunk=): the batch is data


class _Search(NamedTuple):
    """The state of the step-size search: the stiffest curvature seen and the chosen step."""

    largest: float
    step_size: float
    max_curvature: float
    options: dict  # the family's calibration options (friction, stability)
    rounds: list
    pilot_step: float | None = None
    pilot_losses: Any = None
    endpoints: Any = None
    preconditioner: dict | None = None  # the P the last pilot measured (preconditioned only)


def _step_for(problem: _Problem, largest: float, options: dict) -> tuple[float, float]:
    curvature = problem.nbeta * max(largest, 0.0) + problem.localization
    if curvature <= 0:
        raise ValueError(
            "the loss has no positive curvature at params and localization is 0: the "
            "localized posterior is improper; pass localization > 0 or a step_size"
        )
    step = step_size_for(
        problem.family.name, curvature, safety_factor=problem.safety_factor,
        stability=options.get("stability", 0.1), friction=options.get("friction", DEFAULT_FRICTION),
    )
    if problem.family.initial_preconditioner is not None:  # the curvature the sampler sees
        curvature = curvature * problem.family.initial_preconditioner(options)
    return step, curvature


def _pilot_sampler(problem: _Problem, step_size: float, options: dict):
    family = problem.family
    extra = {"splitting": options["splitting"]} if "splitting" in options else {}
    return family.factory(
        step_size, problem.nbeta, problem.localization, mask=problem.mask,
        **family.calibrated_options(step_size, options), **extra,
    )


def _curvature_at_center(problem: _Problem, key, options=None) -> float:
    """λ_max(H) at w*, from ``num_chains`` random starts (the pilots' program shape)."""
    from slt_jax.sampling import _start_chains

    # w* broadcast over chains by the program that starts the pilots' chains (w* and a pilot
    # sampler's state, and the chains' keys): no program of its own
    sampler_state = _pilot_sampler(
        problem, 1.0, {**problem.family.calibration_defaults, **(options or {})}
    ).init(problem.params)
    (centers, _), _ = _start_chains((problem.params, sampler_state), key,
                                    num_chains=problem.num_chains)
    return _max_eigenvalue(problem, centers, key)


def _max_eigenvalue(problem: _Problem, chain_params, key) -> float:
    with _shown(problem.progress, "calibrating: top Hessian eigenvalue"):
        eigenvalues = _top_eigenvalues_at(
            chain_params, problem.data, problem.subset, key, problem.flat_mask,
            loss_fn=StructuralKey(problem.loss_fn),
            num_iterations=problem.num_iterations, chunk_size=problem.chunk_size,
        )
        return float(np.max(np.asarray(eigenvalues)))


def _run_pilot(problem: _Problem, search: _Search, key, pilot_steps: int):
    # the second half of each pilot is recorded (its loss trace gives the pilots' LLC)
    pilot_draws = max(1, pilot_steps // 2)
    return sample(
        problem.loss_fn, problem.params, problem.data,
        _pilot_sampler(problem, search.step_size, search.options), key=key,
        num_chains=problem.num_chains, num_draws=pilot_draws,
        num_burnin=pilot_steps - pilot_draws, batch_size=problem.batch_size,
        batch_chunk=problem.batch_chunk,
        progress=_labelled(problem.progress, f"calibrating (pilot {len(search.rounds)})"),
    )


class _Labelled:
    """A progress meter shown under a fixed description (the calibration's steps)."""

    def __init__(self, meter, description):
        self.meter, self.description = meter, description

    def start(self, total_steps, description):
        self.meter.start(total_steps, self.description)

    def update(self, steps, phase):
        self.meter.update(steps, phase)

    def close(self):
        self.meter.close()


def _labelled(progress, description):
    """``sample``'s ``progress`` argument shown under ``description`` (``False`` when off)."""
    return _Labelled(_progress_meter(progress), description) if progress else False


@contextlib.contextmanager
def _shown(progress, description):
    """One calibration step outside ``sample`` (Lanczos iteration, gradient noise) as a
    one-step bar: "compiling / running" until the block inside has finished."""
    meter = _labelled(progress, description)
    if not meter:
        yield
        return
    meter.start(1, description)
    meter.update(0, "compiling / running")
    try:
        yield
        meter.update(1, "done")
    finally:
        meter.close()


def _measure_pilot_end(problem: _Problem, search: _Search, trace, key, pilot_steps) -> tuple:
    """Curvature where the pilot chains ended; returns (new search, whether it grew)."""
    if problem.family.preconditioner_value is not None:
        return _measure_preconditioned_pilot_end(problem, search, trace, key, pilot_steps)
    pilot_largest = _max_eigenvalue(problem, trace.final_params, key)
    grown = pilot_largest > 1.25 * search.largest
    largest = max(search.largest, pilot_largest)
    step, curvature = (
        _step_for(problem, largest, search.options) if grown
        else (search.step_size, search.max_curvature)
    )
    search.rounds.append(dict(
        round=len(search.rounds), where=f"{pilot_steps}-step pilot ends",
        max_hessian_eigenvalue=pilot_largest, step_size=step,
    ))
    new = search._replace(
        largest=largest, step_size=step, max_curvature=curvature, pilot_step=search.step_size,
        pilot_losses=_paired_losses(trace), endpoints=trace.final_params,
    )
    return new, grown


def _measure_preconditioned_pilot_end(problem, search, trace, key, pilot_steps) -> tuple:
    r"""Preconditioned samplers: :math:`\lambda_{max}(P^{1/2}(n\beta H + \gamma)P^{1/2})` where
    the pilots ended, each chain with the :math:`P` it froze at the end of its burn-in (bounded
    by :math:`n\beta\lambda_{max}(P^{1/2}HP^{1/2}) + \gamma\max P`); returns (new search,
    whether it grew by more than 25%). The step never exceeds the round at :math:`w^*`'s."""
    roots, largest_p, measured = _pilot_preconditioner(
        problem, trace.state.sampler_state, search.options
    )
    with _shown(problem.progress, "calibrating: preconditioned Hessian eigenvalue"):
        eigenvalues = np.asarray(_top_scaled_eigenvalues_at(
            trace.final_params, problem.data, problem.subset, key, roots,
            loss_fn=StructuralKey(problem.loss_fn), num_iterations=problem.num_iterations,
            chunk_size=problem.chunk_size,
        ))
    curvature = float(np.max(
        problem.nbeta * np.maximum(eigenvalues, 0.0) + problem.localization * largest_p
    ))
    grown = curvature > 1.25 * search.max_curvature
    largest_curvature = max(curvature, search.max_curvature)
    step = problem.family.step_size_rule(problem.safety_factor / largest_curvature, search.options)
    search.rounds.append(dict(
        round=len(search.rounds), where=f"{pilot_steps}-step pilot ends, P^½HP^½",
        max_hessian_eigenvalue=float(np.max(eigenvalues)), step_size=step,
        median_preconditioner=measured["median"], max_preconditioner=measured["max"],
    ))
    new = search._replace(
        step_size=step, max_curvature=largest_curvature, pilot_step=search.step_size,
        pilot_losses=_paired_losses(trace), endpoints=trace.final_params, preconditioner=measured,
    )
    return new, grown


def _pilot_preconditioner(problem, sampler_state, options):
    r"""The pilots' frozen preconditioners: per chain the flat :math:`\sqrt P` on the sampled
    coordinates (0 elsewhere) and :math:`\max P`, and a summary (min/median/max over chains
    and sampled coordinates, and :math:`P_0`)."""
    family = problem.family
    flat = np.asarray(_flat_preconditioners(sampler_state, value_fn=family.preconditioner_value))
    sampled = np.ones(flat.shape[1], bool) if problem.flat_mask is None else problem.flat_mask > 0
    values = flat[:, sampled].astype(np.float64)
    measured = dict(
        min=float(values.min()), median=float(np.median(values)), max=float(values.max()),
        initial=float(family.initial_preconditioner({**family.calibration_defaults, **options})),
    )
    return np.sqrt(flat) * sampled, values.max(axis=1), measured


@functools.partial(jax.jit, static_argnames=("value_fn",))
def _flat_preconditioners(sampler_state, *, value_fn):
    """``(chains, d)``: each chain's preconditioner ``value_fn(state)``, flattened as
    ``ravel_pytree`` flattens the params."""
    return jax.vmap(lambda state: ravel_pytree(value_fn(state))[0])(sampler_state)


def _paired_losses(trace):
    """``L_B(w_t) − L_B(w*) `` per draw, or ``L_B(w_t)`` when the trace has no center loss
    (then ``_pilot_llc`` subtracts :math:`L_n(w^*)`)."""
    losses = np.asarray(trace.loss, np.float64)
    if trace.center_loss is None:
        return losses, False
    return losses - np.asarray(trace.center_loss, np.float64), True


def _pilot_rounds(problem, search, key, pilot_steps, max_pilot_rounds, max_pilot_halvings):
    """Pilot chains at the current step; re-measure the curvature where they end; repeat until
    it stops growing by more than 25%. A diverged pilot halves the step (not a round)."""
    measured_rounds = halvings = 0
    while pilot_steps > 0 and measured_rounds < max_pilot_rounds:
        key, round_key = _split(key, 2)
        trace = _run_pilot(problem, search, round_key, pilot_steps)
        if np.any(np.asarray(trace.diverged)):
            halvings += 1
            if halvings > max_pilot_halvings:
                raise RuntimeError(
                    f"pilot chains still diverge after {max_pilot_halvings} halvings of the step "
                    f"size (now {search.step_size:.3g}); the loss may be unbounded below near "
                    "w*, or pass step_size= yourself"
                )
            search = search._replace(step_size=search.step_size / 2.0)
            search.rounds.append(
                dict(round=len(search.rounds), where="pilot diverged", step_size=search.step_size)
            )
            continue
        measured_rounds += 1
        search, grown = _measure_pilot_end(
            problem, search, trace, jax.random.fold_in(round_key, 1), pilot_steps
        )
        if not grown:
            break
    return search


def _pilot_llc(problem, search, heating_at, init_loss, warn_noise=True) -> float | None:
    """The pilots' LLC less their own predicted heating (``None`` when not usable)."""
    losses, paired = search.pilot_losses
    measured = problem.nbeta * (float(np.mean(losses)) - (0.0 if paired else float(init_loss)))
    pilot_heating = heating_at(search.pilot_step, search.options) or 0.0
    corrected = measured - pilot_heating
    if measured <= 0:
        warnings.warn(
            f"the pilot chains' LLC is {measured:.3g} <= 0: w* may not be a local minimum; the "
            "gradient-noise check is skipped",
            RuntimeWarning, stacklevel=4,
        )
        return None
    if corrected < 0.1 * measured:
        if not warn_noise:  # the caller raises the batch instead (and says so if it cannot)
            return 0.1 * measured
        warnings.warn(
            f"minibatch gradient noise dominates the pilot chains' loss (pilot LLC {measured:.3g}, "
            f"of which {pilot_heating:.3g} is predicted heating at batch_size="
            f"{problem.batch_size}); the step size is reduced to compensate, but a larger "
            "batch_size would be cheaper and more accurate",
            RuntimeWarning, stacklevel=4,
        )
        return 0.1 * measured
    return corrected


def _tune_friction(problem, search, bias, heating_at, pilot_llc, tolerance):
    """SGHMC: raise the friction (and rescale the step) until the noise bias is ≤ tolerance."""
    friction = search.options["friction"]

    def step_at(alpha):
        return search.step_size * (2.0 - alpha) / (2.0 - friction)

    def bias_at(alpha):
        return heating_at(step_at(alpha), {**search.options, "friction": alpha}) / pilot_llc

    new_friction = _friction_for_noise(bias_at, tolerance)
    if new_friction <= friction:
        return search, bias
    step = step_at(new_friction)
    options = {**search.options, "friction": new_friction}
    search.rounds.append(dict(
        round=len(search.rounds), where=f"friction {new_friction:.2g} (grad. noise)", step_size=step
    ))
    search = search._replace(step_size=step, options=options)
    return search, heating_at(step, options) / pilot_llc


def _whole_chunks(batch_size: int, chunk: int | None) -> int:
    """A raised batch rounded up to whole chunks (``sample(batch_chunk=)``: the same program,
    and the padding of a last chunk costs as much as examples)."""
    return batch_size if not chunk else chunk * -(-batch_size // chunk)


def _gradient_noise_control(problem, search, key, tune_friction, tolerance, noise_examples,
                            init_loss, max_batch_size=None):
    """Measure tr V where the pilots ended and keep the predicted LLC bias ≤ ``tolerance``:
    SGHMC's friction first, then (where ``max_batch_size`` allows) a larger batch, then a
    smaller step. Returns ``(search, pilot_llc, bias, batch_size)``."""
    examples = np.arange(num_examples(problem.data)) if problem.subset is None else problem.subset
    with _shown(problem.progress, "calibrating: gradient noise"):
        variance = _endpoint_gradient_variance(
            problem.loss_fn, search.endpoints, problem.data, examples, key, noise_examples,
            problem.flat_mask,
        )

    def heating_for(batch_size, full=False):
        def heating_at(step, options):
            if full:
                return 0.0  # the full data (batch_size=None): no gradient noise
            return gradient_noise_heating(
                problem.family.name, step_size=step, gradient_variance=variance,
                nbeta=problem.nbeta, batch_size=batch_size,
                friction=options.get("friction", DEFAULT_FRICTION),
                splitting=options.get("splitting", "baoab"),
            )
        return heating_at

    batch_size = problem.batch_size
    heating_at = heating_for(batch_size)
    pilot_llc = _pilot_llc(problem, search, heating_at, init_loss,
                           warn_noise=max_batch_size is None or max_batch_size <= batch_size)
    heating = heating_at(search.step_size, search.options) if pilot_llc is not None else None
    if heating is None:
        return search, pilot_llc, None, batch_size
    step_before_noise, bias = search.step_size, heating / pilot_llc
    before_friction = search
    if tune_friction:
        search, bias = _tune_friction(problem, search, bias, heating_at, pilot_llc, tolerance)
    if bias > tolerance and max_batch_size is not None and max_batch_size > batch_size:
        # a step cut of c costs c times the steps to mix as far; a batch c times larger costs at
        # most c times per step, mixes at the same speed and needs no heating model (the
        # normal crossing at n = 1000 had its step cut 88x at batch 500 and read -40%)
        # the smallest batch at which the friction can do the rest; where that is half the
        # data or more, the full batch (at most 2x more per step, no heating at all, so the
        # friction returns to its default and soft directions mix faster)
        n = num_examples(problem.data)
        raised = _whole_chunks(int(np.ceil(batch_size * bias / tolerance)), problem.batch_chunk)
        if 2 * raised >= n and max_batch_size >= n:
            raised = n
        raised = int(min(max_batch_size, raised))
        batch_size = n if raised >= n else raised
        heating_at = heating_for(batch_size, full=batch_size >= n)
        search = before_friction
        search.rounds.append(dict(
            round=len(search.rounds), where=f"batch {batch_size} (grad. noise)",
            step_size=search.step_size,
        ))
        bias = heating_at(search.step_size, search.options) / pilot_llc
        if tune_friction:
            search, bias = _tune_friction(problem, search, bias, heating_at, pilot_llc, tolerance)
    if bias > tolerance:
        search = search._replace(step_size=search.step_size * tolerance / bias)
        search.rounds.append(dict(
            round=len(search.rounds), where="step cut (grad. noise)", step_size=search.step_size
        ))
        bias = tolerance
    if search.step_size < 0.5 * step_before_noise:
        cut = step_before_noise / search.step_size
        # soft and flat directions move ~ step/friction per step: the slowdown from both
        slowdown = cut * search.options.get("friction", 1.0) / before_friction.options.get(
            "friction", 1.0)
        barely = (
            f" With the friction raised too, soft and flat directions move {slowdown:.3g}x "
            "slower than the calibration intended: the chains barely move in a run of the "
            "usual length, and since the LLC draws start at 0 at w* the estimate is probably "
            "low and its error bar too small (a normal crossing cut 88x read 0.0012 ± 0.0011 "
            "for an exact 0.066)."
            if slowdown >= 30 else ""
        )
        warnings.warn(
            f"minibatch gradient noise at batch_size={batch_size} forced the step size "
            f"down {cut:.3g}x (to keep the predicted LLC bias at "
            f"{tolerance:.0%}); the chains mix that much slower, and a larger batch_size would be "
            f"cheaper (batch_size='auto' raises it up to 8x or to the full data).{barely}",
            RuntimeWarning, stacklevel=3,
        )
    return search, pilot_llc, bias, batch_size


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
    splitting: str | None = None,
    noise_tolerance: float = DEFAULT_NOISE_TOLERANCE,
    noise_examples: int = 256,
    pilot_steps: int = 500,
    max_pilot_rounds: int = 3,
    max_pilot_halvings: int = 20,
    num_chains: int = 4,
    batch_size: int | None = None,
    num_iterations: int = 12,
    max_examples: int = 4096,
    init_loss: float | None = None,
    progress: bool | Any = False,
    mask: PyTree | None = None,
    max_batch_size: int | None = None,
    batch_chunk: int | None = None,
) -> Calibration:
    r"""Choose a step size from the curvature :math:`\lambda_{max}(n\beta H + \gamma I)`.

    Round 0 measures :math:`\lambda_{max}(H)` at :math:`w^*` (``num_iterations`` Lanczos steps on HVPs, from
    ``num_chains`` random start vectors). The
    curvature of a singular model grows away from :math:`w^*` (e.g. a deep linear network's
    Hessian grows with its weights), so each further round runs ``num_chains`` pilot chains
    for ``pilot_steps`` steps at the current step size, measures :math:`\lambda_{max}` where
    they end, and lowers the step size to :math:`\kappa/\lambda_{max}` of the stiffest point
    seen; it stops when a round raises the curvature by less than 25% (at most
    ``max_pilot_rounds`` measured rounds; ``pilot_steps=0`` disables pilots). A pilot whose
    chains diverge halves the step size and is run again without counting as a round (at most
    ``max_pilot_halvings`` times), so a model that is flat at :math:`w^*` (zero Hessian) still
    gets its curvature measured where the chains go. The rounds are recorded in
    ``Calibration.rounds``. The pilots run the same compiled program as a
    :func:`slt_jax.sample` call with the same chain count and batch size (run lengths are data).

    Where the last pilot chains end, it also measures the per-example gradient variance
    (on ``noise_examples`` examples); the last pilot's loss over its second half gives the
    pilots' LLC (``init_loss`` is :math:`L_n(w^*)`, computed if not given), less the pilots' own
    predicted heating. It bounds the relative LLC bias that minibatch gradient noise adds
    (:func:`gradient_noise_heating`; reported in ``Calibration.gradient_noise_bias``). SGHMC is
    about 2/α times more sensitive to it than SGLD: with ``friction=None`` (the default) SGHMC's
    friction becomes the smallest value in [0.03, 1] that keeps the bias below
    ``noise_tolerance`` (1%), and where that is not enough (or for SGLD) the step size is cut
    in proportion. Measured on the DLN suite: a 46k-parameter network was overestimated by
    8-15% at friction 0.1 and batch 500 (Euler update); the calibration chose friction 0.46 and
    gave −0.1% (BAOAB: 0.27 and −0.5%). The pilots end closer to :math:`w^*` than a long run's
    chains, where per-example gradients differ less, so this is an underestimate on models whose
    gradient noise grows away from :math:`w^*`; :func:`slt_jax.estimate_llc` checks again where
    its chains ended.
    Everything a rule needs to know about the sampler comes from its
    :class:`~slt_jax.samplers.SamplerFamily` record.

    With a ``mask`` (the weight-refined LLC; :mod:`slt_jax.masks`), everything is measured in
    the sampled subspace only: the Lanczos iteration runs on :math:`M H M`, the pilots sample with
    the mask and the gradient noise counts the sampled coordinates (frozen ones cannot heat).
    :class:`slt_jax.adapters.Frozen` leaves of ``params`` are always frozen.

    Args:
      loss_fn, params, data: as in :func:`slt_jax.sample` (per-example losses).
      key: a ``jax.random.key`` for the Lanczos iterations, pilots and subsets.
      nbeta, localization: :math:`n\beta` and :math:`\gamma` of the run to calibrate for.
      sampler_name: the sampler family (``"sgld"``, ``"sghmc"``, ...).
      safety_factor: :math:`\kappa` in :math:`\epsilon = \kappa/\lambda_{max}`.
      stability, friction: the family's options (``friction=None``: tuned for SGHMC).
      splitting: SGHMC's integrator for the pilots and the heating model (``None``: the
        sampler's default, BAOAB).
      noise_tolerance: largest predicted relative LLC bias from gradient noise.
      noise_examples: examples on which the per-example gradient variance is measured.
      pilot_steps, max_pilot_rounds, max_pilot_halvings: the pilot search (see above).
      num_chains, batch_size: those of the run (the pilots use the same program).
      num_iterations, max_examples: Lanczos steps (Hessian-vector products per start; 12
        match or beat 30 power iterations on the transformer and DLN: 2.5x fewer HVPs),
        and examples they use at most.
      init_loss: :math:`L_n(w^*)` (computed if ``None``).
      progress: ``True`` or a :class:`~slt_jax.sampling.ProgressMeter` to show each step
        (curvature, each pilot with its "compiling" phase, gradient noise) as a bar.
      mask: optional weight mask (see above).
      max_batch_size: where the gradient noise needs more than the friction (or for SGLD),
        raise the batch up to this size (``>= n``: full batch) before cutting the step size
        (``Calibration.batch_size`` says which batch the step is for; ``None``: keep
        ``batch_size``). A step cut by ``c`` costs ``c`` times the steps to mix as far; a batch
        ``c`` times larger costs at most ``c`` times per step and needs no heating model.
      batch_chunk: run the pilots with ``sample(batch_chunk=...)`` (the batch size is data of
        their program, so a run at a raised batch reuses it); a raised batch is rounded up to
        whole chunks. ``None``: the pilots' program is that of ``batch_size``.

    Returns:
      a :class:`Calibration`: ``step_size``, ``options`` (e.g. the friction), the rounds and
      the evidence (``.table()``, ``.summary()``).
    """
    family = sampler_family(sampler_name)
    if splitting is not None and family.name != "sghmc":
        raise ValueError(f"splitting is an option of sghmc only, not of {family.name!r}")
    check_params(params)
    subset_key, vector_key, pilot_key = _split(key, 3)
    subset = _subset_indices(num_examples(data), subset_key, max_examples)
    # Hessian-vector products in chunks of 256 examples: 23% faster than 1024 on the
    # transformer of issue 20 (the chunk's activations stay in cache), the same sums
    chunk_size = min(256, num_examples(data), max_examples)
    check_loss_fn(loss_fn, params, data, chunk_size)
    mask, flat_mask = _sampled_coordinates(params, mask)
    problem = _Problem(loss_fn, params, data, subset, chunk_size, family, nbeta, localization,
                       safety_factor, num_chains, batch_size, num_iterations, progress, mask,
                       flat_mask, batch_chunk if batch_size is not None else None)
    options = {**family.calibration_defaults, "stability": stability}
    if friction is not None:
        options["friction"] = float(friction)
    options.setdefault("friction", DEFAULT_FRICTION)
    if splitting is not None:
        options["splitting"] = splitting
    eigenvalue = _curvature_at_center(problem, vector_key, options)
    step, curvature = _step_for(problem, eigenvalue, options)
    search = _Search(eigenvalue, step, curvature, options, [
        dict(round=0, where="w*", max_hessian_eigenvalue=eigenvalue, step_size=step)
    ])
    search = _pilot_rounds(problem, search, pilot_key, pilot_steps, max_pilot_rounds,
                           max_pilot_halvings)
    pilot_llc = noise_bias = None
    chosen_batch = batch_size
    if search.endpoints is not None and batch_size is not None:
        if init_loss is None:
            init_loss = float(evaluate_loss(loss_fn, params, data))
        search, pilot_llc, noise_bias, chosen_batch = _gradient_noise_control(
            problem, search, jax.random.fold_in(subset_key, 1),
            family.tunes_friction and friction is None, noise_tolerance, noise_examples, init_loss,
            max_batch_size,
        )
    return Calibration(
        step_size=search.step_size, sampler=sampler_name, max_hessian_eigenvalue=search.largest,
        max_curvature=search.max_curvature, stability_bound=4.0 / search.max_curvature,
        safety_factor=safety_factor, nbeta=nbeta, localization=localization,
        rounds=tuple(search.rounds), preconditioner=search.preconditioner,
        options=tuple(family.calibrated_options(search.step_size, search.options).items()),
        pilot_llc=pilot_llc, gradient_noise_bias=noise_bias, batch_size=chosen_batch,
    )


def _endpoint_gradient_variance(loss_fn, endpoints, data, examples, key, max_examples,
                                flat_mask=None, chain_weights=None) -> float:
    """``tr V`` averaged over chain ``endpoints``, on at most ``max_examples`` of ``examples``
    (indices into ``data``) drawn with ``key``: the measurement behind the gradient-noise bias
    (the calibration's pilots, and ``estimate_llc``'s check where its chains ended).
    ``chain_weights`` (0/1 per chain, default all 1) leaves chains out as data, so every
    selection of chains runs the same program."""
    picked = _subset_indices(examples.size, key, max_examples)
    indices = examples if picked is None else examples[picked]
    chains = jax.tree.leaves(endpoints)[0].shape[0]
    weights = (np.ones(chains, np.float32) if chain_weights is None
               else np.asarray(chain_weights, np.float32))
    return float(_mean_gradient_variance(
        endpoints, data, indices, flat_mask, weights, loss_fn=StructuralKey(loss_fn),
        chunk_size=min(32, indices.size),
    ))


@functools.partial(jax.jit, static_argnames=("loss_fn", "chunk_size"))
def _mean_gradient_variance(chain_params, data, indices, flat_mask=None, chain_weights=None, *,
                            loss_fn, chunk_size):
    """``tr V`` (:func:`_gradient_variance`) averaged over a batch of chain positions (weighted
    by ``chain_weights``, default equal), on the examples ``indices`` of ``data``."""
    loss_fn = _function(loss_fn)
    data = _gather(data, indices)
    variance = functools.partial(_gradient_variance, loss_fn=loss_fn, chunk_size=chunk_size)
    variances = jax.lax.map(lambda p: variance(p, data, flat_mask), chain_params)
    if chain_weights is None:
        return jnp.mean(variances)
    weights = chain_weights.astype(variances.dtype)
    return jnp.sum(weights * variances) / jnp.sum(weights)
