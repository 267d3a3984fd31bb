"""Truths: learning coefficients and related quantities known in closed form.

These are the ground truths that samplers and estimators in ``slt_jax`` are tested
against (see ``docs/mathematics.md`` section 7). Learning coefficients are returned exactly, as
:class:`fractions.Fraction`; the Gaussian checks are returned as ``float64`` numbers.

This module is pure Python (plus numpy for the Gaussian checks); it never imports jax.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction
from typing import Sequence

import numpy as np

__all__ = [
    "regular",
    "normal_crossing",
    "separable",
    "reduced_rank_regression",
    "deep_linear_network",
    "deep_linear_network_multiplicity",
    "gaussian_llc",
    "sgld_stationary_variance",
    "sghmc_stationary_variance",
    "baoab_stationary_variance",
    "adam_sgld_stationary_variance",
    "linear_regression_loss_covariance",
    "saxe_mode_strength",
    "saxe_half_rise_time",
]


# ---------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _nonnegative_integer(value, name: str) -> int:
    if not _is_integer(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _positive_integer(value, name: str) -> int:
    if not _is_integer(value) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _nonnegative_rational(value, name: str) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, (numbers.Rational, float)):
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    fraction = Fraction(value)
    if fraction < 0:
        raise ValueError(f"{name} must be non-negative, got {value!r}")
    return fraction


# ---------------------------------------------------------------------------
# Regular, normal crossing and separable models
# ---------------------------------------------------------------------------


def regular(d: int) -> Fraction:
    r"""Learning coefficient of a regular model with ``d`` parameters.

    .. math::

        \lambda = \frac{d}{2}

    Holds whenever the Hessian of :math:`K` at the true parameter has full rank
    (Watanabe, *Algebraic Geometry and Statistical Learning Theory*, 2009; docs/mathematics.md §7).

    Args:
        d: the number of parameters, an integer :math:`\ge 0`.

    Returns:
        :math:`d/2` as a :class:`fractions.Fraction`.

    Examples:
        >>> from slt_jax import truth
        >>> truth.regular(10)
        Fraction(5, 1)
    """
    return Fraction(_nonnegative_integer(d, "d"), 2)


def normal_crossing(
    powers: Sequence[int], prior_powers: Sequence[int] | None = None
) -> Fraction:
    r"""Learning coefficient of a normal crossing :math:`K(w) = \prod_i w_i^{2k_i}`.

    With a prior :math:`\varphi(w) \propto \prod_i |w_i|^{h_i}` near the origin,

    .. math::

        \lambda = \min_{i:\,k_i > 0} \frac{h_i + 1}{2 k_i},

    and :math:`h_i = 0` (a prior positive at the origin) by default. Example:
    :math:`f(x; w) = x \prod_i w_i^{k_i}` fitted to pure noise. Coordinates with
    :math:`k_i = 0` do not enter :math:`K` and are ignored (Watanabe 2009, resolution of
    singularities / normal crossing form; docs/mathematics.md §7).

    Args:
        powers: the exponents :math:`k_i \ge 0` (rationals allowed).
        prior_powers: the prior exponents :math:`h_i \ge 0`, same length as ``powers``.

    Returns:
        :math:`\lambda` as a :class:`fractions.Fraction`.

    Raises:
        ValueError: if an input is negative, the lengths differ, or no :math:`k_i > 0`.

    Examples:
        >>> from slt_jax import truth
        >>> truth.normal_crossing([1, 2])          # K = w_1^2 w_2^4: λ = min(1/2, 1/4)
        Fraction(1, 4)
    """
    ks = [_nonnegative_rational(k, "powers[%d]" % i) for i, k in enumerate(powers)]
    if prior_powers is None:
        hs = [Fraction(0)] * len(ks)
    else:
        hs = [
            _nonnegative_rational(h, "prior_powers[%d]" % i)
            for i, h in enumerate(prior_powers)
        ]
        if len(hs) != len(ks):
            raise ValueError(
                "prior_powers must have the same length as powers, "
                f"got {len(hs)} and {len(ks)}"
            )
    candidates = [(h + 1) / (2 * k) for k, h in zip(ks, hs) if k > 0]
    if not candidates:
        raise ValueError("normal_crossing needs at least one power k_i > 0")
    return min(candidates)


def separable(powers: Sequence[int]) -> Fraction:
    r"""Expected :math:`n\beta K` for a separable :math:`K(w) = \sum_i w_i^{2k_i}`.

    Without localization (:math:`\gamma = 0`) the tempered posterior
    :math:`\propto \exp(-n\beta K)` factorizes, and for every :math:`n\beta > 0`

    .. math::

        \mathbb{E}[n\beta K] = \sum_i \frac{1}{2 k_i},

    which is the learning coefficient of :math:`K` (Watanabe 2009; docs/mathematics.md §7).

    Args:
        powers: the exponents :math:`k_i > 0`.

    Returns:
        :math:`\sum_i 1/(2k_i)` as a :class:`fractions.Fraction`.

    Raises:
        ValueError: if ``powers`` is empty or some :math:`k_i \le 0`.

    Examples:
        >>> from slt_jax import truth
        >>> truth.separable([1, 2])               # w_1^2 + w_2^4: 1/2 + 1/4
        Fraction(3, 4)
    """
    ks = [_nonnegative_rational(k, "powers[%d]" % i) for i, k in enumerate(powers)]
    if not ks:
        raise ValueError("separable needs at least one power")
    if any(k == 0 for k in ks):
        raise ValueError(f"separable needs every power k_i > 0, got {list(powers)!r}")
    return sum((1 / (2 * k) for k in ks), Fraction(0))


# ---------------------------------------------------------------------------
# Reduced-rank regression and deep linear networks
# ---------------------------------------------------------------------------


def reduced_rank_regression(
    input_dim: int, hidden_dim: int, output_dim: int, rank: int
) -> Fraction:
    r"""Learning coefficient of reduced-rank regression :math:`f(x) = BAx`.

    Aoyagi & Watanabe 2005, "Stochastic complexities of reduced rank regression in
    Bayesian estimation" (Neural Networks 18). With :math:`M` = ``input_dim``,
    :math:`H` = ``hidden_dim``, :math:`N` = ``output_dim`` and :math:`r` = ``rank`` the
    rank of the true product :math:`B_0 A_0`:

    .. math::

        \lambda = \begin{cases}
            \tfrac12 (HM - Hr + Nr) & M + H < N + r, \\
            \tfrac12 (HN - Hr + Mr) & N + H < M + r, \\
            \tfrac12 MN             & M + N < H + r, \\
            \tfrac18 \left[2(H+r)(M+N) - (M-N)^2 - (H+r)^2
                + ((M+H+N+r) \bmod 2)\right] & \text{otherwise.}
        \end{cases}

    Args:
        input_dim, hidden_dim, output_dim: :math:`M, H, N`.
        rank: :math:`r`, the rank of the true product.

    Returns:
        :math:`\lambda` as a :class:`fractions.Fraction`.

    Raises:
        ValueError: if a dimension is not a positive integer or the rank is not in
            :math:`0 \le r \le \min(M, H, N)`.

    Examples:
        >>> from slt_jax import truth
        >>> truth.reduced_rank_regression(5, 4, 6, rank=1)
        Fraction(21, 2)
    """
    m = _positive_integer(input_dim, "input_dim")
    h = _positive_integer(hidden_dim, "hidden_dim")
    n = _positive_integer(output_dim, "output_dim")
    r = _nonnegative_integer(rank, "rank")
    if r > min(m, h, n):
        raise ValueError(
            f"rank must satisfy 0 <= rank <= min(input_dim, hidden_dim, output_dim) "
            f"= {min(m, h, n)}, got {r}"
        )
    if m + h < n + r:
        return Fraction(h * m - h * r + n * r, 2)
    if n + h < m + r:
        return Fraction(h * n - h * r + m * r, 2)
    if m + n < h + r:
        return Fraction(m * n, 2)
    parity = (m + h + n + r) % 2
    return Fraction(2 * (h + r) * (m + n) - (m - n) ** 2 - (h + r) ** 2 + parity, 8)


def _validate_widths_and_rank(widths: Sequence[int], rank: int) -> tuple[list[int], int]:
    widths = list(widths)
    if len(widths) < 2:
        raise ValueError(
            "widths must list at least 2 layer widths H_0 (input) ... H_L (output), "
            f"got {widths!r}"
        )
    widths = [_positive_integer(h, "widths[%d]" % i) for i, h in enumerate(widths)]
    r = _nonnegative_integer(rank, "rank")
    if r > min(widths):
        raise ValueError(
            f"rank must satisfy 0 <= rank <= min(widths) = {min(widths)}, got {r}"
        )
    return widths, r


def _deep_linear_network_subset(deficits: list[int]) -> tuple[list[int], int]:
    r"""The set :math:`\Sigma` of Aoyagi's theorem, as sorted deficits, and :math:`\ell`.

    ``deficits`` are :math:`\Delta_i = H_i - r` for all :math:`i = 0, \dots, L`. Returns
    the first sorted prefix of length :math:`\ell + 1` (:math:`\ell \ge 1`) with

    (a) :math:`\max_{\Sigma} \Delta < \min_{\notin \Sigma} \Delta`,
    (b) :math:`\sum_{\Sigma} \Delta \ge \ell \max_{\Sigma} \Delta`,
    (c) :math:`\sum_{\Sigma} \Delta < \ell \min_{\notin \Sigma} \Delta`,

    where (a) and (c) hold vacuously when :math:`\Sigma` is everything.
    """
    ordered = sorted(deficits)
    for ell in range(1, len(ordered)):
        subset, rest = ordered[: ell + 1], ordered[ell + 1 :]
        total = sum(subset)
        condition_b = total >= ell * subset[-1]
        condition_a = not rest or subset[-1] < rest[0]
        condition_c = not rest or total < ell * rest[0]
        if condition_a and condition_b and condition_c:
            return subset, ell
    # Unreachable: if (a) or (c) fails for a prefix, (b) holds for the next one, and the
    # full set satisfies (a), (c) vacuously; (b) holds for ell = 1.
    raise AssertionError("no subset satisfies Aoyagi's conditions")  # pragma: no cover


def _deep_linear_network_terms(widths: Sequence[int], rank: int):
    """Shared computation: returns (lambda, a, ell) for L >= 2."""
    r = rank
    subset, ell = _deep_linear_network_subset([h - r for h in widths])
    total = sum(subset)
    ceiling = -(-total // ell)  # M = ceil(S / ell), exact integer arithmetic
    a = total - (ceiling - 1) * ell
    pair_sum = sum(
        subset[i] * subset[j] for i in range(len(subset)) for j in range(i + 1, len(subset))
    )
    value = (
        Fraction(-r * r + r * (widths[0] + widths[-1]), 2)
        + Fraction(a * (ell - a), 4 * ell)
        - Fraction(ell * (ell - 1), 4) * Fraction(total, ell) ** 2
        + Fraction(pair_sum, 2)
    )
    return value, a, ell


def deep_linear_network(widths: Sequence[int], rank: int) -> Fraction:
    r"""Learning coefficient of a deep linear network :math:`f(x) = W_L \cdots W_1 x`.

    Aoyagi 2024, "Consideration on the learning efficiency of multiple-layered neural
    networks with linear units" (Neural Networks 172; used as the benchmark truth by
    Furman & Lau, arXiv 2402.03698). Widths :math:`H_0` (input), ..., :math:`H_L`
    (output); :math:`r` is the rank of the true product :math:`W^*_L \cdots W^*_1`.

    Let :math:`\Delta_i = H_i - r` for :math:`i = 0, \dots, L`, sorted ascending. Take the
    first prefix :math:`\Sigma` of length :math:`\ell + 1` (:math:`\ell \ge 1`) with

    (a) :math:`\max_{\Sigma} \Delta < \min_{\notin\Sigma} \Delta`,
    (b) :math:`\sum_{\Sigma} \Delta \ge \ell \max_{\Sigma} \Delta`,
    (c) :math:`\sum_{\Sigma} \Delta < \ell \min_{\notin\Sigma} \Delta`

    ((a), (c) hold vacuously when :math:`\Sigma` is everything). With
    :math:`S = \sum_{\Sigma} \Delta`, :math:`M = \lceil S/\ell \rceil` and
    :math:`a = S - (M - 1)\ell`,

    .. math::

        \lambda = \frac{-r^2 + r(H_0 + H_L)}{2} + \frac{a(\ell - a)}{4\ell}
            - \frac{\ell(\ell - 1)}{4}\left(\frac{S}{\ell}\right)^2
            + \frac12 \sum_{i < j \in \Sigma} \Delta_i \Delta_j .

    For :math:`L = 1` (two widths) the model is regular: :math:`\lambda = H_0 H_1 / 2`.
    For :math:`L = 2` this equals :func:`reduced_rank_regression`.

    Args:
        widths: :math:`H_0, \dots, H_L`, at least two positive integers.
        rank: :math:`r`, the rank of the true end-to-end product.

    Returns:
        :math:`\lambda` as a :class:`fractions.Fraction` (the *global* learning coefficient;
        it is the local one at a teacher whose layers all have rank :math:`r`).

    Raises:
        ValueError: if fewer than two widths are given, a width is not a positive
            integer, or the rank is not in :math:`0 \le r \le \min_i H_i`.

    Examples:
        >>> from slt_jax import truth
        >>> truth.deep_linear_network([15, 4, 26], rank=1)
        Fraction(41, 1)
        >>> float(truth.deep_linear_network([5, 4, 6], rank=1))
        10.5
    """
    widths, r = _validate_widths_and_rank(widths, rank)
    if len(widths) == 2:
        return Fraction(widths[0] * widths[1], 2)
    value, _, _ = _deep_linear_network_terms(widths, r)
    return value


def deep_linear_network_multiplicity(widths: Sequence[int], rank: int) -> int:
    r"""Multiplicity :math:`m` of the learning coefficient of a deep linear network.

    Aoyagi 2024 (see :func:`deep_linear_network` for :math:`a` and :math:`\ell`):

    .. math::

        m = a(\ell - a) + 1,

    and :math:`m = 1` for a single layer (:math:`L = 1`, a regular model).

    Raises:
        ValueError: as :func:`deep_linear_network`.
    """
    widths, r = _validate_widths_and_rank(widths, rank)
    if len(widths) == 2:
        return 1
    _, a, ell = _deep_linear_network_terms(widths, r)
    return a * (ell - a) + 1


# ---------------------------------------------------------------------------
# Exact Gaussian checks (with SGLD discretization)
# ---------------------------------------------------------------------------

_UNSTABLE_MESSAGE = "SGLD is stable only for step_size < 4/max precision"


def sgld_stationary_variance(precision, step_size):
    r"""Stationary variance of SGLD on a 1-d quadratic with precision :math:`P`.

    The update :math:`u \leftarrow u - \tfrac{\varepsilon}{2} P u + \sqrt{\varepsilon}\,\eta`
    (the SLT convention of docs/mathematics.md §1) has the stationary variance

    .. math::

        v = \frac{1}{P\,(1 - \varepsilon P / 4)},

    the fixed point of :math:`v = (1 - \varepsilon P/2)^2 v + \varepsilon`; it tends to
    the exact :math:`1/P` as :math:`\varepsilon \to 0` (docs/mathematics.md §7).

    Accepts scalars (returns a ``float``) or arrays (returns a ``float64`` array).

    Raises:
        ValueError: if :math:`P \le 0`, :math:`\varepsilon < 0`, or
            :math:`\varepsilon P \ge 4` (SGLD diverges).
    """
    p = np.asarray(precision, dtype=np.float64)
    eps = float(step_size)
    if not np.all(np.isfinite(p)) or np.any(p <= 0):
        raise ValueError(f"precision must be positive and finite, got {precision!r}")
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"step_size must be non-negative and finite, got {step_size!r}")
    if np.any(eps * p >= 4):
        raise ValueError(
            f"{_UNSTABLE_MESSAGE} = {4 / float(np.max(p))!r}, got step_size={eps!r}"
        )
    variance = 1.0 / (p * (1.0 - eps * p / 4.0))
    return float(variance) if variance.ndim == 0 else variance


def sghmc_stationary_variance(precision, learning_rate, friction):
    r"""Stationary position and velocity variances of SGHMC on a 1-d quadratic.

    The update of :func:`slt_jax.samplers.sghmc` on :math:`U(u) = \tfrac12 P u^2`,

    .. math::

        v \leftarrow (1-\alpha) v - \eta P u + \sqrt{2\alpha\eta}\,\xi,\qquad u \leftarrow u + v,

    is a linear recursion whose stationary covariance solves a discrete Lyapunov equation
    (ours; checked against ``scipy.linalg.solve_discrete_lyapunov`` in the tests):

    .. math::

        \operatorname{Var} u = \frac{1}{P\,(1 - \eta P / (2(2-\alpha)))},\qquad
        \operatorname{Var} v = \frac{2\eta}{(2-\alpha)\,(1 - \eta P / (2(2-\alpha)))}.

    The position variance is SGLD's (:func:`sgld_stationary_variance`) at
    :math:`\epsilon = 2\eta/(2-\alpha)`: at equal bias SGHMC's learning rate is
    :math:`(2-\alpha)/2` times SGLD's step size. Stable for :math:`\eta P < 2(2-\alpha)`.

    Returns ``(position_variance, velocity_variance)``, floats for scalar input.
    """
    p = np.asarray(precision, dtype=np.float64)
    eta = float(learning_rate)
    alpha = float(friction)
    if not np.all(np.isfinite(p)) or np.any(p <= 0):
        raise ValueError(f"precision must be positive and finite, got {precision!r}")
    if not math.isfinite(eta) or eta < 0:
        raise ValueError(f"learning_rate must be non-negative and finite, got {learning_rate!r}")
    if not 0 < alpha <= 1:
        raise ValueError(f"friction must be in (0, 1], got {friction!r}")
    bound = 2.0 * (2.0 - alpha)
    if np.any(eta * p >= bound):
        raise ValueError(
            f"SGHMC is stable only for learning_rate < 2(2 - friction)/max precision = "
            f"{bound / float(np.max(p))!r}, got learning_rate={eta!r}"
        )
    shrink = 1.0 - eta * p / bound
    position = 1.0 / (p * shrink)
    velocity = 2.0 * eta / ((2.0 - alpha) * shrink)
    if position.ndim == 0:
        return float(position), float(velocity)
    return position, velocity


def baoab_stationary_variance(precision, learning_rate, friction):
    r"""Stationary position and velocity variances of BAOAB SGHMC on a 1-d quadratic.

    The update of :func:`slt_jax.samplers.sghmc` with ``splitting="baoab"`` on
    :math:`U(u) = \tfrac12 P u^2` (Leimkuhler & Matthews 2013, arXiv 1203.5428),

    .. math::

        k = v - \eta P u,\quad u \leftarrow u + k/2,\quad
        v \leftarrow c\,k + \sqrt{\eta(1-c^2)}\,\xi,\quad u \leftarrow u + v/2,
        \qquad c = 1 - \alpha,

    is a linear recursion whose stationary covariance (discrete Lyapunov equation, checked
    against ``scipy.linalg.solve_discrete_lyapunov`` in the tests) is exactly the target's:

    .. math::

        \operatorname{Var} u = 1/P,\qquad \operatorname{Var} v = \eta

    for every friction and every stable learning rate :math:`\eta P < 4` (ours; the exactness
    of BAOAB's configurational sampling for harmonic potentials is Leimkuhler & Matthews').
    Compare :func:`sghmc_stationary_variance` (the Euler update), biased at first order.

    Returns ``(position_variance, velocity_variance)``, floats for scalar input.
    """
    p = np.asarray(precision, dtype=np.float64)
    eta = float(learning_rate)
    alpha = float(friction)
    if not np.all(np.isfinite(p)) or np.any(p <= 0):
        raise ValueError(f"precision must be positive and finite, got {precision!r}")
    if not math.isfinite(eta) or eta < 0:
        raise ValueError(f"learning_rate must be non-negative and finite, got {learning_rate!r}")
    if not 0 < alpha <= 1:
        raise ValueError(f"friction must be in (0, 1], got {friction!r}")
    if np.any(eta * p >= 4.0):
        raise ValueError(
            f"BAOAB is stable only for learning_rate < 4/max precision = "
            f"{4.0 / float(np.max(p))!r}, got learning_rate={eta!r}"
        )
    position = 1.0 / p
    velocity = np.full_like(p, eta)
    if position.ndim == 0:
        return float(position), float(velocity)
    return position, velocity


def adam_sgld_stationary_variance(curvature, nbeta, localization, step_size, first_decay):
    r"""Stationary variance of Adam-SGLD's lagging-first-moment drift with a constant
    preconditioner on a 1-d quadratic.

    This is published Adam-SGLD (drift :math:`n\beta\,\hat m`) whose :math:`P` does not move
    (e.g. ``adam_sgld(adapt="always", stability=a)`` with a large :math:`a`), the recursion
    that ``adam_sgld(adapt="burnin")`` would follow after burn-in if it kept :math:`\hat m`.
    It does not: frozen, :func:`slt_jax.samplers.adam_sgld` drifts along the gradient itself,
    so its draws have :func:`sgld_stationary_variance` with step :math:`\epsilon P`; this
    function measures the first moment's lag it avoids. With :math:`h = \epsilon P` the
    effective step, the update on :math:`L(u) = \tfrac12 a u^2` (gradient :math:`g = a u`,
    exact) is, long after the first moment's bias correction has died out,

    .. math::

        m_t = \beta_1 m_{t-1} + (1-\beta_1)\, a u_t,\qquad
        u_{t+1} = u_t - \tfrac{h}{2}\big(n\beta\, m_t + \gamma u_t\big) + \sqrt{h}\,\eta_t,

    a linear recursion in :math:`(u_t, m_{t-1})` whose stationary covariance solves a discrete
    Lyapunov equation (ours; solved here exactly as a 4×4 linear system). With
    :math:`c = n\beta a + \gamma`, to first order in :math:`hc`:
    :math:`\operatorname{Var} u \approx \frac1c\big(1 + hc\,[\tfrac14 +
    \tfrac{n\beta a}{c}\tfrac{\beta_1}{2(1-\beta_1)}]\big)`; :math:`\beta_1 = 0` is SGLD's
    :func:`sgld_stationary_variance`.

    Args:
        curvature: :math:`a \ge 0` (scalar or array).
        nbeta: :math:`n\beta > 0`.
        localization: :math:`\gamma \ge 0`.
        step_size: the effective step :math:`h = \epsilon P > 0` (scalar or array, broadcast
            with ``curvature``).
        first_decay: :math:`\beta_1 \in [0, 1)`.

    Returns:
        :math:`\operatorname{Var} u` (float for scalar input, else an array).

    Raises:
        ValueError: on invalid input or an unstable recursion (spectral radius ≥ 1).

    Examples:
        >>> from slt_jax import truth
        >>> sgld = truth.sgld_stationary_variance(101.0, 1e-3)     # c = 100 * 1 + 1
        >>> abs(truth.adam_sgld_stationary_variance(1.0, 100.0, 1.0, 1e-3, 0.0) - sgld) < 1e-12
        True
        >>> round(101.0 * truth.adam_sgld_stationary_variance(1.0, 100.0, 1.0, 1e-3, 0.9), 3)
        1.474
    """
    a, h = np.broadcast_arrays(np.asarray(curvature, np.float64), np.asarray(step_size, np.float64))
    nbeta, gamma, beta = float(nbeta), float(localization), float(first_decay)
    if not np.all(np.isfinite(a)) or np.any(a < 0) or not np.all(np.isfinite(h)) or np.any(h <= 0):
        raise ValueError(
            f"curvature must be >= 0 and step_size > 0, got {curvature!r}, {step_size!r}"
        )
    if not (nbeta > 0 and gamma >= 0 and 0 <= beta < 1):
        raise ValueError(f"need nbeta > 0, localization >= 0, 0 <= first_decay < 1; got "
                         f"{nbeta!r}, {localization!r}, {first_decay!r}")
    variances = np.empty(a.shape)
    for index in np.ndindex(a.shape):
        k, step = nbeta * a[index], h[index]
        transition = np.array([
            [1.0 - step / 2 * (k * (1 - beta) + gamma), -step / 2 * nbeta * beta],
            [a[index] * (1 - beta), beta],
        ])
        if np.max(np.abs(np.linalg.eigvals(transition))) >= 1:
            raise ValueError(
                f"Adam-SGLD is unstable at step_size={step!r} (curvature {a[index]!r})"
            )
        noise = np.zeros(4)
        noise[0] = step
        covariance = np.linalg.solve(np.eye(4) - np.kron(transition, transition), noise)
        variances[index] = covariance[0]
    return float(variances) if variances.ndim == 0 else variances


def gaussian_llc(curvatures, nbeta, localization=0.0, step_size=None) -> float:
    r"""Expected LLC estimate on a quadratic loss, exact and under discrete SGLD.

    For :math:`L(w) - L(w^*) = \tfrac12 \sum_i a_i u_i^2` with exact gradients, the
    localized tempered posterior is Gaussian with precisions
    :math:`P_i = n\beta\, a_i + \gamma`, so

    .. math::

        \mathbb{E}[\hat\lambda] = \frac12 \sum_i \frac{n\beta\, a_i}{P_i},

    and with step size :math:`\varepsilon` SGLD's stationary variance is
    :math:`1/(P_i(1 - \varepsilon P_i/4))` (:func:`sgld_stationary_variance`), so

    .. math::

        \mathbb{E}[\hat\lambda_{\mathrm{SGLD}}] =
            \frac12 \sum_i \frac{n\beta\, a_i}{P_i (1 - \varepsilon P_i / 4)}

    (docs/mathematics.md §7; LLC estimator of Lau et al., arXiv 2308.12108). With :math:`\gamma = 0`
    and all :math:`a_i > 0` the exact value is :math:`d/2`. A direction with
    :math:`a_i = 0` does not change the loss and contributes 0.

    Args:
        curvatures: the :math:`a_i \ge 0` (list or array).
        nbeta: :math:`n\beta > 0`.
        localization: :math:`\gamma \ge 0`.
        step_size: :math:`\varepsilon > 0`, or ``None`` for the exact posterior.

    Returns:
        :math:`\mathbb{E}[\hat\lambda]` as a float.

    Raises:
        ValueError: on negative curvatures, non-positive ``nbeta``, negative
            ``localization``, non-positive ``step_size``, or
            :math:`\varepsilon P_i \ge 4` for some :math:`i` (unstable SGLD).

    Examples:
        >>> from slt_jax import truth
        >>> truth.gaussian_llc([1.0, 2.0], nbeta=100.0)          # d/2 without localization
        1.0
        >>> round(truth.gaussian_llc([1.0, 2.0], nbeta=100.0, step_size=1e-3), 4)
        1.0391
    """
    a = np.asarray(curvatures, dtype=np.float64).reshape(-1)
    nbeta = float(nbeta)
    gamma = float(localization)
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError(f"curvatures must be non-negative and finite, got {curvatures!r}")
    if not math.isfinite(nbeta) or nbeta <= 0:
        raise ValueError(f"nbeta must be positive, got {nbeta!r}")
    if not math.isfinite(gamma) or gamma < 0:
        raise ValueError(f"localization must be non-negative, got {gamma!r}")
    active = a > 0  # flat directions contribute nothing to the loss
    a = a[active]
    precision = nbeta * a + gamma
    if step_size is None:
        variance = 1.0 / precision
    else:
        eps = float(step_size)
        if not math.isfinite(eps) or eps <= 0:
            raise ValueError(f"step_size must be positive or None, got {step_size!r}")
        if precision.size and eps * precision.max() >= 4:
            raise ValueError(
                f"{_UNSTABLE_MESSAGE} = {4 / float(precision.max())!r}, "
                f"got step_size={eps!r}"
            )
        variance = sgld_stationary_variance(precision, eps) if precision.size else precision
    return float(0.5 * np.sum(nbeta * a * variance))


def linear_regression_loss_covariance(X, Sigma, residuals):
    r"""Covariance of per-example losses under a Gaussian posterior, linear regression.

    For :math:`\ell_i(w) = \tfrac12 (x_i^\top w - y_i)^2` and
    :math:`w \sim \mathcal N(w_0, \Sigma)`, with :math:`S = X \Sigma X^\top` and residuals
    :math:`r_i = x_i^\top w_0 - y_i`,

    .. math::

        \operatorname{Cov}(\ell_i, \ell_j) = \frac{S_{ij}^2}{2} + r_i r_j S_{ij}

    (Isserlis' theorem; the closed-form check for the loss kernel / BIF, docs/mathematics.md §7).

    Args:
        X: design matrix, shape ``(n, d)``.
        Sigma: posterior covariance, shape ``(d, d)``.
        residuals: shape ``(n,)``.

    Returns:
        The ``(n, n)`` covariance matrix (``float64``).
    """
    X = np.asarray(X, dtype=np.float64)
    Sigma = np.asarray(Sigma, dtype=np.float64)
    r = np.asarray(residuals, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must have shape (n, d), got {X.shape}")
    n, d = X.shape
    if Sigma.shape != (d, d):
        raise ValueError(f"Sigma must have shape ({d}, {d}), got {Sigma.shape}")
    if r.shape != (n,):
        raise ValueError(f"residuals must have shape ({n},), got {r.shape}")
    S = X @ Sigma @ X.T
    return 0.5 * S**2 + np.outer(r, r) * S


# ---------------------------------------------------------------------------
# Learning dynamics of deep linear networks (docs/mathematics.md §6)
# ---------------------------------------------------------------------------


def _saxe_arguments(s, a0, learning_rate):
    s = np.asarray(s, dtype=np.float64)
    a0 = np.asarray(a0, dtype=np.float64)
    eta = float(learning_rate)
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"s (the mode's singular value) must be positive, got {s!r}")
    if not np.all(np.isfinite(a0)) or np.any(a0 <= 0) or np.any(a0 >= s):
        raise ValueError(f"a0 (the initial mode strength) must be in (0, s), got {a0!r}")
    if not math.isfinite(eta) or eta <= 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate!r}")
    return s, a0, eta


def saxe_mode_strength(t, s, a0, learning_rate):
    r"""Strength of one mode of a 2-layer linear network under gradient descent (Saxe et al.).

    For :math:`L = \tfrac12 \mathbb E\lVert W_2 W_1 x - y\rVert^2` with whitened inputs
    (:math:`\Sigma_{xx} = I`), :math:`\Sigma_{yx} = \sum_\alpha s_\alpha u_\alpha
    v_\alpha^\top` and balanced weights aligned with the modes at initial strength
    :math:`a_0`, gradient flow with learning rate :math:`\eta` gives
    :math:`\dot a = 2\eta\, a (s - a)` per mode, i.e. after :math:`t` steps

    .. math::

        a(t) = \frac{s\, e^{2 s \eta t}}{e^{2 s \eta t} - 1 + s / a_0}

    (Saxe, McClelland & Ganguli 2014, arXiv 1312.6120, eq. 6; docs/mathematics.md §6), a sigmoid
    from :math:`a_0` to :math:`s`. Evaluated as :math:`s / (1 + (s/a_0 - 1) e^{-2s\eta t})` so
    large ``t`` cannot overflow. Broadcasts over ``t``, ``s`` and ``a0``.

    >>> round(saxe_mode_strength(0.0, 1.0, 1e-3, 0.01), 6)
    0.001
    >>> round(saxe_mode_strength(saxe_half_rise_time(1.0, 1e-3, 0.01), 1.0, 1e-3, 0.01), 6)
    0.5
    """
    s, a0, eta = _saxe_arguments(s, a0, learning_rate)
    t = np.asarray(t, dtype=np.float64)
    strength = s / (1.0 + (s / a0 - 1.0) * np.exp(-2.0 * s * eta * t))
    return float(strength) if strength.ndim == 0 else strength


def saxe_half_rise_time(s, a0, learning_rate):
    r"""Steps until a mode of :func:`saxe_mode_strength` reaches half its final strength.

    .. math::

        t_{1/2} = \frac{\ln(s/a_0 - 1)}{2 s \eta}

    (solve :math:`a(t) = s/2`; Saxe, McClelland & Ganguli 2014, arXiv 1312.6120;
    docs/mathematics.md §6). Stronger modes are learned first: :math:`t_{1/2} \propto 1/s`
    up to the logarithm.

    >>> round(saxe_half_rise_time(1.0, 1e-3, 0.01), 3)
    345.338
    """
    s, a0, eta = _saxe_arguments(s, a0, learning_rate)
    time = np.log(s / a0 - 1.0) / (2.0 * s * eta)
    return float(time) if time.ndim == 0 else time
