"""Masks by name (slt_jax.masks) and weight-/data-refined LLCs (docs/mathematics.md §2, issue 11).

Statistical checks run ``slt.sample`` with a fixed SGLD step (full batch) and compare the LLC
with a closed-form truth at a stated relative tolerance, or two estimates with their combined
Monte Carlo standard error.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slt_jax as slt

PARAMS = {
    "blocks": [
        {"attn": {"query": np.zeros((2, 4, 3)), "qkv": np.zeros((4, 18)), "out": np.zeros((6, 4))},
         "mlp": {"kernel": np.zeros((4, 4))}},
        {"attn": {"query": np.zeros((2, 4, 3)), "qkv": np.zeros((4, 18)), "out": np.zeros((6, 4))},
         "mlp": {"kernel": np.zeros((4, 4))}},
    ],
    "embed": np.zeros((5, 4)),
}


def _selected(mask):
    return sorted(p for p, m in zip(slt.masks.paths(PARAMS), jax.tree.leaves(mask)) if np.any(m))


def test_glob_regex_callable_and_keystr_selectors():
    assert slt.masks.paths(PARAMS)[:2] == ["blocks/0/attn/out", "blocks/0/attn/qkv"]
    # a prefix selects the subtree; * stays inside one segment; ** crosses segments
    assert _selected(slt.masks.select(PARAMS, "blocks/0/attn")) == [
        "blocks/0/attn/out", "blocks/0/attn/qkv", "blocks/0/attn/query"]
    assert _selected(slt.masks.select(PARAMS, "blocks/*/mlp")) == [
        "blocks/0/mlp/kernel", "blocks/1/mlp/kernel"]
    assert _selected(slt.masks.select(PARAMS, "**/query")) == [
        "blocks/0/attn/query", "blocks/1/attn/query"]
    with pytest.raises(ValueError, match="matches no parameter"):
        slt.masks.select(PARAMS, "*/query")  # one segment, then query: no such path
    assert _selected(slt.masks.select(PARAMS, re.compile(r"1/attn/q"))) == [
        "blocks/1/attn/qkv", "blocks/1/attn/query"]
    assert _selected(slt.masks.select(PARAMS, lambda path, leaf: np.ndim(leaf) == 3)) == [
        "blocks/0/attn/query", "blocks/1/attn/query"]
    assert _selected(slt.masks.select(PARAMS, "['embed']")) == ["embed"]
    assert _selected(slt.masks.select(PARAMS, ["embed", "blocks/1/mlp"])) == [
        "blocks/1/mlp/kernel", "embed"]


def test_bad_selectors_raise_with_the_available_paths():
    with pytest.raises(ValueError, match=r"(?s)matches no parameter.*blocks/0/attn/qkv \(4, 18\)"):
        slt.masks.select(PARAMS, "blocks/2/attn")
    with pytest.raises(ValueError, match=r"(?s)head 2 is out of range.*\[0, 1\]"):
        slt.masks.head(PARAMS, "blocks/0/attn/query", head=2, axis=0)
    with pytest.raises(ValueError, match="not a multiple"):
        slt.masks.head(PARAMS, "blocks/0/attn/out", head=0, num_heads=4, axis=0)
    with pytest.raises(ValueError, match=r"(?s)does not apply.*embed \(5, 4\)"):
        slt.masks.select_elements(PARAMS, "embed", np.s_[7])
    with pytest.raises(TypeError, match="selector must be"):
        slt.masks.select(PARAMS, 3)


def test_head_masks_for_per_head_separate_and_fused_layouts():
    heads, d_head = 2, 3
    per_head = slt.masks.head(PARAMS, "blocks/0/attn/query", head=1, axis=0)["blocks"][0]["attn"]["query"]
    assert per_head[1].all() and not per_head[0].any()
    out = slt.masks.head(PARAMS, "blocks/0/attn/out", head=0, num_heads=heads, axis=0)
    np.testing.assert_array_equal(out["blocks"][0]["attn"]["out"][:, 0], [1, 1, 1, 0, 0, 0])
    # fused QKV (d_model, 3 * heads * d_head) laid out as (3, heads, d_head)
    qkv = slt.masks.head(PARAMS, "blocks/0/attn/qkv", head=1, num_heads=heads, head_size=d_head)
    columns = qkv["blocks"][0]["attn"]["qkv"][0]
    expected = np.zeros((3, heads, d_head), bool)
    expected[:, 1, :] = True
    np.testing.assert_array_equal(columns, expected.reshape(-1))
    assert slt.masks.count(qkv, PARAMS) == 4 * 3 * d_head
    # the two heads partition the fused kernel
    other = slt.masks.head(PARAMS, "blocks/0/attn/qkv", head=0, num_heads=heads, head_size=d_head)
    both = slt.masks.union(qkv, other)
    assert slt.masks.count(both, PARAMS) == 4 * 18
    assert slt.masks.count(slt.masks.intersection(qkv, other), PARAMS) == 0
    everything_else = slt.masks.complement(both)
    assert slt.masks.count(everything_else, PARAMS) == sum(x.size for x in jax.tree.leaves(PARAMS)) - 72


def test_samplers_accept_leaf_and_element_masks():
    params = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
    mask = slt.masks.union(slt.masks.select(params, "a"),
                           slt.masks.select_elements(params, "b", np.s_[0, :]))
    state = slt.samplers.sgld(1e-2, 10.0, mask=mask).init(params)  # validates the mask
    np.testing.assert_array_equal(state.mask["a"], np.ones(3))
    np.testing.assert_array_equal(state.mask["b"], [[1.0, 1.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="same structure"):
        slt.samplers.sgld(1e-2, 10.0, mask=slt.masks.select(PARAMS, "embed")).init(params)


# --------------------------------------------------------------------------------------------
# Weight- and data-refined LLCs. Every run below shares one compiled program where it can (the
# same loss function, shapes, chain count and batch size): compiling dominates their cost.
# --------------------------------------------------------------------------------------------

N, D = 1000, 6
NBETA = slt.default_nbeta(N)
RUN = dict(num_chains=8, num_draws=3000, num_burnin=300, batch_size=None)


def _sgld(mask=None, temperature=1.0, curvature=1.5):
    """Full-batch SGLD at a fixed step 0.1 / λ_max(nβH + γ) (2.5% variance bias)."""
    return slt.samplers.sgld(0.1 / (NBETA * curvature + 1.0), NBETA, 1.0, mask=mask,
                             temperature=temperature)


def _sgld_llc(loss_fn, params, data, *, key=0, **sampler_options):
    trace = slt.sample(loss_fn, params, data, _sgld(**sampler_options), key=jax.random.key(key),
                       **RUN)
    init_loss = float(slt.evaluate_loss(loss_fn, params, data))
    return slt.llc(trace, nbeta=NBETA, init_loss=init_loss), trace


def _regression(scales=None, key=1):
    x = jax.random.normal(jax.random.key(key), (N, D))
    if scales is not None:
        x = x * jnp.asarray(scales)[None, :]
    y = x @ jnp.linspace(-1.0, 1.0, D) + 0.3 * jax.random.normal(jax.random.key(key + 1), (N,))
    w_star = jnp.linalg.solve(x.T @ x, x.T @ y)  # the minimizer of L_n
    return (x, y), {"w": w_star}


def _linear_loss(params, batch):
    x, y = batch
    return 0.5 * (x @ params["w"] - y) ** 2


def test_element_mask_on_regular_regression_gives_one():
    """d = 6 regular regression, two sampled coordinates: λ(w*; V) = 2/2 = 1."""
    data, params = _regression()
    mask = slt.masks.select_elements(params, "w", np.s_[:2])
    result, trace = _sgld_llc(_linear_loss, params, data, mask=mask)
    assert abs(result.mean - 1.0) < 0.1, result
    frozen = np.asarray(trace.final_params["w"])[:, 2:]
    np.testing.assert_array_equal(frozen, np.broadcast_to(np.asarray(params["w"][2:]), frozen.shape))


def test_frozen_coordinate_is_irrelevant():
    """A masked coordinate changes nothing: to float rounding with the noise off, within the
    combined MCSE with it. The bigger model has a seventh weight on an extra feature."""
    (x, y), params = _regression(key=5)
    z = jax.random.normal(jax.random.key(9), (N,))
    extra = jnp.asarray(0.7)

    def bigger(p, batch):
        features, targets, extra_feature = batch
        return 0.5 * (features @ p["w"] + p["z_extra"] * extra_feature - targets) ** 2

    big_data, small_data = (x, y + extra * z, z), (x, y)
    big_params = {"w": params["w"], "z_extra": extra}
    mask = slt.masks.select(big_params, "w")
    run = dict(key=jax.random.key(0), **RUN)
    quiet_big = slt.sample(bigger, big_params, big_data, _sgld(mask, temperature=0.0), **run)
    quiet_small = slt.sample(_linear_loss, params, small_data, _sgld(temperature=0.0), **run)
    np.testing.assert_allclose(np.asarray(quiet_big.loss), np.asarray(quiet_small.loss),
                               rtol=1e-5)
    noisy_big, trace = _sgld_llc(bigger, big_params, big_data, mask=mask, key=3)
    noisy_small, _ = _sgld_llc(_linear_loss, params, small_data, key=4)
    assert np.all(np.asarray(trace.final_params["z_extra"]) == np.asarray(extra))
    combined = np.hypot(noisy_big.mcse, noisy_small.mcse)
    assert abs(noisy_big.mean - noisy_small.mean) < 4 * combined, (noisy_big, noisy_small)
    assert abs(noisy_small.mean - D / 2) < 0.1 * D / 2, noisy_small


@pytest.mark.parametrize("with_mask", [False, True])
def test_data_refined_llc_on_a_k_dimensional_input_subspace(with_mask):
    """q' inputs span k = 2 of d = 6 dimensions: λ(w*; q') = k/2 = 1; with a mask keeping one
    coordinate inside that subspace and one outside, both refinements combine to 1/2."""
    k = 2
    x = np.array(jax.random.normal(jax.random.key(7), (N, D)))
    x[:, k:] = 0.0
    params = {"w": jnp.linspace(-1.0, 1.0, D)}
    data = (jnp.asarray(x), jnp.asarray(x) @ params["w"])  # L'_n(w*) = 0 at its minimum
    mask = slt.masks.select_elements(params, "w", np.s_[1:3]) if with_mask else None
    result, _ = _sgld_llc(_linear_loss, params, data, mask=mask)
    truth = 0.5 if with_mask else k / 2
    assert abs(result.mean - truth) < 0.1 * truth, result


def test_last_layer_of_a_dln_with_rank_k_features():
    """f(x) = W2 W1 x with rank-k hidden features, only W2 sampled: λ = k · H_L / 2."""
    h0, h1, h2, k = 6, 4, 3, 2
    first = np.zeros((h1, h0), np.float32)
    first[:k, :k] = np.eye(k)  # the hidden features span k dimensions
    second = np.asarray(jax.random.normal(jax.random.key(2), (h2, h1)), np.float32)
    params = {"first": jnp.asarray(first), "second": jnp.asarray(second)}
    x = jax.random.normal(jax.random.key(3), (N, h0))

    def loss_fn(p, batch):
        inputs, targets = batch
        return 0.5 * jnp.sum((inputs @ p["first"].T @ p["second"].T - targets) ** 2, axis=-1)

    data = (x, x @ first.T @ second.T)  # the teacher itself: L_n(w*) = 0
    result, _ = _sgld_llc(loss_fn, params, data, mask=slt.masks.select(params, "second"))
    assert abs(result.mean - k * h2 / 2) < 0.1 * k * h2 / 2, result


def test_calibration_measures_curvature_in_the_sampled_subspace():
    """Top Hessian eigenvalue under a mask is that of M H M (H = diag(1, 4, 9))."""
    scales = jnp.asarray([1.0, 2.0, 3.0])

    def loss_fn(p, batch):
        return 0.5 * jnp.sum((scales * p["w"]) ** 2) + 0.0 * batch[:, 0]

    params, x, key = {"w": jnp.zeros(3)}, jnp.ones((8, 1)), jax.random.key(0)
    full = slt.calibration.top_hessian_eigenvalue(loss_fn, params, x, key=key)
    mask = slt.masks.select_elements(params, "w", np.s_[:2])
    sub = slt.calibration.top_hessian_eigenvalue(loss_fn, params, x, key=key, mask=mask)
    assert full == pytest.approx(9.0, rel=1e-4) and sub == pytest.approx(4.0, rel=1e-4)


def test_estimate_llc_takes_a_mask_and_threads_it_through_the_calibration():
    """The frozen coordinates are 3x stiffer (H ≈ diag(1, 1, 9, ...)): a calibration that
    ignored the mask would measure λ_max ≈ 9 and pick a 9x smaller step."""
    data, params = _regression(scales=[1.0, 1.0, 3.0, 3.0, 3.0, 3.0])
    mask = slt.masks.select_elements(params, "w", np.s_[:2])
    result = slt.estimate_llc(_linear_loss, params, data, key=jax.random.key(0), mask=mask,
                              sampler="sgld", num_chains=8, num_draws=3000, batch_size=None)
    calibration = result.hyperparameters["calibration"]
    assert 0.8 < calibration.max_hessian_eigenvalue < 1.3, calibration.rounds
    assert abs(result.mean - 1.0) < 0.1, result
    with pytest.raises(TypeError, match="not both"):
        slt.estimate_llc(_linear_loss, params, data, key=jax.random.key(0), mask=mask,
                         sampler=slt.samplers.sgld(1e-4, NBETA), num_draws=10)
