"""estimate_susceptibilities: one call, one compiled program for every component (issue 18).

The model: two linear "experts" on disjoint parameters; an input's type (a fixed function of
the input, its last column) routes it to expert A or B. Each expert's weights are split in two
components, so the run holds four components (cells) in one program.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import slt_jax as slt
from slt_jax.estimators.susceptibility_estimate import per_cell

D = 4          # weights per expert
T = 2          # tokens per sequence: the losses are per token, (b, T)
N = 200        # sequences (400 tokens); a tenth are type A (the base set is data itself)
NOISE = 0.5
FRACTION_A = 0.1


def expert_loss(params, batch):
    """Per-token squared error; the gate is a fixed function of the input (its last column)."""
    x = batch["x"]
    features, route = x[..., :D], x[..., -1]
    prediction = route * (features @ params["A"]) + (1.0 - route) * (features @ params["B"])
    return 0.5 * (prediction - batch["y"]) ** 2


def make_data(key, n, fraction_a):
    feature_key, noise_key = jax.random.split(key)
    features = jax.random.normal(feature_key, (n, T, D))
    route = jnp.broadcast_to((jnp.arange(n) < int(round(fraction_a * n)))[:, None], (n, T))
    route = route.astype(features.dtype)
    teacher_a, teacher_b = jnp.arange(1.0, D + 1.0) / D, -jnp.arange(1.0, D + 1.0) / D
    y = route * (features @ teacher_a) + (1 - route) * (features @ teacher_b)
    y = y + NOISE * jax.random.normal(noise_key, (n, T))
    return {"x": jnp.concatenate([features, route[..., None]], axis=-1), "y": y}


def tokens_of(data, expert):
    """``(features (tokens, D), rows of that expert)`` over all tokens."""
    x = np.asarray(data["x"], np.float64).reshape(-1, D + 1)
    rows = x[:, -1] > 0.5
    return x[:, :D], rows if expert == "A" else ~rows


def least_squares(data):
    """w*: each expert's least-squares fit on its own tokens (the exact minimum)."""
    y = np.asarray(data["y"], np.float64).reshape(-1)
    fit = {}
    for name in ("A", "B"):
        x, rows = tokens_of(data, name)
        fit[name] = jnp.asarray(np.linalg.lstsq(x[rows], y[rows], rcond=None)[0], jnp.float32)
    return fit


def exact_refined_llc(data, label, chosen):
    """(1/2) tr(nbeta H (nbeta H + gamma)^-1) in the component's coordinates (a quadratic)."""
    x, rows = tokens_of(data, label[0])
    coordinates = slice(0, D // 2) if label.endswith("1") else slice(D // 2, D)
    hessian = x[rows][:, coordinates].T @ x[rows][:, coordinates] / len(x)
    curvature = chosen["nbeta"] * hessian
    precision = curvature + chosen["localization"] * np.eye(len(hessian))
    return 0.5 * np.trace(np.linalg.solve(precision, curvature))


def halves(params):
    """Four components: each expert's first and second half of its weights."""
    first = np.arange(D) < D // 2
    return {
        "A1": {"A": first, "B": np.zeros(D, bool)}, "A2": {"A": ~first, "B": np.zeros(D, bool)},
        "B1": {"A": np.zeros(D, bool), "B": first}, "B2": {"A": np.zeros(D, bool), "B": ~first},
    }


@pytest.fixture(scope="module")
def problem():
    data = make_data(jax.random.key(0), N, FRACTION_A)
    probes = {"A tokens": make_data(jax.random.key(1), 12, 1.0),
              "B tokens": make_data(jax.random.key(2), 12, 0.0)}
    return data, probes, least_squares(data)


RUN = dict(num_chains=4, num_draws=4000, num_burnin=500, step_size=1e-2)
KEY = jax.random.key(3)


@pytest.fixture(scope="module")
def four_experts(problem):
    data, probes, params = problem
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # per-cell R-hat notes of short runs
        with slt.count_compilations() as first:
            res = slt.estimate_susceptibilities(expert_loss, params, data, probes=probes,
                                                components=halves(params), key=KEY, **RUN)
    return res, first.count


def test_component_locality_expert_a_responds_to_a_tokens(four_experts):
    """Issue test 6: moving the data toward type-A tokens moves expert A's observable more
    than expert B's, beyond 4 MCSE (the MCSE of a probe mean bounded by its entries' mean).

    Closed form (docs/mathematics.md §5, base residuals zero): on an A token chi_A = -x'SHSx/2 + Var(phi_A)
    whose mean over A tokens is Var(phi_A)(1 - 1/pi_A) = -9 Var(phi_A) with pi_A = 0.1 the
    share of A in the base set, while chi_B = Var(phi_B) exactly (an A token's loss does not
    depend on expert B): |chi_A| is about 9 times |chi_B|."""
    res, _ = four_experts
    matrix = slt.response_matrix(res, per_token=False)
    row = matrix.row_labels.index(("A tokens",))
    values, errors = matrix.values[row], matrix.mcse[row]
    for a, b in (("A1", "B1"), ("A2", "B2")):
        i, j = res.components.index(a), res.components.index(b)
        gap = abs(values[i]) - abs(values[j])
        assert gap > 4 * np.hypot(errors[i], errors[j]), (a, b, values, errors)
        assert values[i] < 0 < values[j]  # the closed form's signs
    # an A token's loss is constant in expert B's weights: chi_B is the same on every A token
    b_on_a = res.chi["B1"]["A tokens"]
    np.testing.assert_allclose(b_on_a, np.mean(b_on_a), rtol=1e-3)


def test_pc1_separates_the_experts_columns(four_experts):
    res, _ = four_experts
    pca = slt.response_pca(slt.response_matrix(res), num_components=2, standardize=True)
    signs = {label: np.sign(pca.loadings[k, 0]) for k, label in enumerate(pca.column_labels)}
    assert signs["A1"] == signs["A2"] and signs["B1"] == signs["B2"], pca.loadings
    assert signs["A1"] != signs["B1"], pca.loadings
    assert np.min(np.abs(pca.loadings[:, 0])) > 0.3, pca.loadings  # every column takes part


def test_result_structure_and_per_component_llc(four_experts, problem):
    res, _ = four_experts
    data, probes, _ = problem
    assert res.components == ("A1", "A2", "B1", "B2") and res.probes == tuple(probes)
    for label in res.components:
        for name in probes:
            assert res.chi[label][name].shape == (12, T) == res.mcse[label][name].shape
            assert np.all(res.mcse[label][name] > 0)
        assert isinstance(res.llc[label], slt.LLCResult)
        exact = exact_refined_llc(data, label, res.hyperparameters["per_component"][label])
        z = (res.llc[label].mean - exact) / res.llc[label].mcse
        assert abs(z) < 4, (label, res.llc[label].mean, exact, res.llc[label].mcse)
    hyper = res.hyperparameters
    assert hyper["num_runs"] == 1 and hyper["paired_runs"] == 1
    assert hyper["base_size"] == N and hyper["batch_size"] is None  # n <= 500: full batch
    assert set(hyper["per_component"]) == set(res.components)
    assert hyper["step_size"].shape == (4,)


def test_second_call_compiles_nothing(four_experts, problem):
    """Other masks (permuted), probes and base set of the same shapes, another key."""
    _, first_count = four_experts
    data, probes, params = problem
    assert first_count > 0
    components = dict(zip("wxyz", reversed(list(halves(params).values()))))
    other = {name: make_data(jax.random.key(10 + i), 12, 0.5) for i, name in enumerate(probes)}
    with warnings.catch_warnings(), slt.count_compilations() as second:
        warnings.simplefilter("ignore", RuntimeWarning)
        slt.estimate_susceptibilities(expert_loss, params, data, probes=other,
                                      components=components, key=jax.random.key(4),
                                      base_data=make_data(jax.random.key(5), N, 0.5), **RUN)
    assert second.count == 0


@pytest.mark.parametrize("label", ["A1", "B2"])
def test_component_equals_hand_built_recipe(four_experts, problem, label):
    """Component k of the one-program run equals slt.sample with the same sampler (its mask,
    calibrated values) and chain keys split(fold_in(key, k)) + slt.susceptibility on the
    stored draws (float rounding), and its LLC equals slt.llc of that trace."""
    res, _ = four_experts
    data, probes, params = problem
    chosen, k = res.hyperparameters["per_component"][label], res.components.index(label)
    sampler = slt.samplers.sghmc(chosen["step_size"], chosen["nbeta"], chosen["localization"],
                                 friction=chosen["friction"], splitting=chosen["splitting"],
                                 mask=halves(params)[label])
    chains = RUN["num_chains"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        trace = slt.sample(expert_loss, params, data, sampler,
                           key=jax.random.split(jax.random.fold_in(KEY, k), chains),
                           num_chains=chains, num_draws=RUN["num_draws"],
                           num_burnin=RUN["num_burnin"], query_data={"base": data, **probes})
        llc = slt.llc(trace, init_loss=res.llc[label].init_loss)
    base = trace.query_losses["base"].mean((-2, -1))
    for name in probes:
        chi, mcse = slt.susceptibility(base, trace.query_losses[name], base, return_mcse=True)
        scale = float(np.max(np.abs(chi)))
        np.testing.assert_allclose(res.chi[label][name], chi, rtol=0, atol=1e-3 * scale)
        np.testing.assert_allclose(res.mcse[label][name], mcse, rtol=1e-2)
    np.testing.assert_allclose(res.llc[label].mean, llc.mean, rtol=1e-4)


def test_bad_inputs_fail_before_compiling(problem):
    data, probes, params = problem
    call = dict(key=jax.random.key(0), num_draws=10, num_burnin=0, step_size=1e-3)
    estimate = slt.estimate_susceptibilities
    ragged = {"x": probes["A tokens"]["x"], "y": np.asarray(probes["A tokens"]["y"])[:5]}
    short_base = {"x": data["x"], "y": np.asarray(data["y"])[:3]}
    with slt.count_compilations() as compiled:
        with pytest.raises(ValueError, match="at least one probe"):
            estimate(expert_loss, params, data, probes={}, **call)
        with pytest.raises(TypeError, match="probes must be a dict"):
            estimate(expert_loss, params, data, probes=[data], **call)
        with pytest.raises(ValueError, match="leading"):
            estimate(expert_loss, params, data, probes={"p": ragged}, **call)
        with pytest.raises(ValueError, match="at least one component"):
            estimate(expert_loss, params, data, probes=probes, components={}, **call)
        nothing = {"A": np.zeros(D, bool), "B": np.zeros(D, bool)}
        with pytest.raises(ValueError, match="selects no coordinate"):
            estimate(expert_loss, params, data, probes=probes, components={"none": nothing},
                     **call)
        with pytest.raises(ValueError, match="base_data"):
            estimate(expert_loss, params, data, probes=probes, base_data=short_base, **call)
        with pytest.raises(ValueError, match="per_cell.*equal cells"):
            per_cell(slt.accumulators.covariance("s"), 4).init(
                {"s": jax.ShapeDtypeStruct((6, 3), jnp.float32)})
    assert compiled.count == 0


def test_adapter_state_input():
    """An nnx.State (what train's checkpoints hold) with an adapter's loss_fn goes through
    as_params; components=None is the whole model, labelled "all"; the default base set is
    min(n, base_size) examples of data."""
    model = slt.models.MLP([2, 3, 1], rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (32, 2))
    data = {"x": x, "y": x[:, :1] - x[:, 1:]}
    loss_fn, _ = slt.adapters.from_nnx(model, slt.models.mse_loss)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = slt.estimate_susceptibilities(loss_fn, nnx.state(model, nnx.Param), data,
                                            probes={"probe": data}, key=jax.random.key(2),
                                            base_size=8, num_chains=2, num_draws=20,
                                            num_burnin=5, step_size=1e-3)
    assert res.components == ("all",) and res.chi["all"]["probe"].shape == (32,)
    assert res.hyperparameters["base_size"] == 8
    assert np.all(np.isfinite(res.chi["all"]["probe"]))
    assert np.all(np.isfinite(res.mcse["all"]["probe"]))
