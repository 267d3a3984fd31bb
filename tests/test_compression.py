"""Compressibility (issue 19 C, arXiv 2510.12077; docs/mathematics.md §6).

* Dithered rounding with step Δ raises a quadratic loss by Δ² tr(H)/24 in expectation over the
  offsets (within 4 Monte Carlo standard errors).
* Plain b-bit symmetric rounding of a least-squares fit: ΔL falls as 4^{-b}.
* Rank-k truncation of a linear layer with whitened inputs at its least-squares fit raises the
  loss by exactly ½ Σ_{i>k} σ_i².
* Across minimal-rank DLN teachers of increasing λ the critical rank follows the estimated LLC
  (Spearman ≥ 0.8). The same across the checkpoints of one training run is in
  ``notebooks/compressibility.ipynb`` at its real size (12 checkpoints × an LLC each took 22 s
  on this CPU, more than this file's budget).
* Bad input gets a clear error.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import slt_jax as slt
from slt_jax.adapters import Frozen
from slt_jax.data import make_dln_data, make_dln_teacher
from slt_jax.models import dln_loss


def _quadratic(dimension, key):
    """A random non-diagonal positive definite H (positive off-diagonal mass: correlated
    rounding errors would show up as a bias) and a point w*."""
    a_key, w_key = jax.random.split(key)
    factor = jax.random.normal(a_key, (dimension, dimension)) / np.sqrt(dimension)
    hessian = factor @ factor.T + 0.5 * jnp.ones((dimension, dimension)) / dimension
    center = jax.random.normal(w_key, (dimension,))
    return hessian, center


def test_dithered_rounding_raises_a_quadratic_by_step_squared_trace_over_24():
    hessian, center = _quadratic(64, jax.random.key(0))
    bits = 3
    step = 2 * float(jnp.max(jnp.abs(center))) / (2**bits - 1)

    def increase(key):
        error = slt.compression.quantize({"w": center}, bits, dither_key=key)["w"] - center
        return 0.5 * error @ hessian @ error

    samples = np.asarray(jax.vmap(increase)(jax.random.split(jax.random.key(1), 4000)),
                         np.float64)
    expected = step**2 * float(jnp.trace(hessian)) / 24
    error = samples.std(ddof=1) / np.sqrt(samples.size)
    assert abs(samples.mean() - expected) < 4 * error, (samples.mean(), expected, error)


def test_dithered_errors_are_uniform_on_half_a_step_and_use_two_to_the_b_levels():
    center = jax.random.normal(jax.random.key(2), (2000,))
    bits = 2
    largest = float(jnp.max(jnp.abs(center)))
    step = 2 * largest / (2**bits - 1)
    rounded = slt.compression.quantize({"w": center}, bits, dither_key=jax.random.key(3))["w"]
    error = np.asarray(rounded - center, np.float64) / step
    assert np.max(np.abs(error)) <= 0.5 + 1e-5
    # uniform on [-1/2, 1/2]: mean 0, variance 1/12 (4 standard errors)
    assert abs(error.mean()) < 4 * np.sqrt(1 / 12 / error.size)
    assert abs(error.var() - 1 / 12) < 4 * np.sqrt(1 / 180 / error.size)
    plain = np.asarray(slt.compression.quantize({"w": center}, bits)["w"])
    assert np.unique(plain).size == 2**bits
    assert np.allclose(np.unique(plain), -largest + step * np.arange(2**bits), atol=1e-5)


def test_symmetric_quantization_loss_falls_as_four_to_the_minus_bits():
    """Why 4^{-b} holds here: the loss of a least-squares fit is exactly quadratic around it,
    ΔL = ½ eᵀ Σxx e for the rounding error e, and with 400 weights spread continuously and a
    step Δ = 2 max|w|/(2^b − 1) small against that spread (b ≥ 3), the errors are close to
    uniform on [−Δ/2, Δ/2] and uncorrelated (Bennett's high-resolution approximation), so
    ΔL ≈ Δ² tr(Σxx)/24 ∝ (2^b − 1)^{-2} ≈ 4^{-b}. (At 1-2 bits the errors are not small, and a
    singular model's ΔL need not be quadratic in Δ: neither is in this test.)"""
    dimension, n = 400, 800
    x = jax.random.normal(jax.random.key(4), (n, dimension))
    w_star = jax.random.normal(jax.random.key(5), (dimension,))
    data = (x, x @ w_star)  # noiseless: w* is the least-squares fit and L_n(w*) = 0

    def loss_fn(params, batch):
        inputs, targets = batch
        return 0.5 * (inputs @ params["w"] - targets) ** 2

    bits = np.arange(3, 13)
    increases = slt.compression.loss_increase(
        loss_fn, {"w": w_star}, data, lambda p, b: slt.compression.quantize(p, int(b)), bits)
    slope = np.polyfit(bits, np.log(increases), 1)[0]
    assert abs(slope / -np.log(4.0) - 1) < 0.10, slope


def test_rank_k_truncation_with_whitened_inputs_costs_half_the_dropped_squares():
    n, inputs, outputs = 256, 6, 5
    rng = np.random.default_rng(0)
    x = np.linalg.qr(rng.standard_normal((n, inputs)))[0] * np.sqrt(n)  # Xᵀ X / n = I
    y = x @ rng.standard_normal((inputs, outputs)) + 0.1 * rng.standard_normal((n, outputs))
    fit = np.linalg.lstsq(x, y, rcond=None)[0]
    data = (jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
    params = {"kernel": jnp.asarray(fit, jnp.float32), "scale": Frozen(jnp.ones(()))}

    def loss_fn(params, batch):
        inputs_, targets = batch
        return 0.5 * jnp.sum((inputs_ @ params["kernel"] - targets) ** 2, axis=-1)

    ranks = [1, 2, 3, 4, 5]
    increases = slt.compression.loss_increase(
        loss_fn, params, data, lambda p, k: slt.compression.low_rank(p, k), ranks)
    singular = np.linalg.svd(np.asarray(params["kernel"], np.float64), compute_uv=False)
    expected = [0.5 * np.sum(singular[k:] ** 2) for k in ranks]
    np.testing.assert_allclose(increases, expected, rtol=2e-4, atol=1e-6)
    assert expected[0] > 0.1  # not a trivially small loss


def _minimal_rank_teacher(widths, rank, smallest_mode=0.0):
    """The first teacher (by seed) of product rank ``rank`` whose smallest nonzero singular
    value is at least ``smallest_mode``."""
    for seed in range(400):
        teacher = make_dln_teacher(jax.random.key(seed), widths, minimal_rank=True)
        product = np.asarray(teacher.params[0], np.float64)
        for layer in teacher.params[1:]:
            product = product @ np.asarray(layer, np.float64)
        if teacher.rank == rank and np.linalg.svd(product, compute_uv=False)[rank - 1] >= \
                smallest_mode:
            return teacher
    raise AssertionError(f"no teacher of rank {rank}")


def test_critical_rank_follows_the_estimated_llc_across_dln_teachers():
    """Minimal-rank teachers of widths [16, 4, 16] with product rank r = 1..4 have Aoyagi's
    λ = 37, 43.5, 50, 56 (docs/mathematics.md §7). Every layer has rank r, so truncating to rank r costs
    nothing and to r − 1 a finite loss: the critical rank is r. The estimated LLC (estimate_llc
    at small settings) must rank the teachers the same way (Spearman ≥ 0.8).

    The teachers have no nearly-zero mode (smallest singular value of the product ≥ 0.3): a
    teacher whose r-th mode is 0.04 is nearly of rank r − 1; its LLC read 13-18% below λ at
    these settings (the chains see the nearby more singular point), and at a tolerance above
    that mode's cost its critical rank is r − 1 as well."""
    critical, estimated, truths = [], [], []
    for rank in (1, 2, 3, 4):
        teacher = _minimal_rank_teacher([16, 4, 16], rank, smallest_mode=0.3)
        data = make_dln_data(jax.random.key(100 + rank), teacher, 500)
        with warnings.catch_warnings():  # short runs: R-hat/drift warnings are expected
            warnings.simplefilter("ignore", RuntimeWarning)
            result = slt.estimate_compressibility(
                dln_loss, teacher.params, data, method="low_rank", tolerances=[1e-4],
                key=jax.random.key(rank), llc_options=dict(num_chains=2, num_draws=600))
        critical.append(result.critical_levels[0])
        estimated.append(result.llc.mean)
        truths.append(float(teacher.true_lambda))
        assert result.hyperparameters["llc_options"] == dict(num_chains=2, num_draws=600)
        assert result.llc.hyperparameters["sampler"] == "sghmc"  # estimate_llc's policy
    assert critical == [1, 2, 3, 4]
    assert truths == sorted(truths)
    rho = scipy.stats.spearmanr(critical, estimated).statistic
    assert rho >= 0.8 - 1e-12, (critical, estimated, truths)


def test_estimate_compressibility_quantize_records_levels_and_description_length():
    teacher = _minimal_rank_teacher([5, 3, 4], 2)
    data = make_dln_data(jax.random.key(7), teacher, 200)
    result = slt.estimate_compressibility(dln_loss, teacher.params, data, key=jax.random.key(0),
                                          tolerances=[1e-2, 1.0], compute_llc=False)
    assert result.levels.tolist() == list(range(1, 17))
    assert result.llc is None
    # the critical level is the fewest bits within the tolerance, its length size x bits
    for eps, level, length in zip(result.tolerances, result.critical_levels,
                                  result.description_length_bits):
        within = result.levels[result.loss_increases <= eps]
        assert level == within.min()
        assert length == (5 * 3 + 3 * 4) * level
    assert result.critical_levels[0] >= result.critical_levels[1]
    dithered = slt.estimate_compressibility(
        dln_loss, teacher.params, data, key=jax.random.key(0), levels=[4, 8], dither=True,
        num_offsets=4, compute_llc=False)
    assert np.all(dithered.loss_increase_mcse > 0)
    assert dithered.hyperparameters["num_offsets"] == 4


def test_quantize_leaves_frozen_and_integer_leaves_and_honours_masks():
    params = {"a": jnp.linspace(-1.0, 1.0, 7), "b": jnp.linspace(-2.0, 3.0, 5),
              "count": jnp.arange(3), "stats": Frozen(jnp.linspace(0.0, 1.0, 4))}
    mask = slt.masks.select(params, "a")
    out = slt.compression.quantize(params, 1, mask=mask)
    assert set(np.unique(np.asarray(out["a"])).tolist()) == {-1.0, 1.0}
    np.testing.assert_array_equal(out["b"], params["b"])
    np.testing.assert_array_equal(out["count"], params["count"])
    np.testing.assert_array_equal(out["stats"].value, params["stats"].value)
    elements = slt.masks.select_elements(params, "b", np.s_[:2])
    out = slt.compression.quantize(params, 1, mask=elements)
    np.testing.assert_array_equal(out["b"][2:], params["b"][2:])
    assert np.all(np.abs(np.asarray(out["b"][:2])) == 2.0)  # max |w| over the selection
    # per output channel: each column keeps its own max
    kernel = jnp.asarray([[1.0, -10.0], [0.5, 4.0]])
    channel = slt.compression.quantize({"k": kernel}, 1, granularity="channel")["k"]
    np.testing.assert_allclose(channel, [[1.0, -10.0], [1.0, 10.0]])


@pytest.mark.parametrize("call, message", [
    (lambda p: slt.compression.quantize(p, 0), "bits must be an int >= 1"),
    (lambda p: slt.compression.quantize(p, 2.5), "bits must be an int >= 1"),
    (lambda p: slt.compression.quantize(p, 4, granularity="row"), "granularity must be"),
    (lambda p: slt.compression.quantize(p, 4, mask={"w": True}), "tree structure of params"),
    (lambda p: slt.compression.quantize(p, 4, mask={"w": np.ones(3, bool), "b": True}),
     "shape"),
    (lambda p: slt.compression.low_rank(p, 0), r"rank must be in \[1, min\(shape\)\]"),
    (lambda p: slt.compression.low_rank(p, 4), r"rank must be in \[1, min\(shape\)\]"),
    (lambda p: slt.compression.low_rank(p, 1, selector="b"), "no 2-D float leaf"),
    (lambda p: slt.compression.low_rank(p, 1, selector="nothing"), "matches no parameter"),
    (lambda p: slt.compression.critical_level([1, 2], [0.1], 0.5), "same positive length"),
    (lambda p: slt.compression.critical_level([1, 2], [0.1, 0.2], -1), "tolerance must be"),
])
def test_bad_input_gets_a_clear_error(call, message):
    params = {"w": jnp.ones((3, 5)), "b": jnp.ones(5)}
    with pytest.raises((ValueError, TypeError), match=message):
        call(params)


def test_estimate_compressibility_bad_input():
    params = [jnp.ones((2, 3)), jnp.ones((3, 2))]
    data = (jnp.ones((8, 2)), jnp.ones((8, 2)))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="method must be one of"):
        slt.estimate_compressibility(dln_loss, params, data, key=key, method="prune")
    with pytest.raises(ValueError, match="rank must be in"):
        slt.estimate_compressibility(dln_loss, params, data, key=key, method="low_rank",
                                     levels=[1, 3])
    with pytest.raises(ValueError, match="tolerances must be"):
        slt.estimate_compressibility(dln_loss, params, data, key=key, tolerances=[-1.0])
    with pytest.raises(TypeError, match="use selector="):
        slt.estimate_compressibility(dln_loss, params, data, key=key, method="low_rank",
                                     mask=[True, True])
    with pytest.raises(ValueError, match="tree structure"):
        slt.estimate_compressibility(dln_loss, params, data, key=key, mask=[True])


def test_hessian_trace_exact_and_hutchinson_agree_with_the_closed_form():
    x = jax.random.normal(jax.random.key(8), (100, 4))
    data = (x, jnp.zeros((100, 3)))
    params = [jnp.ones((4, 3))]
    # L = mean ½‖xW − y‖²: H = I_3 ⊗ Σxx, tr H = 3 tr(Σxx)
    truth = 3 * float(jnp.trace(x.T @ x)) / 100
    exact, zero = slt.compression.hessian_trace(dln_loss, params, data)
    assert zero == 0.0 and abs(exact / truth - 1) < 1e-5
    estimate, error = slt.compression.hessian_trace(dln_loss, params, data,
                                                    key=jax.random.key(9), num_probes=400)
    assert abs(estimate - truth) < 4 * error


def test_critical_level_needs_every_milder_level_within_tolerance():
    # a lucky aggressive level (2 bits passing while 3 bits fails) is not the critical level
    levels, increases = [2, 3, 4, 8], [0.01, 1.0, 0.02, 0.0]
    assert slt.compression.critical_level(levels, increases, 0.05) == 4
    assert slt.compression.critical_level(levels[::-1], increases[::-1], 0.05) == 4  # any order
    assert slt.compression.critical_level(levels, [0.01, 0.02, 0.03, 0.0], 0.05) == 2
    assert slt.compression.critical_level(levels, [0.0, 0.0, 0.0, 1.0], 0.05) is None
    assert slt.compression.critical_level(levels, [0.0, 0.0, np.nan, 0.0], 0.05) == 8
